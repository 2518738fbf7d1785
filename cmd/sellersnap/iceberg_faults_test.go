package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sellersnap/sellersnap/sinks/iceberg"
)

// icebergView is a table as the checks see it: its live data files (and
// their rows) in the current snapshot the catalog points at.
type icebergView struct {
	live     map[string]int64
	records  string
	snapshot int64
}

func readTable(t *testing.T, dbURL, ns string) *icebergView {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var loc string
	err = conn.QueryRow(ctx, `SELECT metadata_location FROM iceberg_tables WHERE table_namespace = $1 AND table_name = 'new_sellers'`, ns).Scan(&loc)
	if err == pgx.ErrNoRows {
		return &icebergView{live: map[string]int64{}}
	}
	if err != nil {
		t.Fatal(err)
	}
	read := func(l string) ([]byte, error) { return os.ReadFile(strings.TrimPrefix(l, "file://")) }
	b, err := read(loc)
	if err != nil {
		t.Fatalf("the catalog names metadata that is not there: %v", err)
	}
	md, err := iceberg.ParseMetadata(b)
	if err != nil {
		t.Fatal(err)
	}
	live, err := iceberg.LiveFiles(md, read) // fails on a file live twice
	if err != nil {
		t.Fatalf("the table cannot be read: %v", err)
	}
	v := &icebergView{live: live}
	if cur := md.Current(); cur != nil {
		v.records, v.snapshot = cur.Summary["total-records"], cur.ID
	}
	return v
}

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
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	err = conn.QueryRow(context.Background(), `SELECT count(*) FROM collection_runs WHERE status = 'completed'`).Scan(&runs)
	conn.Close(context.Background())
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
			after := readTable(t, dbURL, ns)
			seen := map[string]bool{}
			for f := range after.live {
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
			final := readTable(t, dbURL, ns)
			manifests := map[string]int64{}
			var total int64
			filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
				if err != nil || d.Name() != "manifest.json" {
					return err
				}
				b, _ := os.ReadFile(p)
				var m struct {
					Rows  int64
					Table *struct {
						DataFile   string `json:"data_file"`
						SnapshotID int64  `json:"snapshot_id"`
					}
				}
				json.Unmarshal(b, &m)
				if m.Table == nil {
					t.Errorf("%s names no table commit", p)
					return nil
				}
				manifests[unitOf(p)] = m.Rows
				total += m.Rows
				return nil
			})
			if len(manifests) != runs {
				t.Errorf("%d runs exported, want %d", len(manifests), runs)
			}
			byUnit := map[string]int64{}
			for f, n := range final.live {
				u := unitOf(f)
				if _, dup := byUnit[u]; dup {
					t.Errorf("%s is in the table twice", u)
				}
				byUnit[u] = n
				if n, ok := manifests[u]; !ok || n == 0 {
					t.Errorf("%s is in the table without a manifest (or with an empty one)", u)
				}
			}
			for u, n := range manifests {
				if got, ok := byUnit[u]; n > 0 && (!ok || got != n) || n == 0 && ok {
					t.Errorf("%s: %d rows in the table (present: %v), its manifest says %d", u, got, ok, n)
				}
			}
			if final.records != fmt.Sprint(total) {
				t.Errorf("the table has %s records, the manifests %d", final.records, total)
			}
		})
	}
}

type procRun struct {
	cmd *exec.Cmd
	log *lockedBuffer
}
