package keys

import (
	"strings"
	"testing"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"2e6a1b4c-0000-4000-8000-000000000001", "2e6a1b4c-0000-4000-8000-000000000001"},
		{"2026-03-01", "2026-03-01"},
		{"a/b", "a%2Fb"},
		{"..", "%2E%2E"},
		{".", "%2E"},
		{"../../etc", "..%2F..%2Fetc"},
		{"%2F", "%252F"},
		{"a\x01b\nc", "a%01b%0Ac"},
		{"", "_"},
		{"ü", "%C3%BC"},
		{"\xff", "%FF"},
	} {
		if got := Escape(tc.in); got != tc.want {
			t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	long := strings.Repeat("/", 2000)
	a, b := Escape(long), Escape(long+"x")
	if len(a) > maxValueLength || a == b || strings.Contains(a, "/") {
		t.Errorf("long values: %q (%d bytes) vs %q", a, len(a), b)
	}
	if Escape(long) != a {
		t.Error("Escape is not deterministic")
	}
}

func TestTemplate(t *testing.T) {
	allowed := []string{"org_id", "run_id", "ext"}
	for _, tc := range []struct{ tmpl, err string }{
		{"a/{org_id}/{run_id}.{ext}", ""},
		{"a/{nope}.{ext}", "unknown placeholder {nope}"},
		{"a/{org_id", "unclosed {"},
		{"a/}x", "unmatched }"},
		{"/abs/{ext}", "relative"},
		{"a//{ext}", "empty"},
		{"a/../{ext}", ".."},
		{"", "empty"},
	} {
		_, err := Parse(tc.tmpl, allowed)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("Parse(%q) = %v, want error containing %q", tc.tmpl, err, tc.err)
		}
	}
	tp, _ := Parse("p/org={org_id}/run={run_id}/f.{ext}", allowed)
	key, err := tp.Execute(map[string]string{"org_id": "../x", "run_id": "r/1", "ext": "csv.gz"})
	if err != nil || key != "p/org=..%2Fx/run=r%2F1/f.csv.gz" {
		t.Errorf("Execute = %q, %v", key, err)
	}
	if !tp.InDir("run_id") || tp.InDir("ext") || !tp.InBase("ext") {
		t.Error("InDir/InBase")
	}
	huge := strings.Repeat("p/", 600) + "{ext}"
	tp, _ = Parse(huge, allowed)
	if _, err := tp.Execute(map[string]string{"ext": "csv"}); err == nil {
		t.Error("a key over 1024 bytes was accepted")
	}
}
