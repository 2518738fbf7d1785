package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sellersnap/sellersnap/internal/pgtest"
)

// TestStatusVerifyAuditsEveryOutput: status -verify audits the files
// against their manifests (size, sha256; -quick sizes only), the
// manifests against the table, and latest.json; each difference is printed
// with its repair, which repairs it (exit 1 until then).
func TestStatusVerifyAuditsEveryOutput(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	out := t.TempDir()
	cfgPath := shippedWithIceberg(t)
	env := map[string]string{"DATABASE_URL": dbURL, "SELLERSNAP_BUCKET": "file://" + out, "ICEBERG_CATALOG_URL": dbURL}
	if code, _, stderr := cli(t, env, "once", "-config", cfgPath, "-job", "new-sellers"); code != 0 {
		t.Fatalf("once: exit %d\n%s", code, stderr)
	}
	verify := func(quick bool) (int, string) {
		t.Helper()
		args := []string{"status", "-config", cfgPath, "-job", "new-sellers", "-verify", "-from", "2000-01-01"}
		if quick {
			args = append(args, "-quick")
		}
		code, stdout, _ := cli(t, env, args...)
		return code, stdout
	}
	if code, stdout := verify(false); code != 0 || !strings.Contains(stdout, "differences: 0") {
		t.Fatalf("clean: exit %d\n%s", code, stdout)
	}
	// repair runs the first repair command stdout prints.
	repair := func(stdout string) {
		t.Helper()
		m := regexp.MustCompile(`repair: sellersnap (.+)`).FindStringSubmatch(stdout)
		if m == nil {
			t.Fatalf("no repair printed:\n%s", stdout)
		}
		args := strings.Fields(m[1])
		if i := strings.Index(m[1], " ("); i > 0 { // a note after the command
			args = strings.Fields(m[1][:i])
		}
		if code, o, e := cli(t, env, args...); code != 0 {
			t.Fatalf("sellersnap %s: exit %d\n%s%s", m[1], code, o, e)
		}
	}
	var csvs, parquets []string
	filepath.WalkDir(filepath.Join(out, "sellers/new"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, _ := d.Info(); info.Size() > 200 {
				switch filepath.Ext(p) {
				case ".csv":
					csvs = append(csvs, p)
				case ".parquet":
					parquets = append(parquets, p)
				}
			}
		}
		return err
	})
	if len(csvs) == 0 || len(parquets) == 0 {
		t.Fatal("no files with rows")
	}

	for _, tc := range []struct {
		name   string
		damage func()
		want   string
		quick  bool // -quick finds it too
	}{
		{"a CSV replaced by garbage of its size", func() {
			b, _ := os.ReadFile(csvs[0])
			os.WriteFile(csvs[0], []byte(strings.Repeat("x", len(b))), 0o644)
		}, "has sha256", false},
		{"a Parquet file deleted", func() { os.Remove(parquets[0]) }, "is missing", true},
		{"the table dropped", func() {
			pgtest.Connect(t, dbURL).Exec(context.Background(), `DELETE FROM iceberg_tables`)
		}, "is not in the catalog", true},
		{"a run exported twice (before runs were held once)", func() {
			m := regexp.MustCompile(`run=([0-9a-f-]{36})`).FindStringSubmatch(parquets[len(parquets)-1])
			os.Remove(filepath.Join(out, "sellers/new/_sellersnap/new-sellers/runs", m[1]+".json"))
			if _, err := pgtest.Connect(t, dbURL).Exec(context.Background(), `UPDATE collection_runs SET completed_at = completed_at + interval '3 days' WHERE id = $1`, m[1]); err != nil {
				t.Fatal(err)
			}
			if code, _, stderr := cli(t, env, "once", "-config", cfgPath, "-job", "new-sellers"); code != 0 {
				t.Fatalf("once: exit %d\n%s", code, stderr)
			}
		}, "exported 2 times", true},
		{"a latest.json deleted", func() {
			ls, _ := filepath.Glob(filepath.Join(out, "sellers/new/org=*/latest.json"))
			os.Remove(ls[0])
		}, "latest.json: names nothing", true},
	} {
		tc.damage()
		code, stdout := verify(false)
		if code != 1 || !strings.Contains(stdout, tc.want) {
			t.Fatalf("%s: exit %d, want 1 and %q:\n%s", tc.name, code, tc.want, stdout)
		}
		if code, qs := verify(true); (code == 1) != tc.quick || tc.quick && !strings.Contains(qs, tc.want) {
			t.Errorf("%s, -quick: exit %d (finds it: %v)\n%s", tc.name, code, tc.quick, qs)
		}
		repair(stdout)
		if code, stdout := verify(false); code != 0 {
			t.Fatalf("%s: after its repair: exit %d\n%s", tc.name, code, stdout)
		}
	}
}
