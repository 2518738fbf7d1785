// Package demodata creates the upstream collector's schema and fills it with
// deterministic demo data: N sellers over M collection runs and K orgs, with
// the values exports get wrong (commas, quotes, CR/LF, unicode, formula
// payloads, NULL next to "", int32 extremes, pre-1970 timestamps, ties in
// created_at), soft deletes, and failed and running runs.
//
// The same Options and seed always give the same rows, so tests, the demo
// and the benchmark all see identical data.
package demodata

import (
	"context"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Schema is the collector's DDL for collection_runs and sellers.
const Schema = `
CREATE TABLE collection_runs (
	id           uuid PRIMARY KEY,
	org_id       uuid,
	status       text,
	started_at   timestamptz,
	completed_at timestamptz
);
CREATE TABLE sellers (
	id                uuid PRIMARY KEY,
	org_id            uuid,
	display_name      text NOT NULL,
	normalized_name   text NOT NULL,
	platform          text NOT NULL,
	platform_id       text,
	feedback_score    int,
	feedback_percent  numeric(5,2),
	feedback_count    int,
	times_seen        int NOT NULL,
	flagged           bool NOT NULL,
	first_seen_run_id uuid,
	last_seen_run_id  uuid,
	created_at        timestamptz NOT NULL,
	updated_at        timestamptz,
	deleted_at        timestamptz
);
CREATE INDEX sellers_first_seen_run_idx ON sellers (first_seen_run_id, created_at DESC, id DESC);
CREATE INDEX sellers_org_created_idx ON sellers (org_id, created_at DESC, id DESC);
`

// Options size the data set. Zero fields take the defaults in brackets.
type Options struct {
	Sellers int    // [2000]
	Runs    int    // [12]
	Orgs    int    // [3]
	Seed    uint64 // [1]
}

func (o Options) withDefaults() Options {
	if o.Sellers == 0 {
		o.Sellers = 2000
	}
	if o.Runs == 0 {
		o.Runs = 12
	}
	if o.Orgs == 0 {
		o.Orgs = 3
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	return o
}

// Base is the started_at of the first demo run.
var Base = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

// Run is one generated collection run.
type Run struct {
	ID          [16]byte
	OrgID       [16]byte
	Status      string
	StartedAt   time.Time
	CompletedAt *time.Time
}

// Runs returns the runs Load inserts. Run 1 is completed but finds no
// sellers, every 7th run (6, 13, …) failed, and the last one is still
// running.
func Runs(opts Options) []Run {
	opts = opts.withDefaults()
	rng := rand.New(rand.NewPCG(opts.Seed, 0x5e11e25))
	orgs := make([][16]byte, opts.Orgs)
	for i := range orgs {
		orgs[i] = uuid(rng)
	}
	runs := make([]Run, opts.Runs)
	for i := range runs {
		r := Run{ID: uuid(rng), OrgID: orgs[i%opts.Orgs], Status: "completed"}
		r.StartedAt = Base.Add(time.Duration(i) * 7 * time.Hour)
		done := r.StartedAt.Add(17*time.Minute + time.Duration(i)*time.Second + 123456*time.Microsecond)
		r.CompletedAt = &done
		switch {
		case i == opts.Runs-1 && opts.Runs > 1:
			r.Status, r.CompletedAt = "running", nil
		case i%7 == 6:
			r.Status = "failed"
		}
		runs[i] = r
	}
	return runs
}

// Hostile holds the text values exports get wrong; the generator uses them
// for display names and platform ids.
var Hostile = []string{
	"Comma, Inc.",
	`Quote "The Best" Store`,
	"Line\nBreak",
	"Carriage\rReturn",
	"CRLF\r\nStore",
	"Tab\tSeparated",
	`Back\slash \N`,
	"  leading and trailing  ",
	"NULL",
	"null",
	`{"json": "looking", "n": 1}`,
	"<script>alert('x')</script>&amp;",
	"Emoji 🛍️ Shop 👩‍👩‍👧",
	"متجر عربي",
	"Zero\u200dWidth\u200bJoiner",
	"=SUM(A1:A2)",
	"+1 555 0100",
	"-2+3+cmd|' /C calc'!A0",
	"@mention",
	"\tTabLead",
	"\rCRLead",
	"Ünïcödé Straße",
	"日本の店",
	"\u2028line separator\u2029",
	"'already quoted",
	`""`,
	// OWASP CSV injection: payloads that try to escape the cell with
	// quotes and separators, and a fullwidth equals sign.
	`=1+2";=1+2`,
	`=1+2'" ;,=1+2`,
	"＝1+1",
	"a,=1+1",
}

// Load creates the schema in the database conn points at and inserts the
// demo data. The database must be empty.
func Load(ctx context.Context, conn *pgx.Conn, opts Options) error {
	opts = opts.withDefaults()
	if _, err := conn.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("create schema: %w", err)
	}
	runs := Runs(opts)
	runRows := make([][]any, len(runs))
	for i, r := range runs {
		var done any
		if r.CompletedAt != nil {
			done = *r.CompletedAt
		}
		runRows[i] = []any{pgtype.UUID{Bytes: r.ID, Valid: true}, pgtype.UUID{Bytes: r.OrgID, Valid: true}, r.Status, r.StartedAt, done}
	}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"collection_runs"},
		[]string{"id", "org_id", "status", "started_at", "completed_at"}, pgx.CopyFromRows(runRows)); err != nil {
		return fmt.Errorf("copy collection_runs: %w", err)
	}
	g := &sellerGen{opts: opts, runs: runs, rng: rand.New(rand.NewPCG(opts.Seed, 0x5e11e7))}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"sellers"}, SellerColumns, g); err != nil {
		return fmt.Errorf("copy sellers: %w", err)
	}
	if _, err := conn.Exec(ctx, "ANALYZE"); err != nil {
		return fmt.Errorf("analyze: %w", err)
	}
	return nil
}

