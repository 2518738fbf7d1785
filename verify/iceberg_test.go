package verify

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// icebergRead runs the reference Iceberg reader (apache/iceberg-go, in
// the module verify/iceberg) and returns its planned files and rows.
func icebergRead(t *testing.T, bin string, args ...string) (head map[string]any, cols []string, rows [][]string) {
	t.Helper()
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("iceberg-read %v: %v\n%s", args, err, stderr)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 64<<20)
	for i := 0; sc.Scan(); i++ {
		switch i {
		case 0:
			if err := json.Unmarshal(sc.Bytes(), &head); err != nil {
				t.Fatal(err)
			}
		case 1:
			var c struct{ Columns []string }
			if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
				t.Fatal(err)
			}
			cols = c.Columns
		default:
			var vals []*string
			if err := json.Unmarshal(sc.Bytes(), &vals); err != nil {
				t.Fatal(err)
			}
			row := make([]string, len(vals))
			for j, v := range vals {
				row[j] = "NULL"
				if v != nil {
					row[j] = *v
				}
			}
			rows = append(rows, row)
		}
	}
	return head, cols, rows
}

// icebergColumns: what the table's rows are compared on, in PostgreSQL's
// text (timestamps in UTC with six digits), the partition columns last.
var icebergColumns = append(append([]string{}, columns...), "org", "date", "run")

func TestIcebergGoReadsTheTableExactly(t *testing.T) {
	e := newExport(t)
	reader := filepath.Join(t.TempDir(), "iceberg-read")
	build := exec.Command("go", "build", "-C", "iceberg", "-o", reader, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build iceberg-read: %v\n%s", err, out)
	}
	// The same job with a table, in a new bucket; its catalog lives in the
	// source database (a role that may write there, as in the demo).
	dir := t.TempDir()
	cfg, _ := os.ReadFile(e.cfg)
	yaml := strings.Replace(string(cfg), "file://"+e.dir, "file://"+dir, 1) + fmt.Sprintf(`    iceberg:
      catalog: sql
      uri: %q
      namespace: verify
      table: new_sellers
`, e.dbURL)
	cfgPath := filepath.Join(t.TempDir(), "iceberg.yaml")
	os.WriteFile(cfgPath, []byte(yaml), 0o644)
	e.run(t, "once", "-config", cfgPath)
	check := func(stage string) {
		t.Helper()
		ctx := context.Background()
		want := map[string]int64{}
		var wantRows [][]string
		r, err := e.pg.Query(ctx, `SELECT s.id::text, s.org_id::text, display_name, normalized_name, platform, platform_id,
				feedback_score::text, feedback_percent::text, feedback_count::text, times_seen::text, flagged::text,
				first_seen_run_id::text, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
				to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
				coalesce(s.org_id::text, 'none'), to_char(c.completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), c.id::text
			FROM sellers s JOIN collection_runs c ON c.id = s.first_seen_run_id
			WHERE c.status = 'completed' AND s.deleted_at IS NULL AND s.org_id IS NOT DISTINCT FROM c.org_id`)
		if err != nil {
			t.Fatal(err)
		}
		for r.Next() {
			vals := make([]*string, len(icebergColumns))
			ptrs := make([]any, len(vals))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := r.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			row := make([]string, len(vals))
			for i, v := range vals {
				row[i] = "NULL"
				if v != nil {
					row[i] = *v
				}
			}
			want[row[len(row)-1]]++
			wantRows = append(wantRows, row)
		}
		if err := r.Err(); err != nil {
			t.Fatal(err)
		}
		hint, err := os.ReadFile(filepath.Join(dir, "iceberg/verify/new_sellers/metadata/version-hint.text"))
		if err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{
			{"-uri", e.dbURL, "-catalog", "sellersnap", "-table", "verify.new_sellers"},
			{"-metadata", "file://" + dir + "/iceberg/verify/new_sellers/metadata/v" + string(hint) + ".metadata.json"},
		} {
			head, cols, got := icebergRead(t, reader, args...)
			if strings.Join(cols, ",") != strings.Join(icebergColumns, ",") {
				t.Fatalf("%s: columns %v, want %v", stage, cols, icebergColumns)
			}
			perRun := map[string]int64{}
			for _, f := range head["files"].([]any) {
				f := f.(map[string]any)
				perRun[f["partition"].(map[string]any)["1002"].(string)] += int64(f["records"].(float64))
			}
			for run, n := range want {
				if perRun[run] != n {
					t.Errorf("%s %s: run %s: %d rows in the planned files, PostgreSQL has %d", stage, args[0], run, perRun[run], n)
				}
			}
			if len(perRun) != len(want) {
				t.Errorf("%s %s: %d runs in the table, PostgreSQL has %d", stage, args[0], len(perRun), len(want))
			}
			if args[0] == "-metadata" {
				checkSecondReader(t, stage, dir+"/iceberg/verify/new_sellers", head, want)
			}
			sortRows(got)
			sortRows(wantRows)
			saved := columns
			columns = icebergColumns
			compareRows(t, stage+" "+args[0], got, wantRows)
			columns = saved
		}
	}
	check("after the first export")
	// A rerun of one run: an overwrite of its partition.
	ms := e.readManifests(t)
	e.run(t, "rerun", "-config", cfgPath, "-job", "new-sellers", "-run", ms[0].RunID)
	check("after a rerun")
}

func sortRows(rows [][]string) {
	sort.Slice(rows, func(i, j int) bool { return strings.Join(rows[i], "\x00") < strings.Join(rows[j], "\x00") })
}

// checkSecondReader reads the table with a second, independent reader
// (verify/hyparquet/iceberg.mjs: avsc for the Avro manifests, hyparquet for
// the data files' footers and partition columns) and checks that it agrees
// with iceberg-go on the files, their partitions and record counts, and
// with PostgreSQL on the rows per run.
func checkSecondReader(t *testing.T, stage, table string, goHead map[string]any, want map[string]int64) {
	t.Helper()
	if _, err := os.Stat("hyparquet/node_modules/avsc"); err != nil {
		t.Fatalf("avsc is not installed (make verify-readers runs npm ci in verify/hyparquet): %v", err)
	}
	out, err := exec.Command("node", "hyparquet/iceberg.mjs", table).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("%s: iceberg.mjs: %v\n%s", stage, err, stderr)
	}
	var js struct {
		Files []struct {
			Path      string
			Partition map[string]*string
			Records   int64
		}
	}
	if err := json.Unmarshal(out, &js); err != nil {
		t.Fatal(err)
	}
	goFiles := map[string]int64{}
	for _, f := range goHead["files"].([]any) {
		f := f.(map[string]any)
		goFiles[f["path"].(string)] = int64(f["records"].(float64))
	}
	perRun := map[string]int64{}
	for _, f := range js.Files {
		if n, ok := goFiles[f.Path]; !ok || n != f.Records {
			t.Errorf("%s: the second reader has %s with %d records; iceberg-go: %d (planned: %v)", stage, f.Path, f.Records, n, ok)
		}
		if r := f.Partition["run"]; r == nil || !strings.Contains(f.Path, "/run="+*r+"/") {
			t.Errorf("%s: %s has partition %v", stage, f.Path, f.Partition)
		} else {
			perRun[*r] += f.Records
		}
	}
	if len(js.Files) != len(goFiles) {
		t.Errorf("%s: the second reader sees %d files, iceberg-go %d", stage, len(js.Files), len(goFiles))
	}
	for run, n := range want {
		if perRun[run] != n {
			t.Errorf("%s: the second reader has %d rows for run %s, PostgreSQL %d", stage, perRun[run], run, n)
		}
	}
}
