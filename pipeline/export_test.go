package pipeline_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
	"github.com/jackc/pgx/v5"
	_ "gocloud.dev/blob/fileblob"
	_ "gocloud.dev/blob/memblob"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/internal/demodata"
	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/internal/pipelinetest"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sources"
)

func TestMain(m *testing.M) { os.Exit(pgtest.MainWith(m, stopAzurite)) }

// fixture is a database with demo data, a file:// bucket and a runner.
type fixture struct{ *pipelinetest.Fixture }

func newFixture(t *testing.T, extraYAML string) *fixture {
	t.Helper()
	return &fixture{pipelinetest.New(t, extraYAML)}
}

// newFixtureAt is newFixture writing to any bucket URL; dir is the
// directory behind a file:// URL, else "".
func newFixtureAt(t *testing.T, dest, dir, extraYAML string) *fixture {
	t.Helper()
	return &fixture{pipelinetest.NewAt(t, dest, dir, extraYAML)}
}

// expected returns Postgres's own rendering of a run's rows, in export
// order: text as stored, numbers and booleans as PostgreSQL prints them,
// timestamps in UTC with six fractional digits.
func (f *fixture) expected(runID, orgID string) [][]*string {
	t := f.T
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	where := "first_seen_run_id = $1 AND org_id = $2"
	args := []any{runID, orgID}
	if runID == "" {
		where, args = "org_id = $1", []any{orgID}
	}
	rows, err := conn.Query(ctx, `SELECT display_name, normalized_name, platform, platform_id, times_seen::text,
		feedback_percent::text, feedback_count::text, flagged::text,
		to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
		FROM sellers WHERE deleted_at IS NULL AND `+where+` ORDER BY created_at DESC, id DESC`, args...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]*string, error) {
		v := make([]*string, 9)
		p := make([]any, 9)
		for i := range v {
			p[i] = &v[i]
		}
		return v, r.Scan(p...)
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var textColumns = []int{0, 1, 2, 3} // the text columns the CSV guard applies to

func TestOnceExportsEveryCompletedRunExactly(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	runs, err := f.Src.CompletedRuns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.Runner.Once(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Exported) != len(runs) {
		t.Fatalf("exported %d runs, %d are completed", len(res.Exported), len(runs))
	}
	files := f.Files()
	sawEmpty, sawCRLF, sawEmptyString := false, false, false
	for i, m := range res.Exported {
		if m.RunID != runs[i].ID {
			t.Errorf("export %d is run %s, want %s (oldest completed_at first)", i, m.RunID, runs[i].ID)
		}
		mkey := strings.TrimSuffix(m.Files[0].Key, filepath.Base(m.Files[0].Key)) + "manifest.json"
		var onDisk pipeline.Manifest
		if err := json.Unmarshal(files[mkey], &onDisk); err != nil {
			t.Fatalf("manifest %s: %v", mkey, err)
		}
		if onDisk.Rows != m.Rows || onDisk.Job != "new-sellers" || onDisk.Tool.Version != "test" || !onDisk.Options.CSVFormulaGuard {
			t.Errorf("manifest %s: %+v", mkey, onDisk)
		}
		want := f.expected(m.RunID, m.OrgID)
		if int64(len(want)) != m.Rows {
			t.Errorf("run %s: manifest says %d rows, Postgres has %d", m.RunID, m.Rows, len(want))
		}
		sawEmpty = sawEmpty || len(want) == 0
		for _, mf := range m.Files {
			data, ok := files[mf.Key]
			if !ok {
				t.Fatalf("manifest lists %s, which is not in the bucket", mf.Key)
			}
			sum := sha256.Sum256(data)
			if hex.EncodeToString(sum[:]) != mf.SHA256 || int64(len(data)) != mf.Bytes || mf.Rows != m.Rows {
				t.Errorf("%s: manifest bytes/sha256/rows do not match the object", mf.Key)
			}
			var got [][]*string
			switch mf.Format {
			case "csv":
				got = parseCSV(t, data)
				if len(got) == 0 || strings.Join(deref(got[0]), ",") != strings.Join(config.DefaultColumns(), ",") {
					t.Fatalf("%s: header %v", mf.Key, got)
				}
				got = got[1:]
			case "ndjson":
				got = parseNDJSON(t, data)
			case "parquet":
				got = parseParquet(t, data)
			}
			if len(got) != len(want) {
				t.Fatalf("%s: %d rows, want %d", mf.Key, len(got), len(want))
			}
			for r := range want {
				for c := range want[r] {
					w := want[r][c]
					if mf.Format == "csv" && w != nil && slices.Contains(textColumns, c) && *w != "" && (strings.ContainsRune("=+-@\t\r", rune((*w)[0])) || strings.ContainsRune("＝＋－＠", []rune(*w)[0])) {
						guarded := "'" + *w
						w = &guarded
					}
					if !equal(got[r][c], w) {
						t.Fatalf("%s row %d column %s: got %s, want %s", mf.Key, r, config.DefaultColumns()[c], show(got[r][c]), show(w))
					}
					if w != nil && strings.Contains(*w, "\r\n") {
						sawCRLF = true
					}
					if w != nil && *w == "" {
						sawEmptyString = true
					}
				}
			}
		}
	}
	if !sawEmpty || !sawCRLF || !sawEmptyString {
		t.Errorf("demo data did not exercise: empty run %v, CRLF %v, empty string %v", sawEmpty, sawCRLF, sawEmptyString)
	}

	// A second once finds nothing to do and touches nothing.
	res, err = f.Runner.Once(ctx, job)
	if err != nil || len(res.Exported) != 0 {
		t.Fatalf("second once exported %d runs, err %v", len(res.Exported), err)
	}
	if !mapsEqual(files, f.Files()) {
		t.Error("second once changed the bucket")
	}
}

func TestRerunIsByteIdentical(t *testing.T) {
	f := newFixture(t, "    csv: {compression: gzip}\n    ndjson: {compression: zstd}\n")
	ctx := context.Background()
	job := f.Job("new-sellers")
	res, err := f.Runner.Once(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	before := f.Files()
	for _, m := range res.Exported {
		if _, err := f.Runner.RerunRun(ctx, job, m.RunID); err != nil {
			t.Fatal(err)
		}
	}
	after := f.Files()
	if len(before) != len(after) {
		t.Fatalf("%d files before rerun, %d after", len(before), len(after))
	}
	for k, b := range before {
		if strings.HasSuffix(k, "manifest.json") {
			continue // exported_at differs
		}
		if !bytes.Equal(b, after[k]) {
			t.Errorf("%s changed on rerun", k)
		}
		if strings.HasSuffix(k, ".csv.gz") && !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
			t.Errorf("%s is not gzip", k)
		}
	}
}

func TestEmptyRun(t *testing.T) {
	f := newFixture(t, "")
	res, files := f.Once("new-sellers")
	var empty *pipeline.Manifest
	for _, m := range res.Exported {
		if m.Rows == 0 {
			empty = m
		}
	}
	if empty == nil {
		t.Fatal("no empty run in the demo data")
	}
	for _, mf := range empty.Files {
		data := files[mf.Key]
		switch mf.Format {
		case "csv":
			if string(data) != strings.Join(config.DefaultColumns(), ",")+"\n" {
				t.Errorf("empty CSV: %q", data)
			}
		case "ndjson":
			if len(data) != 0 {
				t.Errorf("empty NDJSON: %q", data)
			}
		case "parquet":
			pf, err := file.NewParquetReader(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if pf.NumRows() != 0 || pf.MetaData().Schema.NumColumns() != 9 {
				t.Errorf("empty Parquet: %d rows, %d columns", pf.NumRows(), pf.MetaData().Schema.NumColumns())
			}
			pf.Close()
		}
	}
}

func TestFullSnapshotPerOrg(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("full-nightly")
	res, err := f.Runner.Once(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Exported) != pgtest.DemoOptions.Orgs {
		t.Fatalf("%d org snapshots, want %d", len(res.Exported), pgtest.DemoOptions.Orgs)
	}
	files := f.Files()
	for _, m := range res.Exported {
		if m.Date != "2026-11-22" || !strings.Contains(m.Files[0].Key, "sellers/full/org="+m.OrgID+"/date=2026-11-22/sellers_2026-11-22_full.") {
			t.Errorf("full snapshot keys: %+v", m.Files[0])
		}
		want := f.expected("", m.OrgID)
		got := parseNDJSON(t, files[m.Files[1].Key])
		if len(got) != len(want) {
			t.Fatalf("org %s: %d rows, want %d", m.OrgID, len(got), len(want))
		}
	}
	// Today's snapshot exists: once does nothing; rerun -date rewrites it.
	if res, err := f.Runner.Once(ctx, job); err != nil || len(res.Exported) != 0 {
		t.Errorf("second once: %d, %v", len(res.Exported), err)
	}
	if res, err := f.Runner.RerunDate(ctx, job, "2026-11-22"); err != nil || len(res.Exported) != 3 || !res.Exported[0].Rerun {
		t.Errorf("rerun -date: %d, %v", len(res.Exported), err)
	}

	// A date ahead is refused; one behind gets today's rows, says so, and
	// leaves latest.json at today's snapshot.
	var future *pipeline.FutureDateError
	if _, err := f.Runner.RerunDate(ctx, job, "2026-11-23"); !errors.As(err, &future) {
		t.Errorf("rerun of tomorrow: %v, want a FutureDateError", err)
	}
	res, err = f.Runner.RerunDate(ctx, job, "2026-11-01")
	if err != nil || len(res.Exported) != 3 {
		t.Fatalf("rerun of a past date: %+v, %v", res, err)
	}
	for _, m := range res.Exported {
		if asOf := m.Snapshot.ReadAt.In(job.Location).Format(time.DateOnly); m.Date != "2026-11-01" || m.DataAsOf != asOf || !m.Rerun {
			t.Errorf("past rerun's manifest: date %s, data_as_of %q (read %s), rerun %v", m.Date, m.DataAsOf, asOf, m.Rerun)
		}
	}
	for k, data := range f.AllFiles() {
		if path.Base(k) != pipeline.LatestName {
			continue
		}
		var l pipeline.Latest
		if err := json.Unmarshal(data, &l); err != nil || l.Date != "2026-11-22" {
			t.Errorf("%s names date %s after a rerun of an earlier date, want 2026-11-22 (%v)", k, l.Date, err)
		}
	}
}

// TestRepairLatest: a latest.json pointing at a snapshot dated after today
// (what `rerun -date` of a future date left before it was refused) is put
// back on the newest real one; -dry-run only reports; a second repair
// finds nothing to do.
func TestRepairLatest(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("full-nightly")
	res, err := f.Runner.Once(ctx, job)
	if err != nil || len(res.Exported) == 0 {
		t.Fatalf("once: %+v, %v", res, err)
	}
	m := res.Exported[0]
	mkey := path.Join(path.Dir(m.Files[0].Key), pipeline.ManifestName)
	latest := job.Layout.Latest(mkey, m.OrgID)
	future := strings.Replace(mkey, "2026-11-22", "2031-01-01", 1)
	if future == mkey {
		t.Fatalf("no date in %s", mkey)
	}
	fm := *m
	fm.Date = "2031-01-01"
	data, _ := json.Marshal(fm)
	pin, _ := json.Marshal(pipeline.Latest{LatestVersion: 1, Job: m.Job, Mode: m.Mode, OrgID: m.OrgID, Date: "2031-01-01", Manifest: future})
	for k, v := range map[string][]byte{future: data, latest: pin} {
		p := filepath.Join(f.Dir, filepath.FromSlash(k))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, v, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	repairs, _, err := f.Runner.RepairLatest(ctx, job, true)
	if err != nil || len(repairs) != 1 || repairs[0].Key != latest || repairs[0].Was != future || repairs[0].Now != mkey {
		t.Fatalf("dry run: %+v, %v; want %s moved from %s to %s", repairs, err, latest, future, mkey)
	}
	if got := f.AllFiles()[latest]; !bytes.Equal(got, pin) {
		t.Errorf("a dry run wrote %s", latest)
	}
	if _, _, err := f.Runner.RepairLatest(ctx, job, false); err != nil {
		t.Fatal(err)
	}
	var l pipeline.Latest
	if err := json.Unmarshal(f.AllFiles()[latest], &l); err != nil || l.Manifest != mkey || l.Date != "2026-11-22" {
		t.Errorf("after the repair %s names %s (%s), %v; want %s", latest, l.Manifest, l.Date, err, mkey)
	}
	if repairs, _, err := f.Runner.RepairLatest(ctx, job, false); err != nil || len(repairs) != 0 {
		t.Errorf("second repair: %+v, %v; want nothing to do", repairs, err)
	}
}

func TestRenameAndFlaggedFilter(t *testing.T) {
	f := newFixture(t, "    flagged: true\n    columns: [display_name, {name: created_at, as: discovered_at}, {name: id, as: seller_id}]\n    formats: [ndjson]\n")
	res, files := f.Once("new-sellers")
	var total int64
	for _, m := range res.Exported {
		total += m.Rows
		for _, line := range strings.Split(strings.TrimSpace(string(files[m.Files[0].Key])), "\n") {
			if line == "" {
				continue
			}
			if !strings.HasPrefix(line, `{"display_name":`) || !strings.Contains(line, `,"discovered_at":"`) || !strings.Contains(line, `,"seller_id":"`) {
				t.Fatalf("renamed columns missing: %s", line)
			}
		}
	}
	ctx := context.Background()
	conn, _ := pgx.Connect(ctx, f.DBURL)
	defer conn.Close(ctx)
	var want int64
	conn.QueryRow(ctx, `SELECT count(*) FROM sellers s JOIN collection_runs r ON r.id = s.first_seen_run_id AND r.org_id = s.org_id
		WHERE r.status = 'completed' AND s.deleted_at IS NULL AND s.flagged`).Scan(&want)
	if total != want || want == 0 {
		t.Errorf("flagged export has %d rows, want %d", total, want)
	}
}

func TestFailureMidStreamLeavesNothing(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	// A view that fails on one row deep inside the biggest run; with sorts
	// disabled the rows before it stream out first.
	pgtest.Exec(t, f.DBURL, `
		CREATE FUNCTION boom(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
		BEGIN IF t = 'BOOM' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN t; END $$;
		CREATE VIEW sellers_boom AS SELECT id, org_id, boom(display_name) AS display_name, normalized_name, platform,
			platform_id, feedback_score, feedback_percent, feedback_count, times_seen, flagged, first_seen_run_id,
			last_seen_run_id, created_at, updated_at, deleted_at FROM sellers;
		UPDATE sellers SET display_name = 'BOOM' WHERE id = (
			SELECT id FROM sellers WHERE deleted_at IS NULL AND first_seen_run_id = (
				SELECT first_seen_run_id FROM sellers s JOIN collection_runs r ON r.id = s.first_seen_run_id
				WHERE r.status = 'completed' GROUP BY 1 ORDER BY count(*) DESC LIMIT 1)
			ORDER BY created_at DESC, id DESC OFFSET 200 LIMIT 1)`)
	pgtest.Exec(t, f.DBURL, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET enable_sort = off', current_database()); END $$`)
	f.Load("") // reconnect: the database setting applies to new sessions
	f.Cfg.Source.SellersTable = "sellers_boom"
	src, err := sources.Open(ctx, sources.Config{DSN: f.DBURL, SellersTable: "sellers_boom"})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	f.Runner.Source = src

	res, err := f.Runner.Once(ctx, f.Job("new-sellers"))
	if err == nil || !strings.Contains(err.Error(), "injected failure") || res.Failed != 1 {
		t.Fatalf("once: failed=%d err=%v, want one run failing with the injected error", res.Failed, err)
	}
	files := f.Files()
	for _, m := range res.Exported {
		for _, mf := range m.Files {
			delete(files, mf.Key)
		}
		delete(files, filepath.ToSlash(filepath.Join(filepath.Dir(m.Files[0].Key), "manifest.json")))
		delete(files, filepath.ToSlash(filepath.Join(filepath.Dir(m.Files[0].Key), pipeline.SuccessName)))
	}
	for k := range files {
		if path.Base(k) == pipeline.LatestName || path.Base(k) == pipeline.SchemaName {
			delete(files, k)
		}
	}
	if len(files) != 0 {
		t.Errorf("the failed run left objects behind: %v", keys(files))
	}
	if len(res.Exported) == 0 {
		t.Error("the other runs were not exported")
	}
}

// parseCSV is a strict RFC 4180 reader that keeps "" (empty string) apart
// from an empty field (NULL) and keeps CR and CRLF inside quotes as they are.
func parseCSV(t *testing.T, data []byte) [][]*string {
	t.Helper()
	var rows [][]*string
	var row []*string
	for i := 0; i < len(data); {
		var field *string
		if data[i] == '"' {
			var b strings.Builder
			i++
			for {
				if i >= len(data) {
					t.Fatal("unterminated quoted field")
				}
				if data[i] == '"' {
					if i+1 < len(data) && data[i+1] == '"' {
						b.WriteByte('"')
						i += 2
						continue
					}
					i++
					break
				}
				b.WriteByte(data[i])
				i++
			}
			s := b.String()
			field = &s
		} else {
			j := i
			for j < len(data) && data[j] != ',' && data[j] != '\n' {
				if data[j] == '"' || data[j] == '\r' {
					t.Fatalf("bare %q in unquoted field at byte %d", data[j], j)
				}
				j++
			}
			if j > i {
				s := string(data[i:j])
				field = &s
			}
			i = j
		}
		row = append(row, field)
		if i >= len(data) {
			t.Fatal("CSV does not end with a newline")
		}
		switch data[i] {
		case ',':
			i++
		case '\n':
			rows = append(rows, row)
			row = nil
			i++
		default:
			t.Fatalf("unexpected %q after field at byte %d", data[i], i)
		}
	}
	return rows
}

func parseNDJSON(t *testing.T, data []byte) [][]*string {
	t.Helper()
	var rows [][]*string
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	for dec.More() {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			t.Fatal(err)
		}
		row := make([]*string, 9)
		for i, c := range config.DefaultColumns() {
			v, ok := obj[c]
			if !ok {
				t.Fatalf("key %s missing", c)
			}
			switch v := v.(type) {
			case nil:
			case string:
				row[i] = &v
			case json.Number:
				s := v.String()
				row[i] = &s
			case bool:
				s := fmt.Sprint(v)
				row[i] = &s
			default:
				t.Fatalf("%s: unexpected JSON value %v", c, v)
			}
		}
		rows = append(rows, row)
	}
	return rows
}

func parseParquet(t *testing.T, data []byte) [][]*string {
	t.Helper()
	pf, err := file.NewParquetReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: 100}, memory.DefaultAllocator)
	if err != nil {
		t.Fatal(err)
	}
	rr, err := fr.GetRecordReader(context.Background(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Release()
	var rows [][]*string
	for rr.Next() {
		rec := rr.Record()
		for r := 0; r < int(rec.NumRows()); r++ {
			row := make([]*string, rec.NumCols())
			for c, col := range rec.Columns() {
				if col.IsNull(r) {
					continue
				}
				var s string
				switch a := col.(type) {
				case *array.Decimal128:
					s = decimalText(a.Value(r).BigInt(), int(a.DataType().(*arrow.Decimal128Type).Scale))
				case *array.Timestamp:
					s = time.UnixMicro(int64(a.Value(r))).UTC().Format("2006-01-02T15:04:05.000000Z")
				default:
					s = col.ValueStr(r)
				}
				row[c] = &s
			}
			rows = append(rows, row)
		}
	}
	if err := rr.Err(); err != nil && !errors.Is(err, io.EOF) { // pqarrow reports EOF at the end
		t.Fatal(err)
	}
	return rows
}

func decimalText(v *big.Int, scale int) string {
	neg := v.Sign() < 0
	s := new(big.Int).Abs(v).String()
	for len(s) <= scale {
		s = "0" + s
	}
	s = s[:len(s)-scale] + "." + s[len(s)-scale:]
	if neg {
		s = "-" + s
	}
	return s
}

func equal(a, b *string) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func show(s *string) string {
	if s == nil {
		return "NULL"
	}
	return fmt.Sprintf("%q", *s)
}

func deref(row []*string) []string {
	out := make([]string, len(row))
	for i, s := range row {
		if s != nil {
			out[i] = *s
		}
	}
	return out
}

func mapsEqual(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestSelectOnlyRoleAndTimezoneDates(t *testing.T) {
	f := newFixture(t, "    timezone: America/Los_Angeles\n    formats: [csv]\n")
	ctx := context.Background()
	pgtest.Exec(t, f.DBURL, `DO $$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'snap_reader') THEN CREATE ROLE snap_reader LOGIN; END IF;
		END $$;
		GRANT USAGE ON SCHEMA public TO snap_reader;
		GRANT SELECT ON collection_runs, sellers TO snap_reader;`)
	readerURL := strings.Replace(f.DBURL, "postgres://postgres@", "postgres://snap_reader@", 1)
	src, err := sources.Open(ctx, sources.Config{DSN: readerURL})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := src.Check(ctx, f.Job("new-sellers").SourceColumns()); err != nil {
		t.Fatalf("check as a SELECT-only role: %v", err)
	}
	f.Runner.Source = src
	res, err := f.Runner.Once(ctx, f.Job("new-sellers"))
	if err != nil || len(res.Exported) == 0 {
		t.Fatalf("once as a SELECT-only role: %d exported, %v", len(res.Exported), err)
	}
	la, _ := time.LoadLocation("America/Los_Angeles")
	for _, m := range res.Exported {
		want := m.Snapshot.RunCompletedAt.In(la).Format(time.DateOnly)
		if m.Date != want || !strings.Contains(m.Files[0].Key, "/date="+want+"/") || !strings.Contains(m.Files[0].Key, "sellers_"+want+"_run-"+m.RunID[:8]+".csv") {
			t.Errorf("run completed %s: date %s, key %s; want %s", m.Snapshot.RunCompletedAt, m.Date, m.Files[0].Key, want)
		}
	}
	// The first demo run completes at 00:17 UTC: the day before in Los Angeles.
	if res.Exported[0].Date != "2026-02-28" {
		t.Errorf("first run date %s, want 2026-02-28", res.Exported[0].Date)
	}
}

func TestStaleTempFilesOfAKilledExportAreRemoved(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	runs, err := f.Src.CompletedRuns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// What fileblob leaves when the process dies mid-upload.
	res, err := f.Runner.RerunRun(ctx, job, runs[1].ID)
	if err != nil {
		t.Fatal(err)
	}
	key := res.Exported[0].Files[2].Key
	stale := filepath.Join(f.Dir, filepath.FromSlash(key)) + ".18ea45230aab137f.tmp"
	if err := os.WriteFile(stale, []byte("PAR1 partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(f.Dir, filepath.FromSlash(key)) + ".keep"
	if err := os.WriteFile(other, []byte("not ours"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A kill while the manifest, _SUCCESS or latest.json was written (the
	// names sinks gives its temporary files). latest.json is written by
	// whoever finishes an export of the org, under no one lock: a fresh
	// temporary file may be another process's and stays; an old one goes.
	folder := filepath.Dir(filepath.Join(f.Dir, filepath.FromSlash(key)))
	mkey := path.Join(path.Dir(key), pipeline.ManifestName)
	latest := filepath.Join(f.Dir, filepath.FromSlash(job.Layout.Latest(mkey, res.Exported[0].OrgID)))
	oldLatest := filepath.Join(filepath.Dir(latest), ".latest.json.0123456789abcdef.tmp")
	freshLatest := filepath.Join(filepath.Dir(latest), ".latest.json.fedcba9876543210.tmp")
	stales := []string{stale, filepath.Join(folder, ".manifest.json.73df96c990a8a9e7.tmp"),
		filepath.Join(folder, "._SUCCESS.73df96c990a8a9e7.tmp"), oldLatest}
	for _, p := range append(stales[1:], freshLatest) {
		if err := os.WriteFile(p, []byte("{"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-2 * time.Minute)
	if err := os.Chtimes(oldLatest, long, long); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Runner.RerunRun(ctx, job, runs[1].ID); err != nil {
		t.Fatal(err)
	}
	for _, p := range stales {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("stale temp file %s still there: %v", filepath.Base(p), err)
		}
	}
	if _, err := os.Stat(freshLatest); err != nil {
		t.Errorf("a temporary file another process may be writing was removed: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a file that is not a temp file of ours was removed: %v", err)
	}
}

// TestOneRowAllNulls exports a run whose only seller has NULL in every
// nullable column. Pass: one row in every format, NULL written as NULL
// (empty unquoted CSV field, JSON null, Parquet null), no other values.
func TestOneRowAllNulls(t *testing.T) {
	f := newFixture(t, "")
	runID := "00000000-0000-4000-8000-00000000a11e"
	pgtest.Exec(t, f.DBURL, `INSERT INTO collection_runs (id, org_id, status, started_at, completed_at)
			SELECT $1, org_id, 'completed', now() - interval '1 hour', now() FROM collection_runs LIMIT 1;
		`, runID)
	pgtest.Exec(t, f.DBURL, `INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
			SELECT gen_random_uuid(), org_id, 'Only', 'only', 'ebay', 1, false, id, '2026-03-01T00:00:00Z' FROM collection_runs WHERE id = $1`, runID)
	res, files := f.Once("new-sellers")
	var m *pipeline.Manifest
	for _, e := range res.Exported {
		if e.RunID == runID {
			m = e
		}
	}
	if m == nil || m.Rows != 1 {
		t.Fatalf("run not exported with one row: %+v", m)
	}
	for _, mf := range m.Files {
		data := files[mf.Key]
		switch mf.Format {
		case "csv":
			want := strings.Join(config.DefaultColumns(), ",") + "\nOnly,only,ebay,,1,,,false,2026-03-01T00:00:00.000000Z\n"
			if string(data) != want {
				t.Errorf("CSV:\n%q\nwant\n%q", data, want)
			}
		case "ndjson":
			want := `{"display_name":"Only","normalized_name":"only","platform":"ebay","platform_id":null,"times_seen":1,"feedback_percent":null,"feedback_count":null,"flagged":false,"created_at":"2026-03-01T00:00:00.000000Z"}` + "\n"
			if string(data) != want {
				t.Errorf("NDJSON:\n%s\nwant\n%s", data, want)
			}
		case "parquet":
			pf, err := file.NewParquetReader(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			rg := pf.MetaData().RowGroups[0]
			fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{}, memory.NewGoAllocator())
			if err != nil {
				t.Fatal(err)
			}
			tbl, err := fr.ReadTable(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for i, name := range config.DefaultColumns() {
				wantNull := map[string]bool{"platform_id": true, "feedback_percent": true, "feedback_count": true}[name]
				if col := tbl.Column(i).Data().Chunk(0); col.IsNull(0) != wantNull {
					t.Errorf("%s: null = %v, want %v", name, col.IsNull(0), wantNull)
				}
				st, err := pf.MetaData().RowGroup(0).ColumnChunk(i)
				if err != nil {
					t.Fatal(err)
				}
				// Text columns carry no statistics (README, file formats).
				stats, err := st.Statistics()
				if text := tbl.Schema().Field(i).Type.ID() == arrow.STRING; err != nil || (stats == nil) != text {
					t.Errorf("%s: statistics %v (%v), want them only for columns that are not text", name, stats, err)
				} else if !text && (stats.NullCount() == 1) != wantNull {
					t.Errorf("%s: %d nulls", name, stats.NullCount())
				}
			}
			tbl.Release()
			if pf.NumRows() != 1 || rg.NumRows != 1 {
				t.Errorf("Parquet: %d rows", pf.NumRows())
			}
			pf.Close()
		}
	}
}

// TestLatestPointsAtTheNewestCompleteExport: latest.json per org names the
// newest run's manifest, a rerun of an older run leaves it, and with a path
// that has no {org_id} folder the pointers go under latest/org=….json.
func TestLatestPointsAtTheNewestCompleteExport(t *testing.T) {
	for _, tc := range []struct {
		name, extra string
		key         func(org string) string
	}{
		{"org folder", "", func(org string) string { return "sellers/new/org=" + org + "/latest.json" }},
		{"no org folder", "    path: exports/{job}/{run_id}/sellers.{ext}", func(org string) string { return "exports/latest/org=" + org + ".json" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.extra)
			res, _ := f.Once("new-sellers")
			newest := map[string]*pipeline.Manifest{}
			oldest := map[string]*pipeline.Manifest{}
			for _, m := range res.Exported {
				if n := newest[m.OrgID]; n == nil || m.Snapshot.RunCompletedAt.After(*n.Snapshot.RunCompletedAt) {
					newest[m.OrgID] = m
				}
				if o := oldest[m.OrgID]; o == nil || m.Snapshot.RunCompletedAt.Before(*o.Snapshot.RunCompletedAt) {
					oldest[m.OrgID] = m
				}
			}
			check := func(when string) {
				files := f.Files()
				for org, m := range newest {
					var l pipeline.Latest
					if err := json.Unmarshal(files[tc.key(org)], &l); err != nil {
						t.Fatalf("%s: %s: %v", when, tc.key(org), err)
					}
					if l.RunID != m.RunID || l.Rows != m.Rows {
						t.Errorf("%s: %s names run %s, want the newest %s", when, tc.key(org), l.RunID, m.RunID)
					}
					if _, ok := files[l.Manifest]; !ok {
						t.Errorf("%s: %s names %s, which does not exist", when, tc.key(org), l.Manifest)
					}
				}
			}
			check("after once")
			for _, m := range oldest {
				if _, err := f.Runner.RerunRun(context.Background(), f.Job("new-sellers"), m.RunID); err != nil {
					t.Fatal(err)
				}
			}
			check("after rerunning the oldest runs")
		})
	}
}

// TestMaskAndRedact masks platform_id with HMAC-SHA256 (key from the
// environment) and redacts normalized_name. Pass: in every format each
// platform_id is the hex HMAC of the database value (NULL stays NULL),
// normalized_name is NULL, the manifest records both transforms, and the
// key appears in no file.
func TestMaskAndRedact(t *testing.T) {
	const key = "test-mask-key-0123456789abcdef"
	t.Setenv("SELLERSNAP_MASK_KEY", key)
	f := newFixture(t, "    formats: [csv, ndjson, parquet]\n    csv: {formula_guard: false}\n    columns: [display_name, {name: normalized_name, redact: true}, {name: platform_id, mask: hmac-sha256, as: platform_hash}, created_at]")
	res, files := f.Once("new-sellers")
	conn, err := pgx.Connect(context.Background(), f.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	mac := func(v *string) any {
		if v == nil {
			return nil
		}
		h := hmac.New(sha256.New, []byte(key))
		h.Write([]byte(*v))
		return hex.EncodeToString(h.Sum(nil))
	}
	checked := 0
	for _, m := range res.Exported {
		if m.Columns[1].Transform != "redact" || m.Columns[2].Transform != "mask:hmac-sha256" || m.Columns[2].Name != "platform_hash" || !m.Columns[1].Nullable {
			t.Errorf("manifest columns: %+v", m.Columns)
		}
		rows, err := conn.Query(context.Background(), `SELECT platform_id, normalized_name FROM sellers WHERE first_seen_run_id = $1 AND deleted_at IS NULL ORDER BY created_at DESC, id DESC`, m.RunID)
		if err != nil {
			t.Fatal(err)
		}
		var want []any
		for rows.Next() {
			var pid *string
			var name string // redacted: read to keep the query honest
			if err := rows.Scan(&pid, &name); err != nil {
				t.Fatal(err)
			}
			want = append(want, mac(pid))
		}
		for _, mf := range m.Files {
			data := files[mf.Key]
			if bytes.Contains(data, []byte(key)) {
				t.Errorf("%s contains the mask key", mf.Key)
			}
			if mf.Format != "ndjson" {
				continue
			}
			lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
			if len(want) == 0 {
				continue
			}
			if len(lines) != len(want) {
				t.Fatalf("%s: %d lines, want %d", mf.Key, len(lines), len(want))
			}
			for i, line := range lines {
				var obj map[string]any
				if err := json.Unmarshal([]byte(line), &obj); err != nil {
					t.Fatal(err)
				}
				if obj["platform_hash"] != want[i] || obj["normalized_name"] != nil {
					t.Errorf("%s line %d: platform_hash %v normalized_name %v, want %v and null", mf.Key, i, obj["platform_hash"], obj["normalized_name"], want[i])
				}
				if _, leaked := obj["platform_id"]; leaked {
					t.Errorf("%s line %d has platform_id", mf.Key, i)
				}
				checked++
			}
		}
		for _, mf := range m.Files {
			if mf.Format != "parquet" {
				continue
			}
			prow := parseParquet(t, files[mf.Key])
			if len(prow) != len(want) {
				t.Fatalf("%s: %d rows, want %d", mf.Key, len(prow), len(want))
			}
			for i, r := range prow {
				var got any
				if r[2] != nil {
					got = *r[2]
				}
				if got != want[i] || r[1] != nil {
					t.Errorf("%s row %d: %v / %v, want %v / NULL", mf.Key, i, got, r[1], want[i])
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("nothing checked")
	}
}

// TestSchemaChangeFailsOrEvolves changes a column's type between runs.
// Pass: with on_schema_change: fail the new run is not exported and the
// error shows the diff; with evolve it is, its manifest carries the new
// fingerprint and the change, and schema.json records the history.
func TestSchemaChangeFailsOrEvolves(t *testing.T) {
	f := newFixture(t, "")
	res, files := f.Once("new-sellers")
	var first pipeline.JobSchema
	if err := json.Unmarshal(files["sellers/new/schema.json"], &first); err != nil {
		t.Fatalf("schema.json after the first export: %v", err)
	}
	if first.Fingerprint == "" || first.Fingerprint != res.Exported[0].SchemaFingerprint || len(first.History) != 0 {
		t.Fatalf("schema.json %+v, manifest fingerprint %s", first, res.Exported[0].SchemaFingerprint)
	}
	// The collector widens a column, then completes another run.
	pgtest.Exec(t, f.DBURL, `ALTER TABLE sellers ALTER COLUMN feedback_percent TYPE numeric(6,2);
		INSERT INTO collection_runs (id, org_id, status, started_at, completed_at)
			SELECT '00000000-0000-4000-8000-0000000000aa', org_id, 'completed', now() - interval '1 hour', now() FROM collection_runs LIMIT 1;
		UPDATE sellers SET first_seen_run_id = '00000000-0000-4000-8000-0000000000aa'
			WHERE id IN (SELECT s.id FROM sellers s JOIN collection_runs r ON r.id = '00000000-0000-4000-8000-0000000000aa' AND s.org_id = r.org_id LIMIT 3)`)
	f.Load("") // new connections see the new type
	res, err := f.Runner.Once(context.Background(), f.Job("new-sellers"))
	var sce *pipeline.SchemaChangeError
	if !errors.As(err, &sce) || len(res.Exported) != 0 || !strings.Contains(err.Error(), "~ feedback_percent: decimal(5, 2) → decimal(6, 2)") {
		t.Fatalf("fail: exported %d, err %v", len(res.Exported), err)
	}
	for k := range f.Files() {
		if strings.Contains(k, "0000000000aa") {
			t.Errorf("the failed export wrote %s", k)
		}
	}

	f.Load("    on_schema_change: evolve")
	res, err = f.Runner.Once(context.Background(), f.Job("new-sellers"))
	if err != nil || len(res.Exported) != 1 {
		t.Fatalf("evolve: exported %d, err %v", len(res.Exported), err)
	}
	m := res.Exported[0]
	if m.SchemaFingerprint == first.Fingerprint || len(m.SchemaChange) != 1 {
		t.Errorf("evolved manifest: fingerprint %s, change %v", m.SchemaFingerprint, m.SchemaChange)
	}
	var next pipeline.JobSchema
	if err := json.Unmarshal(f.Files()["sellers/new/schema.json"], &next); err != nil {
		t.Fatal(err)
	}
	if next.Fingerprint != m.SchemaFingerprint || len(next.History) != 1 || next.History[0].Fingerprint != first.Fingerprint || len(next.History[0].Change) != 1 {
		t.Errorf("schema.json after evolving: %+v", next)
	}
}

// TestSplitFiles splits a per_run job by rows, then by bytes. Pass:
// numbered parts in every format, each within its limit, listed in the
// manifest with their own rows and checksums, and together equal to the
// unsplit export (NDJSON parts concatenate to the unsplit file byte for
// byte; CSV parts each start with the header and their rows concatenate).
func TestSplitFiles(t *testing.T) {
	dbURL := pgtest.NewEmptyDatabase(t)
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	if err := demodata.Load(context.Background(), conn, demodata.Options{Sellers: 30000, Runs: 3, Orgs: 1}); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	export := func(extra string) (map[string][]byte, []*pipeline.Manifest) {
		dir := t.TempDir()
		f := &fixture{pipelinetest.NewOn(t, dbURL, "file://"+dir, dir, "    formats: [csv, ndjson, parquet]\n    csv: {compression: none}\n    parquet: {row_group_rows: 4096}\n"+extra)}
		res, err := f.Runner.Once(context.Background(), f.Job("new-sellers"))
		if err != nil {
			t.Fatal(err)
		}
		return f.Files(), res.Exported
	}
	plain, _ := export("")
	for _, tc := range []struct {
		name, extra string
		maxRows     int64
		maxBytes    int64
	}{
		{"rows", "    max_rows_per_file: 2000", 2000, 0},
		{"bytes", "    max_bytes_per_file: 1MiB", 0, 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			split, ms := export(tc.extra)
			parts := 0
			for _, m := range ms {
				byFormat := map[string][]pipeline.ManifestFile{}
				for _, mf := range m.Files {
					byFormat[mf.Format] = append(byFormat[mf.Format], mf)
				}
				for format, files := range byFormat {
					if tc.maxRows > 0 {
						if want := max(1, int((m.Rows+tc.maxRows-1)/tc.maxRows)); len(files) != want {
							t.Errorf("run %s %s: %d parts for %d rows, want %d", m.RunID, format, len(files), m.Rows, want)
						}
					}
					var rows int64
					var joined []byte
					for i, mf := range files {
						data := split[mf.Key]
						if mf.Part != i+1 || !strings.Contains(mf.Key, fmt.Sprintf("_part-%04d.", i+1)) {
							t.Errorf("%s: part %d", mf.Key, mf.Part)
						}
						if tc.maxRows > 0 && mf.Rows > tc.maxRows {
							t.Errorf("%s: %d rows, limit %d", mf.Key, mf.Rows, tc.maxRows)
						}
						// A part ends at the first flush past the limit: within
						// the 256 KiB text buffer (gzip, zstd: their block too),
						// or one row group for Parquet.
						if tc.maxBytes > 0 && i < len(files)-1 && (int64(len(data)) < tc.maxBytes || format != "parquet" && int64(len(data)) > tc.maxBytes+(512<<10)) {
							t.Errorf("%s: %d bytes, limit %d", mf.Key, len(data), tc.maxBytes)
						}
						sum := sha256.Sum256(data)
						if hex.EncodeToString(sum[:]) != mf.SHA256 || int64(len(data)) != mf.Bytes {
							t.Errorf("%s: checksum or size differs from the manifest", mf.Key)
						}
						rows += mf.Rows
						joined = append(joined, data...)
						parts++
					}
					if rows != m.Rows {
						t.Errorf("run %s %s: parts hold %d rows, manifest %d", m.RunID, format, rows, m.Rows)
					}
					unsplit, ok := plain[strings.Replace(files[0].Key, "_part-0001", "", 1)]
					if !ok {
						t.Fatalf("no unsplit file for %s", files[0].Key)
					}
					switch format {
					case "ndjson":
						if !bytes.Equal(joined, unsplit) {
							t.Errorf("run %s: NDJSON parts do not concatenate to the unsplit file", m.RunID)
						}
					case "csv":
						header, ub, _ := bytes.Cut(unsplit, []byte("\n"))
						var body []byte
						for _, mf := range files {
							h, rest, _ := bytes.Cut(split[mf.Key], []byte("\n"))
							if !bytes.Equal(h, header) {
								t.Errorf("%s: header %q", mf.Key, h)
							}
							body = append(body, rest...)
						}
						if !bytes.Equal(body, ub) {
							t.Errorf("run %s: CSV parts' rows differ from the unsplit file", m.RunID)
						}
					case "parquet":
						var all [][]*string
						for _, mf := range files {
							all = append(all, parseParquet(t, split[mf.Key])...)
						}
						if !reflect.DeepEqual(all, parseParquet(t, unsplit)) {
							t.Errorf("run %s: Parquet parts' rows differ from the unsplit file", m.RunID)
						}
					}
				}
			}
			if parts < 3*len(ms)+3 {
				t.Errorf("only %d parts for %d runs", parts, len(ms))
			}
			t.Logf("%d parts for %d runs", parts, len(ms))
		})
	}
}

// TestPerFormatColumnsAndQuoteAll: CSV drops a column and quotes every
// field, Parquet keeps two columns, NDJSON keeps all. Pass: each file has
// exactly its columns (manifest lists them for the subsets), CSV fields
// are quoted except NULLs.
func TestPerFormatColumnsAndQuoteAll(t *testing.T) {
	f := newFixture(t, "    formats: [csv, ndjson, parquet]\n    csv: {exclude: [normalized_name], quote_all: true, formula_guard: false}\n    parquet: {include: [display_name, created_at]}")
	res, files := f.Once("new-sellers")
	checked := 0
	for _, m := range res.Exported {
		if m.Rows == 0 {
			continue
		}
		for _, mf := range m.Files {
			data := files[mf.Key]
			switch mf.Format {
			case "csv":
				header, body, _ := strings.Cut(string(data), "\n")
				want := `"display_name","platform","platform_id","times_seen","feedback_percent","feedback_count","flagged","created_at"`
				if header != want || strings.Join(mf.Columns, ",") != strings.ReplaceAll(want, `"`, "") {
					t.Errorf("%s: header %s, manifest columns %v", mf.Key, header, mf.Columns)
				}
				recs, err := csv.NewReader(strings.NewReader(string(data))).ReadAll()
				if err != nil || int64(len(recs)-1) != m.Rows {
					t.Fatalf("%s: %d records (%v)", mf.Key, len(recs), err)
				}
				// Every non-empty field is quoted: a line has 2 quotes per
				// non-NULL field at least; check the times_seen field (never NULL).
				line, _, _ := strings.Cut(body, "\n")
				if !strings.HasPrefix(line, `"`) || !regexp.MustCompile(`,"-?\d+",`).MatchString(line) {
					t.Errorf("%s: first row not quoted: %s", mf.Key, line)
				}
			case "ndjson":
				if mf.Columns != nil || !strings.Contains(string(data), `"normalized_name":`) {
					t.Errorf("%s: ndjson lost columns (%v)", mf.Key, mf.Columns)
				}
			case "parquet":
				pf, err := file.NewParquetReader(bytes.NewReader(data))
				if err != nil {
					t.Fatal(err)
				}
				if n := pf.MetaData().Schema.NumColumns(); n != 2 || strings.Join(mf.Columns, ",") != "display_name,created_at" {
					t.Errorf("%s: %d columns, manifest %v", mf.Key, n, mf.Columns)
				}
				pf.Close()
			}
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("nothing checked")
	}
}

// TestManifestOfAnotherJobIsAConflict: a second job (another deployment,
// or a config written before jobs were checked for shared keys) that finds
// the first job's manifests at its own keys must fail those units loudly,
// never count them as exported, and never overwrite them on a rerun.
func TestManifestOfAnotherJobIsAConflict(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	first, _ := f.Once("new-sellers")
	if len(first.Exported) == 0 {
		t.Fatal("nothing exported")
	}
	if _, err := f.Runner.Once(ctx, f.Job("full-nightly")); err != nil {
		t.Fatal(err)
	}
	before := f.Files()

	for _, name := range []string{"new-sellers", "full-nightly"} {
		other := *f.Job(name)
		other.Name = "other-" + name
		res, err := f.Runner.Once(ctx, &other)
		var conflict *pipeline.ConflictError
		if !errors.As(err, &conflict) || conflict.OtherJob != name || conflict.Job != other.Name {
			t.Fatalf("%s: Once = %+v, %v; want a ConflictError naming job %s", other.Name, res, err, name)
		}
		if len(res.Exported) != 0 || res.Failed == 0 {
			t.Errorf("%s: exported %d, failed %d; want 0 exported and every unit failed", other.Name, len(res.Exported), res.Failed)
		}
		plan, err := f.Runner.Plan(ctx, &other)
		if err != nil || len(plan) == 0 {
			t.Errorf("%s: plan = %d units, %v; want the conflicting units listed as pending", other.Name, len(plan), err)
		}
	}
	other := *f.Job("new-sellers")
	other.Name = "other"
	if _, err := f.Runner.RerunRun(ctx, &other, first.Exported[0].RunID); !errors.As(err, new(*pipeline.ConflictError)) {
		t.Errorf("rerun over another job's unit: %v, want a ConflictError", err)
	}
	after := f.Files()
	if len(after) != len(before) {
		t.Errorf("%d files before, %d after", len(before), len(after))
	}
	for k, v := range before {
		if !bytes.Equal(after[k], v) {
			t.Errorf("%s changed", k)
		}
	}
}

// TestAPanicFailsItsUnitOnly: a panic in an export's own goroutine (here
// just before its first commit) fails that unit with a *PanicError naming
// it; the other units of the pass are exported, and the next pass
// exports the failed one.
func TestAPanicFailsItsUnitOnly(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	plan, err := f.Runner.Plan(ctx, job)
	if err != nil || len(plan) < 2 {
		t.Fatalf("plan: %d units, %v; want 2 or more", len(plan), err)
	}
	panicked := false
	pipeline.SetBeforeCommit(f.Runner, func() {
		if !panicked {
			panicked = true
			panic("failed to write magic number")
		}
	})
	res, err := f.Runner.Once(ctx, job)
	var pe *pipeline.PanicError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), plan[0].RunID) {
		t.Fatalf("err = %v; want a PanicError naming run %s", err, plan[0].RunID)
	}
	if res.Failed != 1 || len(res.Exported) != len(plan)-1 {
		t.Errorf("failed %d, exported %d; want 1 and %d", res.Failed, len(res.Exported), len(plan)-1)
	}
	res, err = f.Runner.Once(ctx, job)
	if err != nil || len(res.Exported) != 1 || res.Exported[0].RunID != plan[0].RunID {
		t.Errorf("next pass: %+v, %v; want run %s exported", res, err, plan[0].RunID)
	}
}

// TestSellersAddedAfterExportAreReported: sellers inserted for a run after
// its export (a collector breaking the source contract) leave the
// published files as they are, plan still says nothing is pending, and
// Verify and Recount report the run with both counts.
func TestSellersAddedAfterExportAreReported(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	res, err := f.Runner.Once(ctx, job)
	if err != nil || len(res.Exported) == 0 {
		t.Fatalf("once: %+v, %v", res, err)
	}
	m := res.Exported[0]
	pgtest.Exec(t, f.DBURL, `INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
		SELECT gen_random_uuid(), $1, 'Late ' || g, 'late ' || g, 'ebay', 1, false, $2, now() FROM generate_series(1, 3) g`, m.OrgID, m.RunID)
	if plan, err := f.Runner.Plan(ctx, job); err != nil || len(plan) != 0 {
		t.Errorf("plan: %d pending, %v; a run with a manifest is not pending", len(plan), err)
	}
	mm, checked, err := f.Runner.Verify(ctx, job, time.Now().AddDate(-5, 0, 0), time.Now().AddDate(0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	if checked != len(res.Exported) || len(mm) != 1 || mm[0].RunID != m.RunID || mm[0].Published != m.Rows || mm[0].Now != m.Rows+3 {
		t.Errorf("verify: %d checked, %+v; want run %s with %d → %d rows", checked, mm, m.RunID, m.Rows, m.Rows+3)
	}
	rc, err := f.Runner.Recount(ctx, job, []pipeline.Export{pipeline.ExportOf(m, "k"), pipeline.ExportOf(res.Exported[1], "k2")})
	if err != nil || len(rc) != 1 || rc[0].RunID != m.RunID {
		t.Errorf("recount: %+v, %v", rc, err)
	}
}

// TestADroppedColumnIsSchemaDrift: a column the job reads, dropped after
// the job was compiled, fails the export as schema drift naming the
// column (reason "schema"), not as a raw database error.
func TestADroppedColumnIsSchemaDrift(t *testing.T) {
	f := newFixture(t, "")
	job := f.Job("new-sellers")
	pgtest.Exec(t, f.DBURL, `ALTER TABLE sellers DROP COLUMN feedback_count`)
	_, err := f.Runner.Once(context.Background(), job)
	if err == nil {
		t.Fatal("an export without a column it reads succeeded")
	}
	if got := pipeline.FailureReason(err); got != "schema" {
		t.Errorf("reason %q, want schema: %v", got, err)
	}
	if !strings.Contains(err.Error(), "feedback_count") || strings.Contains(err.Error(), "SQLSTATE") {
		t.Errorf("error %v; want it to name feedback_count as schema drift", err)
	}
}

// backlogs records the Observer's backlog reports.
type backlogs struct {
	*stopAfter
	mu   sync.Mutex
	last [2]int64 // units, oldest age in seconds
}

func (b *backlogs) Backlog(_ string, n int, oldest time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.last = [2]int64{int64(n), int64(oldest.Seconds())}
}

// TestBacklogGaugesTellTheTruth: after a pass whose one unit failed, the
// backlog is 1 and its age that run's (not 0); RefreshBacklog shows a run
// completed since, without a pass, and 0 once it is exported.
func TestBacklogGaugesTellTheTruth(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	obs := &backlogs{stopAfter: &stopAfter{n: -1}}
	f.Runner.Observer = obs
	f.Runner.Now = time.Now
	if _, err := f.Runner.Once(ctx, job); err != nil {
		t.Fatal(err)
	}
	id := lateRun(t, f.DBURL, "collection_runs", f.AnyOrg(), 3) // completed 3 h ago
	if err := f.Runner.RefreshBacklog(ctx, job); err != nil {
		t.Fatal(err)
	}
	if obs.last[0] != 1 {
		t.Errorf("after a run completed without a pass: backlog %d, want 1", obs.last[0])
	}
	pipeline.SetBeforeCommit(f.Runner, func() { panic("fail this unit") })
	if _, err := f.Runner.Once(ctx, job); err == nil {
		t.Fatal("the unit did not fail")
	}
	run, err := f.Src.RunByID(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(f.Runner.Now().Sub(run.CompletedAt).Seconds()); obs.last[0] != 1 || obs.last[1] < want-60 || obs.last[1] > want {
		t.Errorf("after a failed pass: backlog %d, oldest %d s; want 1 and %d s", obs.last[0], obs.last[1], want)
	}
	pipeline.SetBeforeCommit(f.Runner, nil)
	if _, err := f.Runner.Once(ctx, job); err != nil {
		t.Fatal(err)
	}
	if err := f.Runner.RefreshBacklog(ctx, job); err != nil || obs.last != [2]int64{0, 0} {
		t.Errorf("after the export: %v, %v; want 0 and 0", obs.last, err)
	}
}
