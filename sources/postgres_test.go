package sources_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/jackc/pgx/v5"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/sources"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const edgeTable = `
CREATE TABLE edge (
	id uuid PRIMARY KEY, org_id uuid, first_seen_run_id uuid, deleted_at timestamptz,
	flagged bool NOT NULL DEFAULT false, created_at timestamptz NOT NULL,
	n52 numeric(5,2), n380 numeric(38,0), n3810 numeric(38,10), n184 numeric(18,4), nfree numeric,
	ts timestamptz, tsn timestamp, d date, i2 int2, i4 int4, i8 int8, b bool, f8 float8,
	t text, vc varchar(10), j jsonb, u uuid
);`

// Each row: n52, n380, n3810, n184, nfree, ts, tsn, d, i2, i4, i8, t
var edgeRows = [][]string{
	{"99.50", "99999999999999999999999999999999999999", "9999999999999999999999999999.9999999999", "99999999999999.9999", "0.000000000000000000000000001", "1969-12-31 23:59:59.999999+00", "0001-01-01 00:00:00", "1900-02-28", "32767", "2147483647", "9223372036854775807", "a,b\r\n\"c\""},
	{"-999.99", "-99999999999999999999999999999999999999", "-0.0000000001", "-0.0001", "-123456789012345678901234567890.123456789", "2262-04-12 00:00:00.000001+00", "9999-12-31 23:59:59.999999", "0001-01-01", "-32768", "-2147483648", "-9223372036854775808", ""},
	{"0.00", "0", "0", "0", "0", "1970-01-01 00:00:00+00", "1970-01-01 00:00:00", "1970-01-01", "0", "0", "0", "🛍️ zwj\u200d"},
	{"0.01", "10000", "1.5", "10000.0001", "100000000", "2026-03-01 01:01:00.000001+00", "2000-01-01 00:00:00", "2000-01-01", "1", "1", "1", "NULL"},
	{"NaN", "1", "1", "1", "NaN", "infinity", "-infinity", "infinity", "1", "1", "1", "x"},
}

func openSource(t *testing.T, url string, table string) *sources.Postgres {
	t.Helper()
	src, err := sources.Open(context.Background(), sources.Config{DSN: url, SellersTable: table})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Close)
	return src
}

