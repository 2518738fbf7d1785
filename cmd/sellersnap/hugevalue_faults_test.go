package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/sellersnap/sellersnap/internal/pgtest"
)

// TestFaultHugeValueMemoryIsBounded exports a run whose one seller has a
// 51 MB display_name (hex text with a quote every 1 KB, so CSV must escape
// it), with a binary built without -race, and compares the peak RSS with
// that of the same job exporting the demo runs. Pass: the extra memory is a
// bounded multiple of the value: at most 3.5× for CSV and NDJSON (the text
// encoders stream a large value through their buffer), at most 7.5× with
// Parquet (pgx's receive buffer, the Arrow batch, and pqarrow's encoder,
// page, compression and buffered-row-group copies; README "Memory").
// Before, the three formats peaked at about 13×.
func TestFaultHugeValueMemoryIsBounded(t *testing.T) {
	skipShort(t)
	bin := filepath.Join(t.TempDir(), "sellersnap")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	const valueMiB = 51 // 1,600,000 × 32 hex digits + 50,000 quotes
	for _, tc := range []struct {
		formats string
		max     float64
	}{{"[csv, ndjson]", 3.5}, {"[csv, ndjson, parquet]", 7.5}} {
		dbURL := pgtest.NewDatabase(t)
		out := t.TempDir()
		cfg := filepath.Join(t.TempDir(), "p.yaml")
		yaml := fmt.Sprintf("source: {dsn: %q}\njobs:\n  - {name: new-sellers, mode: per_run, formats: %s, destination: 'file://%s'}\n", dbURL, tc.formats, out)
		if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		once := func() float64 {
			cmd := exec.Command(bin, "once", "-config", cfg)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("once: %v\n%s", err, out)
			}
			return float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024 // KiB on Linux
		}
		base := once()
		pgtest.Exec(t, dbURL, `WITH r AS (INSERT INTO collection_runs SELECT gen_random_uuid(), org_id, 'completed', now(), clock_timestamp()
				FROM collection_runs LIMIT 1 RETURNING id, org_id)
			INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
			SELECT gen_random_uuid(), r.org_id, (SELECT string_agg(md5(g::text) || CASE WHEN g % 32 = 0 THEN '"' ELSE '' END, '')
				FROM generate_series(1, 1600000) g), 'n', 'ebay', 1, false, r.id, now() FROM r`)
		huge := once()
		ratio := (huge - base) / valueMiB
		t.Logf("%s: %.0f MiB exporting the demo runs, %.0f MiB exporting the 51 MB value: %.1f× the value", tc.formats, base, huge, ratio)
		if ratio > tc.max {
			t.Errorf("%s: a 51 MB value costs %.1f× its size, want at most %.1f×", tc.formats, ratio, tc.max)
		}
	}
}