// SellerColumns are the sellers columns in table order.
var SellerColumns = []string{"id", "org_id", "display_name", "normalized_name", "platform", "platform_id",
	"feedback_score", "feedback_percent", "feedback_count", "times_seen", "flagged",
	"first_seen_run_id", "last_seen_run_id", "created_at", "updated_at", "deleted_at"}

type sellerGen struct {
	opts    Options
	runs    []Run
	rng     *rand.Rand
	i       int
	row     []any
	created time.Time
}

func (g *sellerGen) Next() bool {
	if g.i >= g.opts.Sellers {
		return false
	}
	g.row = g.make(g.i)
	g.i++
	return true
}

func (g *sellerGen) Values() ([]any, error) { return g.row, nil }
func (g *sellerGen) Err() error             { return nil }

func (g *sellerGen) make(i int) []any {
	rng := g.rng
	// Run 1 stays empty; every other run (failed and running ones too) finds sellers.
	ri := rng.IntN(len(g.runs))
	if ri == 1 && len(g.runs) > 2 {
		ri = 0
	}
	run := g.runs[ri]

	var name string
	switch {
	case i == 7:
		name = "Huge " + strings.Repeat("ß€𝄞x", 100*1024/10)
	case rng.IntN(4) == 0:
		name = Hostile[rng.IntN(len(Hostile))]
	default:
		name = fmt.Sprintf("Seller %d %s", i, []string{"Shop", "Store", "Outlet", "Händler", "店"}[rng.IntN(5)])
	}
	normalized := strings.ToLower(strings.TrimSpace(name))

	var platformID any
	switch p := rng.IntN(20); {
	case p == 0:
		platformID = nil
	case p == 1:
		platformID = ""
	case p == 2:
		platformID = Hostile[rng.IntN(len(Hostile))]
	default:
		platformID = fmt.Sprintf("P%08d", i)
	}

	score := nullableInt(rng, int32(rng.IntN(100000)))
	count := nullableInt(rng, int32(rng.IntN(1000000)))
	if i%97 == 3 {
		score, count = int32(math.MaxInt32), int32(math.MinInt32)
	}
	if i%97 == 4 {
		score, count = int32(math.MinInt32), int32(math.MaxInt32)
	}
	var percent any
	switch p := rng.IntN(25); {
	case p == 0:
		percent = nil
	case p == 1:
		percent = pgtype.Numeric{Int: bigInt(99999), Exp: -2, Valid: true} // 999.99
	case p == 2:
		percent = pgtype.Numeric{Int: bigInt(-99999), Exp: -2, Valid: true}
	case p == 3:
		percent = pgtype.Numeric{Int: bigInt(0), Exp: 0, Valid: true}
	default:
		percent = pgtype.Numeric{Int: bigInt(int64(rng.IntN(10001))), Exp: -2, Valid: true}
	}
	times := int32(1 + rng.IntN(50))
	if i%211 == 5 {
		times = math.MaxInt32
	}

	// created_at: mostly after the run started, with ties (every 5th seller
	// repeats the previous timestamp) and a few before 1970.
	switch {
	case i%5 == 4 && i > 0:
		// keep g.created: a tie with the previous seller
	case i%301 == 11:
		g.created = time.Date(1969, 12, 31, 23, 59, 59, 999999000, time.UTC)
	case i%301 == 12:
		g.created = time.Date(1900, 1, 1, 0, 0, 0, 1000, time.UTC)
	default:
		g.created = run.StartedAt.Add(time.Duration(rng.Int64N(int64(6*time.Hour))) / time.Microsecond * time.Microsecond)
	}
	var updated, deleted any
	if rng.IntN(3) == 0 {
		updated = g.created.Add(time.Hour)
	}
	if rng.IntN(20) == 0 {
		deleted = g.created.Add(2 * time.Hour)
	}
	last := g.runs[min(ri+rng.IntN(3), len(g.runs)-1)]
	return []any{
		pgtype.UUID{Bytes: uuid(rng), Valid: true},
		pgtype.UUID{Bytes: run.OrgID, Valid: true},
		name, normalized,
		[]string{"ebay", "amazon", "etsy"}[rng.IntN(3)],
		platformID, score, percent, count, times,
		rng.IntN(10) == 0,
		pgtype.UUID{Bytes: run.ID, Valid: true},
		pgtype.UUID{Bytes: last.ID, Valid: true},
		g.created, updated, deleted,
	}
}

func nullableInt(rng *rand.Rand, v int32) any {
	if rng.IntN(12) == 0 {
		return nil
	}
	return v
}

func uuid(rng *rand.Rand) [16]byte {
	var u [16]byte
	for i := 0; i < 16; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8; j++ {
			u[i+j] = byte(v >> (8 * j))
		}
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}

func bigInt(v int64) *big.Int { return big.NewInt(v) }
