package verify

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	_ "github.com/duckdb/duckdb-go/v2"
	"github.com/jackc/pgx/v5"
	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/format"

	"github.com/sellersnap/sellersnap/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// export is one sellersnap export of the demo data into a file:// bucket.
type export struct {
	dbURL     string
	dir       string // bucket root
	bin       string
	cfg       string
	manifests []manifest
	pg        *pgx.Conn
	duck      *sql.DB
}

type manifest struct {
	key   string
	RunID string `json:"run_id"`
	OrgID string `json:"org_id"`
	Date  string `json:"date"`
	Rows  int64  `json:"rows"`
	Files []struct {
		Format string `json:"format"`
		Key    string `json:"key"`
		Rows   int64  `json:"rows"`
	} `json:"files"`
}

func (m manifest) file(format string) string {
	for _, f := range m.Files {
		if f.Format == format {
			return f.Key
		}
	}
	return ""
}

// columns are the collector's user-facing columns, exported by the
// verification job (the default nine plus the ids).
var columns = []string{"id", "org_id", "display_name", "normalized_name", "platform", "platform_id",
	"feedback_score", "feedback_percent", "feedback_count", "times_seen", "flagged",
	"first_seen_run_id", "created_at", "updated_at"}

func newExport(t *testing.T) *export {
	t.Helper()
	e := &export{dbURL: pgtest.NewDatabase(t), dir: t.TempDir()}
	e.bin = filepath.Join(t.TempDir(), "sellersnap")
	build := exec.Command("go", "build", "-C", "..", "-o", e.bin, "./cmd/sellersnap")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build sellersnap: %v\n%s", err, out)
	}
	// CSV without the formula guard, so that every value compares exactly;
	// the guard's effect is documented in docs/reading.md.
	e.cfg = filepath.Join(t.TempDir(), "p.yaml")
	yaml := fmt.Sprintf(`source: {dsn: %q}
jobs:
  - name: new-sellers
    mode: per_run
    destination: "file://%s"
    formats: [csv, ndjson, parquet]
    columns: [%s]
    csv: {formula_guard: false}
`, e.dbURL, e.dir, strings.Join(columns, ", "))
	if err := os.WriteFile(e.cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	e.run(t, "once", "-config", e.cfg)
	e.manifests = e.readManifests(t)
	if len(e.manifests) < 5 {
		t.Fatalf("%d manifests", len(e.manifests))
	}
	var err error
	if e.pg, err = pgx.Connect(context.Background(), e.dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.pg.Close(context.Background()) })
	if e.duck, err = sql.Open("duckdb", ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.duck.Close() })
	// Timestamps render in UTC whatever the machine's zone.
	if _, err := e.duck.Exec(`SET TimeZone = 'UTC'`); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *export) run(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(e.bin, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sellersnap %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (e *export) readManifests(t *testing.T) []manifest {
	t.Helper()
	var ms []manifest
	err := filepath.WalkDir(e.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.Name() != "manifest.json" {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		var m manifest
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		m.key, _ = filepath.Rel(e.dir, p)
		ms = append(ms, m)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].key < ms[j].key })
	return ms
}

func (e *export) path(key string) string { return filepath.Join(e.dir, filepath.FromSlash(key)) }

// rows returns every row of query as strings ("NULL" for NULL).
func rows(t *testing.T, q func() (*sql.Rows, error)) [][]string {
	t.Helper()
	r, err := q()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cols, _ := r.Columns()
	var out [][]string
	for r.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := r.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		row := make([]string, len(cols))
		for i, v := range vals {
			switch v := v.(type) {
			case nil:
				row[i] = "NULL"
			case []byte:
				row[i] = string(v)
			default:
				row[i] = fmt.Sprint(v)
			}
		}
		out = append(out, row)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// pgRows renders a run's sellers as PostgreSQL sees them, in file order,
// in the same text forms as duckRows.
func (e *export) pgRows(t *testing.T, m manifest) [][]string {
	t.Helper()
	ctx := context.Background()
	r, err := e.pg.Query(ctx, `SELECT id::text, org_id::text, display_name, normalized_name, platform, platform_id,
			feedback_score::text, feedback_percent::text, feedback_count::text, times_seen::text, flagged::text,
			first_seen_run_id::text, (extract(epoch FROM created_at) * 1000000)::bigint::text,
			(extract(epoch FROM updated_at) * 1000000)::bigint::text
		FROM sellers WHERE first_seen_run_id = $1 AND org_id IS NOT DISTINCT FROM nullif($2, '')::uuid AND deleted_at IS NULL
		ORDER BY created_at DESC, id DESC`, m.RunID, m.OrgID)
	if err != nil {
		t.Fatal(err)
	}
	return pgStrings(t, r)
}

// pgStrings returns every row of a query whose columns are all text
// ("NULL" for NULL).
func pgStrings(t *testing.T, r pgx.Rows) [][]string {
	t.Helper()
	defer r.Close()
	var out [][]string
	for r.Next() {
		vals := make([]*string, len(r.FieldDescriptions()))
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := r.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		out = append(out, nullText(vals))
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// nullText is vals with "NULL" for nil.
func nullText(vals []*string) []string {
	row := make([]string, len(vals))
	for i, v := range vals {
		row[i] = "NULL"
		if v != nil {
			row[i] = *v
		}
	}
	return row
}

// duckSelect is the same projection in DuckDB over a relation.
const duckSelect = `SELECT id::VARCHAR, org_id::VARCHAR, display_name, normalized_name, platform, platform_id,
	feedback_score::VARCHAR, feedback_percent::VARCHAR, feedback_count::VARCHAR, times_seen::VARCHAR,
	flagged::VARCHAR, first_seen_run_id::VARCHAR, epoch_us(created_at)::VARCHAR, epoch_us(updated_at)::VARCHAR FROM `

// duckSelectText is duckSelect for files DuckDB infers types from text:
// it reads 99.50 as the DOUBLE 99.5, so the decimal is compared as one.
var duckSelectText = strings.Replace(duckSelect, "feedback_percent::VARCHAR", "feedback_percent::DECIMAL(5,2)::VARCHAR", 1)

func sqlString(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func count(t *testing.T, db *sql.DB, q string) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRow(q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

func compareRows(t *testing.T, what string, got, want [][]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d rows, PostgreSQL has %d", what, len(got), len(want))
		return
	}
	bad := 0
	for i := range want {
		for j := range want[i] {
			if got[i][j] != want[i][j] {
				if bad++; bad <= 5 {
					t.Errorf("%s: row %d, %s: got %q, want %q", what, i, columns[j], got[i][j], want[i][j])
				}
			}
		}
	}
	if bad > 5 {
		t.Errorf("%s: %d more differences", what, bad-5)
	}
}

// TestDuckDBReadsEveryFormatExactly reads every file of every run with
// DuckDB and no options, and compares row counts and every value with
// PostgreSQL.
func TestDuckDBReadsEveryFormatExactly(t *testing.T) {
	e := newExport(t)
	var total int64
	for _, m := range e.manifests {
		want := e.pgRows(t, m)
		if int64(len(want)) != m.Rows {
			t.Errorf("%s: manifest says %d rows, PostgreSQL has %d", m.key, m.Rows, len(want))
		}
		total += m.Rows
		pq, csv, nd := e.path(m.file("parquet")), e.path(m.file("csv")), e.path(m.file("ndjson"))
		compareRows(t, m.key+" parquet", rows(t, func() (*sql.Rows, error) {
			return e.duck.Query(duckSelect + "read_parquet(" + sqlString(pq) + ")")
		}), want)
		if m.Rows == 0 {
			// DuckDB cannot infer columns from a header-only CSV or an
			// empty NDJSON file; the Parquet file carries the schema.
			continue
		}
		// read_csv_auto reads "" (an empty string) as NULL unless told
		// allow_quoted_nulls = false; with it, "" and NULL stay apart.
		compareRows(t, m.key+" csv", rows(t, func() (*sql.Rows, error) {
			return e.duck.Query(duckSelectText + "read_csv_auto(" + sqlString(csv) + ", allow_quoted_nulls = false)")
		}), want)
		if n := count(t, e.duck, "SELECT count(*) FROM read_csv_auto("+sqlString(csv)+")"); n != m.Rows {
			t.Errorf("%s: read_csv_auto with no options reads %d rows, want %d", csv, n, m.Rows)
		}
		compareRows(t, m.key+" ndjson", rows(t, func() (*sql.Rows, error) {
			return e.duck.Query(duckSelectText + "read_json_auto(" + sqlString(nd) + ")")
		}), want)
	}
	t.Logf("%d runs, %d rows: Parquet, CSV and NDJSON read by DuckDB equal PostgreSQL value for value", len(e.manifests), total)
}

// describe returns column → type as DuckDB infers it for relation.
func describe(t *testing.T, db *sql.DB, relation string) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, r := range rows(t, func() (*sql.Rows, error) { return db.Query("DESCRIBE SELECT * FROM " + relation) }) {
		got[r[0]] = r[1]
	}
	return got
}

// TestDuckDBInfersTheTypes checks the types DuckDB infers with no options:
// exact from Parquet's footer, and timestamps as timestamps from CSV and
// NDJSON. It prints the type table (docs/reading.md records it).
func TestDuckDBInfersTheTypes(t *testing.T) {
	e := newExport(t)
	var m manifest
	for _, x := range e.manifests {
		if x.Rows > m.Rows {
			m = x
		}
	}
	pq := describe(t, e.duck, "read_parquet("+sqlString(e.path(m.file("parquet")))+")")
	csv := describe(t, e.duck, "read_csv_auto("+sqlString(e.path(m.file("csv")))+")")
	nd := describe(t, e.duck, "read_json_auto("+sqlString(e.path(m.file("ndjson")))+")")
	wantParquet := map[string]string{
		"id": "VARCHAR", "org_id": "VARCHAR", "display_name": "VARCHAR", "normalized_name": "VARCHAR",
		"platform": "VARCHAR", "platform_id": "VARCHAR", "feedback_score": "INTEGER",
		"feedback_percent": "DECIMAL(5,2)", "feedback_count": "INTEGER", "times_seen": "INTEGER",
		"flagged": "BOOLEAN", "first_seen_run_id": "VARCHAR",
		"created_at": "TIMESTAMP WITH TIME ZONE", "updated_at": "TIMESTAMP WITH TIME ZONE",
	}
	var table strings.Builder
	fmt.Fprintf(&table, "%-18s %-26s %-26s %-26s\n", "column", "read_parquet", "read_csv_auto", "read_json_auto")
	for _, c := range columns {
		fmt.Fprintf(&table, "%-18s %-26s %-26s %-26s\n", c, pq[c], csv[c], nd[c])
		if pq[c] != wantParquet[c] {
			t.Errorf("parquet %s: DuckDB infers %s, want %s", c, pq[c], wantParquet[c])
		}
	}
	for _, c := range []string{"created_at", "updated_at"} {
		for name, types := range map[string]map[string]string{"read_csv_auto": csv, "read_json_auto": nd} {
			if !strings.HasPrefix(types[c], "TIMESTAMP") {
				t.Errorf("%s %s: %s, want a timestamp", name, c, types[c])
			}
		}
	}
	if csv["flagged"] != "BOOLEAN" || nd["flagged"] != "BOOLEAN" {
		t.Errorf("flagged: csv %s, ndjson %s, want BOOLEAN", csv["flagged"], nd["flagged"])
	}
	t.Logf("DuckDB's types, no options (run %s, %d rows):\n%s", m.RunID, m.Rows, table.String())

	// docs/reading.md's type table says the same.
	doc, err := os.ReadFile("../docs/reading.md")
	if err != nil {
		t.Fatal(err)
	}
	byType := map[string]string{"`uuid`": "id", "`text`": "display_name", "`int4`": "times_seen",
		"`numeric(5,2)`": "feedback_percent", "`bool`": "flagged", "`timestamptz`": "created_at"}
	seen := 0
	for _, line := range strings.Split(string(doc), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) != 7 {
			continue
		}
		col, ok := byType[strings.TrimSpace(cells[1])]
		if !ok {
			continue
		}
		seen++
		if d := strings.TrimSpace(cells[3]); d != pq[col] {
			t.Errorf("docs/reading.md: read_parquet %s is %q, DuckDB says %q", col, d, pq[col])
		}
		if d := strings.TrimSpace(cells[4]); !strings.Contains(d, csv[col]) {
			t.Errorf("docs/reading.md: read_csv_auto %s is %q, DuckDB says %q", col, d, csv[col])
		}
		if d := strings.TrimSpace(cells[5]); !strings.Contains(d, nd[col]) {
			t.Errorf("docs/reading.md: read_json_auto %s is %q, DuckDB says %q", col, d, nd[col])
		}
	}
	if seen != len(byType) {
		t.Errorf("docs/reading.md's type table has %d of %d rows", seen, len(byType))
	}
}

// TestHivePartitionsAndManifestGating reads a whole job prefix at once:
// DuckDB discovers org=/date=/run= partitions, and a run still being
// written (data files, no manifest yet) is invisible to the recipe that
// reads only files listed by manifests (docs/reading.md).
func TestHivePartitionsAndManifestGating(t *testing.T) {
	e := newExport(t)
	var total int64
	perRun := map[string]int64{}
	for _, m := range e.manifests {
		total += m.Rows
		perRun[m.RunID] = m.Rows
	}
	glob := sqlString(filepath.Join(e.dir, "sellers/new/**/*.parquet"))
	got := rows(t, func() (*sql.Rows, error) {
		return e.duck.Query(`SELECT run, count(*) FROM read_parquet(` + glob + `, hive_partitioning = true) GROUP BY run`)
	})
	var sum int64
	for _, r := range got {
		var n int64
		fmt.Sscan(r[1], &n)
		sum += n
		if perRun[r[0]] != n {
			t.Errorf("partition run=%s: %d rows, manifest says %d", r[0], n, perRun[r[0]])
		}
	}
	if sum != total {
		t.Errorf("hive read: %d rows, manifests %d", sum, total)
	}
	types := describe(t, e.duck, "read_parquet("+glob+", hive_partitioning = true)")
	for _, c := range []string{"org", "date", "run"} {
		if types[c] == "" {
			t.Errorf("partition column %s not discovered: %v", c, types)
		}
	}

	// A run half-written: its Parquet file is there, its manifest not.
	var big manifest
	for _, m := range e.manifests {
		if m.Rows > big.Rows {
			big = m
		}
	}
	src := e.path(big.file("parquet"))
	inflight := filepath.Join(e.dir, "sellers/new/org="+big.OrgID+"/date=2026-12-31/run=00000000-0000-4000-8000-0000000000ff")
	if err := os.MkdirAll(inflight, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(inflight, "sellers_2026-12-31_run-00000000.parquet"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if n := count(t, e.duck, `SELECT count(*) FROM read_parquet(`+glob+`, hive_partitioning = true)`); n != total+big.Rows {
		t.Fatalf("ungated read sees %d rows, want %d (the in-flight run included)", n, total+big.Rows)
	}
	gated := readingRecipe(t, "complete-runs")
	gated = strings.ReplaceAll(gated, "s3://my-bucket/", e.dir+"/")
	if n := count(t, e.duck, "SELECT count(*) FROM ("+strings.TrimSuffix(strings.TrimSpace(gated), ";")+")"); n != total {
		t.Errorf("gated read sees %d rows, want %d: the run without a manifest leaked in", n, total)
	}
}

// recipes returns the DuckDB recipes of docs/reading.md by name: SQL
// blocks whose first line is "-- recipe: NAME".
func recipes(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../docs/reading.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, block := range strings.Split(string(b), "```sql\n")[1:] {
		block = block[:strings.Index(block, "```")]
		if name, ok := strings.CutPrefix(block, "-- recipe: "); ok {
			name = name[:strings.IndexByte(name, '\n')]
			out[name] = block
		}
	}
	return out
}

func readingRecipe(t *testing.T, name string) string {
	t.Helper()
	r, ok := recipes(t)[name]
	if !ok {
		t.Fatalf("docs/reading.md has no recipe %q", name)
	}
	return r
}

// TestReadingRecipesRun executes every DuckDB recipe of docs/reading.md
// against the export (the bucket URL replaced by its directory). Pass:
// each runs and returns rows.
func TestReadingRecipesRun(t *testing.T) {
	e := newExport(t)
	rs := recipes(t)
	if len(rs) < 5 {
		t.Fatalf("%d recipes in docs/reading.md", len(rs))
	}
	for name, q := range rs {
		q = strings.ReplaceAll(q, "s3://my-bucket/", e.dir+"/")
		got := rows(t, func() (*sql.Rows, error) { return e.duck.Query(q) })
		if len(got) == 0 {
			t.Errorf("recipe %s returned no rows", name)
		}
		t.Logf("recipe %s: %d rows", name, len(got))
	}
}

// TestParquetGoSeesTheLogicalTypes opens every Parquet file with
// parquet-go and checks the footer's physical and logical types.
// TestHyparquetReadsEveryParquetFileExactly reads every Parquet file with
// hyparquet, a pure-JavaScript reader from another ecosystem that is strict
// about the footer (it fails on a root schema element that is REPEATED, which
// DuckDB, polars and arrow-rs accept), and compares every value with
// PostgreSQL. make verify-readers installs it into verify/hyparquet.
func TestHyparquetReadsEveryParquetFileExactly(t *testing.T) {
	if _, err := os.Stat("hyparquet/node_modules/hyparquet"); err != nil {
		t.Fatalf("hyparquet is not installed (make verify-readers runs npm ci in verify/hyparquet): %v", err)
	}
	e := newExport(t)
	var total int64
	for _, m := range e.manifests {
		p := e.path(m.file("parquet"))
		out, err := exec.Command("node", "hyparquet/read.mjs", p).Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Errorf("hyparquet cannot read %s: %v\n%s", m.key, err, stderr)
			continue
		}
		lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
		var head struct {
			Columns []string `json:"columns"`
			Rows    string   `json:"rows"`
		}
		if err := json.Unmarshal([]byte(lines[0]), &head); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if strings.Join(head.Columns, ",") != strings.Join(columns, ",") || head.Rows != fmt.Sprint(m.Rows) {
			t.Errorf("%s: hyparquet sees columns %v and %s rows, want %v and %d", m.key, head.Columns, head.Rows, columns, m.Rows)
		}
		var got [][]string
		for _, l := range lines[1:] {
			var row []string
			if err := json.Unmarshal([]byte(l), &row); err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			got = append(got, row)
		}
		compareRows(t, m.key+" hyparquet", got, e.pgRows(t, m))
		total += int64(len(got))
	}
	t.Logf("%d files, %d rows: hyparquet reads every Parquet file equal to PostgreSQL value for value", len(e.manifests), total)
}

func TestParquetGoSeesTheLogicalTypes(t *testing.T) {
	e := newExport(t)
	want := map[string]string{
		"id": "BYTE_ARRAY STRING", "org_id": "BYTE_ARRAY STRING", "display_name": "BYTE_ARRAY STRING",
		"normalized_name": "BYTE_ARRAY STRING", "platform": "BYTE_ARRAY STRING", "platform_id": "BYTE_ARRAY STRING",
		"feedback_score": "INT32 INT(32,true)", "feedback_percent": "INT32 DECIMAL(5,2)",
		"feedback_count": "INT32 INT(32,true)", "times_seen": "INT32 INT(32,true)", "flagged": "BOOLEAN ",
		"first_seen_run_id": "BYTE_ARRAY STRING",
		"created_at":        "INT64 TIMESTAMP(isAdjustedToUTC=true,unit=MICROS)", "updated_at": "INT64 TIMESTAMP(isAdjustedToUTC=true,unit=MICROS)",
	}
	for _, m := range e.manifests {
		p := e.path(m.file("parquet"))
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		pf, err := parquet.OpenFile(f, st.Size())
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if pf.NumRows() != m.Rows {
			t.Errorf("%s: %d rows, manifest %d", p, pf.NumRows(), m.Rows)
		}
		if rep, set := pf.Metadata().Schema[0].RepetitionType.Get(); set && rep != format.Required {
			t.Errorf("%s: root schema element is %v; the spec allows none or REQUIRED", filepath.Base(p), rep)
		}
		got := map[string]string{}
		for _, el := range pf.Metadata().Schema[1:] {
			lt := el.LogicalType.String()
			got[el.Name] = fmt.Sprintf("%v %s", el.Type.V, lt)
		}
		for c, w := range want {
			if got[c] != w {
				t.Errorf("%s column %s: %q, want %q", filepath.Base(p), c, got[c], w)
			}
		}
		f.Close()
	}
}
