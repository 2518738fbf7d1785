package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/internal/pipelinetest"
)

// unitOf is the run partition folder of a table data file.
func unitOf(loc string) string {
	for _, seg := range strings.Split(loc, "/") {
		if strings.HasPrefix(seg, "run=") {
			return seg
		}
	}
	return ""
}

// TestFaultIcebergCommitsSurviveKills runs three `once` processes at a
// time against one bucket and one catalog, one of them killed at a point
// of the table commit (before it, with the metadata file written but the
// catalog not swapped, right after the swap, before the manifest). Pass:
// after the kill the table reads (every file it names exists), no run is
// in it twice; after one more `once`, every run with a manifest is in the
// table exactly once, with the manifest's rows and the snapshot the
// manifest names or a later one, and no run without a manifest is.
func TestFaultIcebergCommitsSurviveKills(t *testing.T) {
	skipShort(t)
	dbURL := loadDemo(t, 6000, 8)
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	yaml := fmt.Sprintf(`source: {dsn: %q}
jobs:
  - name: new-sellers
    mode: per_run
    destination: 'file://${OUT}'
    formats: [csv, parquet]
    iceberg: {catalog: sql, uri: %q, namespace: '${NS}', table: new_sellers}
`, dbURL, dbURL)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	var runs int
	err := pgtest.Connect(t, dbURL).QueryRow(context.Background(), `SELECT count(*) FROM collection_runs WHERE status = 'completed'`).Scan(&runs)
	if err != nil || runs < 4 {
		t.Fatalf("%d completed runs (%v)", runs, err)
	}
	for i, fp := range []string{"before-table-commit:2", "iceberg-before-swap", "iceberg-before-swap:2", "iceberg-after-swap", "iceberg-after-swap:2", "after-table-commit", "before-manifest:2"} {
		t.Run(fp, func(t *testing.T) {
			dir, ns := t.TempDir(), fmt.Sprintf("kill_%d", i)
			env := []string{"OUT=" + dir, "NS=" + ns}
			var cmds []*procRun
			for p := 0; p < 3; p++ {
				e := env
				if p == 0 {
					e = append(e, "SELLERSNAP_FAILPOINT="+fp)
				}
				cmd, log := runProcess(t, e, "once", "-config", cfg)
				cmds = append(cmds, &procRun{cmd, log})
				if p == 0 {
					// The one to be killed starts first, so that it reaches
					// its point with the others' commits around it.
					time.Sleep(150 * time.Millisecond)
				}
			}
			killed := false
			for p, c := range cmds {
				err := c.cmd.Wait()
				if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					killed = true
					continue
				}
				if err != nil && p > 0 {
					// A replica may find a unit locked or fail on the
					// killed one's leftovers; the next once finishes.
					t.Logf("replica %d: %v\n%s", p, err, c.log)
				}
			}
			if !killed {
				t.Fatalf("the failpoint %s was never reached", fp)
			}
			after := pipelinetest.ReadTable(t, dbURL, ns, "new_sellers", nil) // fails on a file live twice
			seen := map[string]bool{}
			for f := range after.Live {
				if u := unitOf(f); seen[u] {
					t.Errorf("after the kill: %s is in the table twice", u)
				} else {
					seen[u] = true
				}
			}
			cmd, log := runProcess(t, env, "once", "-config", cfg)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("once after the kill: %v\n%s", err, log)
			}
			manifests := map[string][]byte{}
			filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.Name() == "manifest.json" {
					manifests[p], err = os.ReadFile(p)
				}
				return err
			})
			ms := pipelinetest.ManifestsIn(t, manifests)
			if len(ms) != runs {
				t.Errorf("%d runs exported, want %d", len(ms), runs)
			}
			pipelinetest.CheckTableHolds(t, pipelinetest.ReadTable(t, dbURL, ns, "new_sellers", nil), ms)
		})
	}
}

type procRun struct {
	cmd *exec.Cmd
	log *lockedBuffer
}
