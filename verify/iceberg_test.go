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
			rows = append(rows, nullText(vals))
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
	// The same job with a table (accepting schema changes, as an Iceberg
	// schema evolution), and a full job with its own, in a new bucket;
	// the catalog lives in the source database (a role that may write
	// there, as in the demo).
	dir := t.TempDir()
	cfg, _ := os.ReadFile(e.cfg)
	yaml := strings.Replace(string(cfg), "file://"+e.dir, "file://"+dir, 1) + fmt.Sprintf(`    on_schema_change: evolve
    iceberg: {catalog: sql, uri: %q, namespace: verify, table: new_sellers}
  - name: full-nightly
    mode: full
    destination: "file://%s"
    formats: [parquet]
    columns: [%s]
    iceberg: {catalog: sql, uri: %q, namespace: verify, table: full_sellers}
`, e.dbURL, dir, strings.Join(columns, ", "), e.dbURL)
	cfgPath := filepath.Join(t.TempDir(), "iceberg.yaml")
	os.WriteFile(cfgPath, []byte(yaml), 0o644)
	e.run(t, "once", "-config", cfgPath, "-job", "new-sellers")

	// pgRows: PostgreSQL's rows of a table, in the reader's text forms,
	// with the partition values last; the key of each row's unit (run, or
	// org) is counted in units.
	pgRows := func(query string) (rows [][]string, units map[string]int64) {
		t.Helper()
		r, err := e.pg.Query(context.Background(), query)
		if err != nil {
			t.Fatal(err)
		}
		rows, units = pgStrings(t, r), map[string]int64{}
		for _, row := range rows {
			units[row[len(row)-1]]++
		}
		return rows, units
	}
	const projection = `s.id::text, s.org_id::text, display_name, normalized_name, platform, platform_id,
		feedback_score::text, feedback_percent::text, feedback_count::text, times_seen::text, flagged::text,
		first_seen_run_id::text, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
		to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), coalesce(s.org_id::text, 'none')`
	check := func(stage, table string, partCols []string, wantRows [][]string, want map[string]int64) {
		t.Helper()
		tableDir := dir + "/iceberg/verify/" + table
		hint, err := os.ReadFile(tableDir + "/metadata/version-hint.text")
		if err != nil {
			t.Fatal(err)
		}
		wantCols := append(append([]string{}, columns...), partCols...)
		for _, args := range [][]string{
			{"-uri", e.dbURL, "-catalog", "sellersnap", "-table", "verify." + table},
			{"-metadata", "file://" + tableDir + "/metadata/v" + string(hint) + ".metadata.json"},
		} {
			head, cols, got := icebergRead(t, reader, args...)
			if strings.Join(cols, ",") != strings.Join(wantCols, ",") {
				t.Fatalf("%s: columns %v, want %v", stage, cols, wantCols)
			}
			perUnit := map[string]int64{}
			unitField := fmt.Sprint(1000 + len(partCols) - 1) // the last partition field: run, or date per org
			if table == "full_sellers" {
				unitField = "1000" // org
			}
			for _, f := range head["files"].([]any) {
				f := f.(map[string]any)
				perUnit[f["partition"].(map[string]any)[unitField].(string)] += int64(f["records"].(float64))
			}
			for u, n := range want {
				if perUnit[u] != n {
					t.Errorf("%s %s: %s: %d rows in the planned files, PostgreSQL has %d", stage, args[0], u, perUnit[u], n)
				}
			}
			if len(perUnit) != len(want) {
				t.Errorf("%s %s: %d units in the table, PostgreSQL has %d", stage, args[0], len(perUnit), len(want))
			}
			if args[0] == "-metadata" {
				checkSecondReader(t, stage, tableDir, head, partCols[len(partCols)-1], want, table == "full_sellers")
			}
			sortRows(got)
			sortRows(wantRows)
			saved := columns
			columns = wantCols
			compareRows(t, stage+" "+args[0], got, wantRows)
			columns = saved
		}
	}
	perRun := func(stage string) {
		t.Helper()
		rows, units := pgRows(`SELECT ` + projection + `, to_char(c.completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), c.id::text
			FROM sellers s JOIN collection_runs c ON c.id = s.first_seen_run_id
			WHERE c.status = 'completed' AND s.deleted_at IS NULL AND s.org_id IS NOT DISTINCT FROM c.org_id`)
		check(stage, "new_sellers", []string{"org", "date", "run"}, rows, units)
	}
	perRun("after the first export")
	// A filter on a partition column plans that run's file alone and
	// returns its rows, equal to PostgreSQL's.
	ms := e.readManifests(t)
	one := ms[0]
	for _, m := range ms {
		if m.Rows > one.Rows {
			one = m
		}
	}
	head, _, got := icebergRead(t, reader, "-uri", e.dbURL, "-table", "verify.new_sellers", "-where", "run="+one.RunID)
	if files := head["files"].([]any); len(files) != 1 {
		t.Errorf("a filter on run planned %d files, want 1", len(files))
	}
	wantRun, _ := pgRows(`SELECT ` + projection + `, to_char(c.completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), c.id::text
		FROM sellers s JOIN collection_runs c ON c.id = s.first_seen_run_id
		WHERE c.id = '` + one.RunID + `' AND s.deleted_at IS NULL AND s.org_id IS NOT DISTINCT FROM c.org_id`)
	sortRows(got)
	sortRows(wantRun)
	saved := columns
	columns = append(append([]string{}, columns...), "org", "date", "run")
	compareRows(t, "a filter on run", got, wantRun)
	columns = saved
	// A rerun of one run: an overwrite of its partition.
	e.run(t, "rerun", "-config", cfgPath, "-job", "new-sellers", "-run", ms[0].RunID)
	perRun("after a rerun")
	// A full snapshot: partitioned by org and date.
	e.run(t, "once", "-config", cfgPath, "-job", "full-nightly")
	// The snapshot's date is its schedule slot's (the latest 02:00 UTC),
	// as its manifests say.
	today := ""
	filepath.WalkDir(filepath.Join(dir, "sellers", "full"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == "manifest.json" {
			var m struct{ Date string }
			b, _ := os.ReadFile(p)
			json.Unmarshal(b, &m)
			today = m.Date
		}
		return err
	})
	if today == "" {
		t.Fatal("the full job wrote no manifest")
	}
	rows, orgs := pgRows(`SELECT ` + projection + `, '` + today + `', coalesce(s.org_id::text, 'none') FROM sellers s WHERE s.deleted_at IS NULL`)
	for i := range rows { // the unit key (the org) was counted; drop it
		rows[i] = rows[i][:len(rows[i])-1]
	}
	check("the full snapshot", "full_sellers", []string{"org", "date"}, rows, orgs)
	// A schema change the table takes as an evolution (evolve): a wider
	// decimal keeps its field id, so the rows exported before it read
	// with their values under the new type.
	if _, err := e.pg.Exec(context.Background(), `ALTER TABLE sellers ALTER COLUMN feedback_percent TYPE numeric(7,2);
		WITH r AS (INSERT INTO collection_runs SELECT gen_random_uuid(), org_id, 'completed', now(), clock_timestamp() FROM collection_runs WHERE org_id IS NOT NULL LIMIT 1 RETURNING id, org_id)
		INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, platform_id, feedback_percent, times_seen, flagged, first_seen_run_id, created_at, updated_at)
		SELECT gen_random_uuid(), r.org_id, 'Evolved ' || g, 'evolved ' || g, 'ebay', 'p' || g, 12345.67, 1, false, r.id, now(), now() FROM r, generate_series(1, 5) g`); err != nil {
		t.Fatal(err)
	}
	e.run(t, "once", "-config", cfgPath, "-job", "new-sellers")
	perRun("after the schema evolved")
	hint, _ := os.ReadFile(dir + "/iceberg/verify/new_sellers/metadata/version-hint.text")
	b, err := os.ReadFile(dir + "/iceberg/verify/new_sellers/metadata/v" + string(hint) + ".metadata.json")
	if err != nil {
		t.Fatal(err)
	}
	var md struct {
		Current int `json:"current-schema-id"`
		Schemas []struct {
			ID     int `json:"schema-id"`
			Fields []struct {
				ID   int
				Name string
				Type any
			}
		}
	}
	json.Unmarshal(b, &md)
	ids, types := map[int]bool{}, map[string]bool{}
	for _, sc := range md.Schemas {
		for _, f := range sc.Fields {
			if f.Name == "feedback_percent" {
				ids[f.ID], types[fmt.Sprint(f.Type)] = true, true
			}
		}
	}
	if md.Current < 1 || len(md.Schemas) < 2 || len(ids) != 1 || !types["decimal(5,2)"] || !types["decimal(7,2)"] {
		t.Errorf("after the change: schema %d of %d, feedback_percent ids %v types %v; want a new schema with the same field id, decimal(5,2) then decimal(7,2)", md.Current, len(md.Schemas), ids, types)
	}
}

func sortRows(rows [][]string) {
	sort.Slice(rows, func(i, j int) bool { return strings.Join(rows[i], "\x00") < strings.Join(rows[j], "\x00") })
}

// checkSecondReader reads the table with a second, independent reader
// (verify/hyparquet/iceberg.mjs: avsc for the Avro manifests, hyparquet for
// the data files' footers and partition columns) and checks that it agrees
// with iceberg-go on the files, their partitions and record counts, and
// with PostgreSQL on the rows per run.
func checkSecondReader(t *testing.T, stage, table string, goHead map[string]any, unitCol string, want map[string]int64, byOrg bool) {
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
		key := unitCol
		if byOrg {
			key = "org"
		}
		if r := f.Partition[key]; r == nil || !strings.Contains(f.Path, "/"+key+"="+*r+"/") {
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
			t.Errorf("%s: the second reader has %d rows for %s, PostgreSQL %d", stage, perRun[run], run, n)
		}
	}
}