func TestDecodeMatchesPostgres(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	pgtest.Exec(t, url, edgeTable)
	for i, r := range edgeRows {
		pgtest.Exec(t, url, `INSERT INTO edge (id, created_at, n52, n380, n3810, n184, nfree, ts, tsn, d, i2, i4, i8, t, b, f8, vc, j, u)
			VALUES (gen_random_uuid(), now() - $1 * interval '1 s', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 'vc', '{"a": [1, "b"]}', gen_random_uuid())`,
			i, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], i%2 == 0, float64(i)/3)
	}
	src := openSource(t, url, "edge")
	cols := []string{"n52", "n380", "n3810", "n184", "nfree", "ts", "tsn", "d", "i2", "i4", "i8", "t", "b", "f8", "vc", "j", "u"}
	got := readAll(t, src, sources.Query{Columns: cols}, sources.ReadOptions{BatchRows: 2})

	// What PostgreSQL says, in the same order: unscaled decimals, epoch
	// microseconds, epoch days, and text.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT
		(nullif(n52,'NaN')*100)::numeric(60,0)::text, (n380)::text, (n3810*10000000000)::numeric(60,0)::text, (n184*10000)::numeric(60,0)::text, nfree::text,
		CASE WHEN isfinite(ts) THEN (extract(epoch from ts)*1000000)::int8::text END,
		CASE WHEN isfinite(tsn) THEN (extract(epoch from tsn)*1000000)::int8::text END,
		CASE WHEN isfinite(d) THEN (d - date '1970-01-01')::text END,
		i2::text, i4::text, i8::text, t, b::text, f8::text, vc, j::text, u::text
		FROM edge WHERE deleted_at IS NULL AND org_id IS NULL ORDER BY created_at DESC, id DESC`)
	if err != nil {
		t.Fatal(err)
	}
	want, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]*string, error) {
		vals := make([]*string, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		return vals, r.Scan(ptrs...)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d rows, want %d", len(got), len(want))
	}
	for i := range want {
		for j, c := range cols {
			w := "NULL"
			if want[i][j] != nil {
				w = *want[i][j]
			}
			if c == "f8" && w != "NULL" {
				w = strings.TrimSuffix(w, "0") // float text forms differ in trailing digits only
			}
			g := got[i][j]
			if c == "f8" {
				g = strings.TrimSuffix(g, "0")
			}
			if c == "nfree" && w == "NaN" {
				w = "NaN"
			}
			if g != w {
				t.Errorf("row %d column %s: got %q, want %q", i, c, g, w)
			}
		}
	}
}

// readAll reads every record and renders each value as a comparable
// string: decimals unscaled, timestamps in epoch µs, dates in epoch days.
func readAll(t *testing.T, src *sources.Postgres, q sources.Query, opts sources.ReadOptions) [][]string {
	t.Helper()
	ctx := context.Background()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	opts.Allocator = mem
	snap, err := src.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close(ctx)
	rd, err := snap.Sellers(ctx, q, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	var out [][]string
	for {
		rec, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if opts.BatchRows > 0 && int(rec.NumRows()) > opts.BatchRows {
			t.Errorf("record has %d rows, batch size %d", rec.NumRows(), opts.BatchRows)
		}
		for r := 0; r < int(rec.NumRows()); r++ {
			row := make([]string, rec.NumCols())
			for c, col := range rec.Columns() {
				row[c] = render(col, r)
			}
			out = append(out, row)
		}
		rec.Release()
	}
	return out
}

func render(a arrow.Array, i int) string {
	if a.IsNull(i) {
		return "NULL"
	}
	switch a := a.(type) {
	case *array.Decimal128:
		return a.Value(i).BigInt().String()
	case *array.Timestamp:
		return fmt.Sprint(int64(a.Value(i)))
	case *array.Date32:
		return fmt.Sprint(int32(a.Value(i)))
	case *array.Float64:
		return fmt.Sprint(a.Value(i))
	default:
		return a.ValueStr(i)
	}
}

func TestNaNAndInfinityBecomeNullAndAreCounted(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	pgtest.Exec(t, url, edgeTable)
	pgtest.Exec(t, url, `INSERT INTO edge (id, created_at, n52, ts) VALUES
		(gen_random_uuid(), now(), 'NaN', 'infinity'), (gen_random_uuid(), now(), 'NaN', '-infinity'), (gen_random_uuid(), now(), 1, now())`)
	src := openSource(t, url, "edge")
	snap, err := src.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close(ctx)
	rd, err := snap.Sellers(ctx, sources.Query{Columns: []string{"n52", "ts"}}, sources.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for {
		rec, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		rec.Release()
	}
	got := fmt.Sprint(rd.Nulled())
	want := "[{n52 NaN 2} {ts infinity 1} {ts -infinity 1}]"
	if got != want {
		t.Fatalf("nulled = %s, want %s", got, want)
	}
}

func TestInfinityInNotNullColumnIsAnErrorNamingSellerAndColumn(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	pgtest.Exec(t, url, edgeTable)
	pgtest.Exec(t, url, `INSERT INTO edge (id, created_at) VALUES ('11111111-2222-3333-4444-555555555555', 'infinity')`)
	src := openSource(t, url, "edge")
	snap, err := src.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close(ctx)
	rd, err := snap.Sellers(ctx, sources.Query{Columns: []string{"created_at"}}, sources.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	_, err = rd.Next()
	var ve *sources.ValueError
	if !errors.As(err, &ve) || ve.SellerID != "11111111-2222-3333-4444-555555555555" || ve.Column != "created_at" {
		t.Fatalf("err = %v, want a ValueError naming the seller and created_at", err)
	}
}

func TestCheckNamesUnknownAndUnsupportedColumns(t *testing.T) {
	url := pgtest.NewDatabase(t)
	pgtest.Exec(t, url, `ALTER TABLE sellers ADD COLUMN tags text[]`)
	src := openSource(t, url, "")
	err := src.Check(context.Background(), []string{"display_name", "no_such_column", "tags"})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{`"no_such_column" does not exist`, `"tags" has type _text`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if err := src.Check(context.Background(), []string{"display_name", "created_at"}); err != nil {
		t.Errorf("valid columns: %v", err)
	}
}

func TestCompletedRunsOldestFirstAndOnlyCompleted(t *testing.T) {
	url := pgtest.NewDatabase(t)
	src := openSource(t, url, "")
	runs, err := src.CompletedRuns(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) == 0 {
		t.Fatal("no runs")
	}
	for i, r := range runs {
		if r.Status != "completed" || r.CompletedAt.IsZero() {
			t.Errorf("run %s has status %q", r.ID, r.Status)
		}
		if i > 0 && r.CompletedAt.Before(runs[i-1].CompletedAt) {
			t.Errorf("runs out of order at %d", i)
		}
	}
	failed := runs[0].ID
	pgtest.Exec(t, url, `UPDATE collection_runs SET status = 'failed' WHERE id = $1`, failed)
	_, err = src.RunByID(context.Background(), failed)
	var nc *sources.RunNotCompletedError
	if !errors.As(err, &nc) {
		t.Errorf("RunByID(failed run) = %v, want RunNotCompletedError", err)
	}
	_, err = src.RunByID(context.Background(), "00000000-0000-0000-0000-000000000000")
	if !errors.Is(err, sources.ErrRunNotFound) {
		t.Errorf("RunByID(unknown) = %v", err)
	}
}

func TestStatementTimeoutFires(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	pgtest.Exec(t, url, `CREATE FUNCTION slow(uuid) RETURNS bool LANGUAGE plpgsql VOLATILE AS $$ BEGIN PERFORM pg_sleep(0.01); RETURN true; END $$;
		CREATE VIEW slow_sellers AS SELECT * FROM sellers WHERE slow(id)`)
	src, err := sources.Open(ctx, sources.Config{DSN: url, SellersTable: "slow_sellers", StatementTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	snap, err := src.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close(ctx)
	orgs, err := snap.Orgs(ctx, sources.Filter{})
	if err == nil || !strings.Contains(err.Error(), "statement timeout") {
		t.Fatalf("orgs=%v err=%v, want statement timeout", orgs, err)
	}
}

func TestAdvisoryLocksExcludeOtherSessions(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	a, b := openSource(t, url, ""), openSource(t, url, "")
	la, ok, err := a.TryLock(ctx, "run:j:1")
	if err != nil || !ok {
		t.Fatalf("first lock: %v %v", ok, err)
	}
	if _, ok, err := b.TryLock(ctx, "run:j:1"); err != nil || ok {
		t.Fatalf("second session got a held lock: %v %v", ok, err)
	}
	if lb, ok, err := b.TryLock(ctx, "run:j:2"); err != nil || !ok {
		t.Fatalf("another key: %v %v", ok, err)
	} else {
		lb.Unlock()
	}
	la.Unlock()
	lb, ok, err := b.TryLock(ctx, "run:j:1")
	if err != nil || !ok {
		t.Fatalf("after unlock: %v %v", ok, err)
	}
	lb.Unlock()
}

// TestRunDigestsFollowEveryChange: the digests stay put while nothing
// changes (reads, other tables, VACUUM, a statistics reset), and move on
// every change to the completed runs a statistic can miss: a deletion
// paired with an insertion on the same day, a run moved to another org or
// time, a run in a table inheriting from the runs table; and through a
// view.
func TestRunDigestsFollowEveryChange(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	digests := func(src *sources.Postgres) map[string]sources.RunDigest {
		t.Helper()
		snap, err := src.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer snap.Close(ctx)
		far := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
		days, err := snap.DayDigests(ctx, 7, time.Time{}, far)
		if err != nil {
			t.Fatal(err)
		}
		total, err := snap.RunsDigest(ctx, 7, far)
		if err != nil {
			t.Fatal(err)
		}
		sum := sources.RunDigest{Sum: "0"}
		for _, d := range days {
			sum = sum.Add(d)
		}
		if sum != total {
			t.Fatalf("the days add up to %v, the total is %v", sum, total)
		}
		return days
	}
	src := openSource(t, url, "")
	first := digests(src)
	if len(first) == 0 {
		t.Fatal("no digests")
	}
	pgtest.Exec(t, url, `UPDATE sellers SET times_seen = times_seen + 1 WHERE id = (SELECT id FROM sellers LIMIT 1)`)
	pgtest.Exec(t, url, `VACUUM ANALYZE collection_runs`)
	pgtest.Exec(t, url, `SELECT pg_stat_reset_single_table_counters('collection_runs'::regclass)`)
	if d := digests(src); !maps.Equal(d, first) {
		t.Errorf("digests moved with no change to the runs: %v → %v", first, d)
	}
	prev := first
	for _, change := range []string{
		// Count-neutral: one run of a day deleted, another inserted on it.
		`WITH gone AS (DELETE FROM collection_runs WHERE id = (SELECT id FROM collection_runs WHERE status = 'completed' ORDER BY completed_at LIMIT 1) RETURNING org_id, completed_at)
		 INSERT INTO collection_runs SELECT gen_random_uuid(), org_id, 'completed', completed_at, completed_at + interval '1 second' FROM gone`,
		`UPDATE collection_runs SET org_id = gen_random_uuid() WHERE id = (SELECT id FROM collection_runs WHERE status = 'completed' ORDER BY completed_at DESC LIMIT 1)`,
		`UPDATE collection_runs SET completed_at = completed_at + interval '1 microsecond' WHERE id = (SELECT id FROM collection_runs WHERE status = 'completed' ORDER BY completed_at DESC LIMIT 1)`,
		`UPDATE collection_runs SET status = 'failed' WHERE id = (SELECT id FROM collection_runs WHERE status = 'completed' ORDER BY completed_at LIMIT 1)`,
		`CREATE TABLE collection_runs_legacy () INHERITS (collection_runs);
		 INSERT INTO collection_runs_legacy SELECT gen_random_uuid(), org_id, 'completed', completed_at, completed_at FROM collection_runs WHERE status = 'completed' LIMIT 1`,
	} {
		pgtest.Exec(t, url, change)
		d := digests(src)
		if maps.Equal(d, prev) {
			t.Errorf("digests unchanged after %.60s…", change)
		}
		prev = d
	}

	pgtest.Exec(t, url, `CREATE VIEW runs_view AS SELECT * FROM collection_runs`)
	view, err := sources.Open(ctx, sources.Config{DSN: url, RunsTable: "runs_view"})
	if err != nil {
		t.Fatal(err)
	}
	defer view.Close()
	if d := digests(view); !maps.Equal(d, prev) {
		t.Errorf("a view of the runs: digests %v, want the table's %v", d, prev)
	}
}
