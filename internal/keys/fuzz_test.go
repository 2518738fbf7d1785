package keys

import (
	"path"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzExecute renders a fixed job template with arbitrary org and run ids. Invariants: the key stays under the template's static prefix,
// has no empty, "." or ".." segment, is valid UTF-8, at most 1024 bytes,
// and the same values always give the same key while different values of
// one placeholder never collide.
func FuzzExecute(f *testing.F) {
	for _, s := range []string{"", ".", "..", "../../etc/passwd", "a/b", "%2F", "\x00", "\xff\xfe", "org=1/run=2", strings.Repeat("x", 2000), "ü/..", " ", "\r\n"} {
		f.Add(s, "2e6a1b4c-0000-4000-8000-000000000001", uint8(1))
	}
	tp, err := Parse("sellers/new/org={org_id}/date={date}/run={run_id}/sellers_{date}_{run}.{ext}", []string{"org_id", "date", "run_id", "run", "ext"})
	if err != nil {
		f.Fatal(err)
	}
	const prefix = "sellers/new/org="
	exts := []string{"csv", "csv.gz", "csv.zst", "ndjson", "ndjson.gz", "ndjson.zst", "parquet"} // set by sellersnap, not by data
	f.Fuzz(func(t *testing.T, org, run string, ext uint8) {
		values := map[string]string{"org_id": org, "date": "2026-03-01", "run_id": run, "run": "run-" + run, "ext": exts[int(ext)%len(exts)]}
		key, err := tp.Execute(values)
		if err != nil {
			if !strings.Contains(err.Error(), "1024") {
				t.Fatalf("unexpected error: %v", err)
			}
			return
		}
		if !strings.HasPrefix(key, prefix) || len(key) > 1024 || !utf8.ValidString(key) {
			t.Fatalf("key %q escapes its prefix, is too long or not UTF-8", key)
		}
		if path.Clean(key) != key || strings.Contains(key, "//") {
			t.Fatalf("key %q is not clean", key)
		}
		for _, seg := range strings.Split(key, "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("key %q has segment %q", key, seg)
			}
		}
		if again, _ := tp.Execute(values); again != key {
			t.Fatalf("not deterministic: %q vs %q", key, again)
		}
		values["org_id"] = org + "x"
		if other, err := tp.Execute(values); err == nil && other == key {
			t.Fatalf("org ids %q and %q give the same key", org, org+"x")
		}
	})
}
