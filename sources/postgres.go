package sources

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Defaults for Config.
const (
	DefaultSchema          = "public"
	DefaultRunsTable       = "collection_runs"
	DefaultSellersTable    = "sellers"
	DefaultCompletedStatus = "completed"
)

// Config says where the collector's tables are. Zero fields take the
// defaults above.
type Config struct {
	// DSN is a libpq connection string or URL. It is never logged.
	DSN             string
	Schema          string
	RunsTable       string
	SellersTable    string
	CompletedStatus string
	// StatementTimeout bounds every statement of an export (SET LOCAL
	// statement_timeout). Zero means no limit.
	StatementTimeout time.Duration
	// MaxConns bounds the connection pool. Default 8 (an export holds one,
	// its snapshot, and borrows one to check its lock).
	MaxConns int32
	// Conns is how many connections Open establishes, all at once, before
	// it returns; default 1. An export needs two: opening them in parallel
	// saves one connection setup (a backend start and authentication, ~10
	// ms on loopback, more across a network) from every short export.
	Conns int
	// Lazy makes Open connect nothing: the first query does. The daemon
	// opens its pool so, to start (and serve its metrics) while the
	// database is down.
	Lazy bool
}

func (c Config) withDefaults() Config {
	if c.Schema == "" {
		c.Schema = DefaultSchema
	}
	if c.RunsTable == "" {
		c.RunsTable = DefaultRunsTable
	}
	if c.SellersTable == "" {
		c.SellersTable = DefaultSellersTable
	}
	if c.CompletedStatus == "" {
		c.CompletedStatus = DefaultCompletedStatus
	}
	if c.MaxConns == 0 {
		c.MaxConns = 8
	}
	c.Conns = min(max(c.Conns, 1), int(c.MaxConns))
	return c
}

// runIDPattern is a collection run id: a UUID, with or without its
// hyphens, in either case (as PostgreSQL's uuid input reads it).
var runIDPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)

// IsRunID reports whether s can be a collection run id (a UUID).
func IsRunID(s string) bool { return runIDPattern.MatchString(s) }

// ErrRunNotFound is returned for a run id that is not in the runs table.
var ErrRunNotFound = errors.New("collection run not found")

// RunNotCompletedError is returned when asked to export a run that is not
// completed.
type RunNotCompletedError struct {
	ID     string
	Status string
}

func (e *RunNotCompletedError) Error() string {
	return fmt.Sprintf("collection run %s is not completed (status %q)", e.ID, e.Status)
}

// Run is one collection run.
type Run struct {
	ID          string
	OrgID       string // "" when the run has no org
	Status      string
	StartedAt   time.Time // zero when NULL
	CompletedAt time.Time
}

// readBufferSize is how much one read from a database connection may take.
const readBufferSize = 256 << 10

// DefaultConnectTimeout bounds connecting unless the DSN's
// connect_timeout says otherwise.
const DefaultConnectTimeout = 30 * time.Second

// clientSlack is how long after statement_timeout the client stops waiting
// for a statement itself: the server's timeout fires first and reports
// itself, unless the network between the two has stalled.
const clientSlack = 5 * time.Second

// Postgres is a pool of read-only connections to the collector's database.
type Postgres struct {
	pool *pgxpool.Pool
	cfg  Config
}

// Open connects to PostgreSQL. Every session it opens is read-only.
func Open(ctx context.Context, cfg Config) (*Postgres, error) {
	cfg = cfg.withDefaults()
	pc, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		// pgx redacts passwords only on a best-effort basis: never echo the DSN.
		return nil, errors.New("parse database connection string: invalid DSN (check source.dsn / DATABASE_URL)")
	}
	pc.MaxConns = cfg.MaxConns
	if pc.ConnConfig.ConnectTimeout == 0 {
		// A server that accepts TCP but never answers (a dead proxy, a
		// stalled network) would otherwise hang the export for good.
		pc.ConnConfig.ConnectTimeout = DefaultConnectTimeout
	}
	pc.ConnConfig.RuntimeParams["application_name"] = "sellersnap"
	pc.ConnConfig.RuntimeParams["default_transaction_read_only"] = "on"
	pc.ConnConfig.RuntimeParams["client_encoding"] = "UTF8"
	// pgproto3 reads the socket 8 KiB at a time; an export streams hundreds
	// of megabytes, so read in large chunks and save most of the syscalls.
	pc.ConnConfig.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		return pgproto3.NewFrontend(bufio.NewReaderSize(r, readBufferSize), w)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	if cfg.Lazy {
		return &Postgres{pool: pool, cfg: cfg}, nil
	}
	if err := warm(ctx, pool, cfg.Conns); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	return &Postgres{pool: pool, cfg: cfg}, nil
}

// warm opens n connections concurrently and leaves them idle in the pool.
// The pool is empty, so each Acquire connects (and authenticates) anew.
func warm(ctx context.Context, pool *pgxpool.Pool, n int) error {
	conns := make([]*pgxpool.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { conns[i], errs[i] = pool.Acquire(ctx) })
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			c.Release()
		}
	}
	for _, err := range errs {
		if err != nil {
			return err // the others failed alike, most likely
		}
	}
	return nil
}

// Close closes every connection.
func (p *Postgres) Close() { p.pool.Close() }

func (p *Postgres) table(name string) string {
	return pgx.Identifier{p.cfg.Schema, name}.Sanitize()
}

// requiredRunColumns and requiredSellerColumns are the columns the exporter
// filters and orders on.
var (
	requiredRunColumns    = []string{"id", "org_id", "status", "started_at", "completed_at"}
	requiredSellerColumns = []string{"id", "org_id", "first_seen_run_id", "deleted_at", "flagged", "created_at"}
)

// Filter narrows which sellers are exported.
type Filter struct {
	// Flagged, when set, keeps only sellers whose flagged column equals it.
	Flagged *bool
}

// where is the filter's SQL condition on column col (flagged, s.flagged)
// with its value as parameter $n, or "" for no filter.
func (f Filter) where(col string, n int) string {
	if f.Flagged == nil {
		return ""
	}
	return fmt.Sprintf(" AND %s = $%d", col, n)
}

// CountByRun returns the number of live sellers (matching f) first seen in
// each of the given runs and scoped to the run's org.
func (p *Postgres) CountByRun(ctx context.Context, runs []Run, f Filter) (map[string]int64, error) {
	// Each run once: a run listed twice (two exports of it) would join
	// its sellers twice and count them double.
	var ids, orgs []string
	seen := make(map[string]bool, len(runs))
	for _, r := range runs {
		if !seen[r.ID] {
			seen[r.ID] = true
			ids, orgs = append(ids, r.ID), append(orgs, r.OrgID)
		}
	}
	args := []any{ids, orgs}
	if f.Flagged != nil {
		args = append(args, *f.Flagged)
	}
	q := fmt.Sprintf(`SELECT r.id, count(s.*) FROM unnest($1::uuid[], $2::text[]) AS r(id, org)
		LEFT JOIN %s s ON s.first_seen_run_id = r.id AND s.deleted_at IS NULL
		 AND s.org_id IS NOT DISTINCT FROM nullif(r.org, '')::uuid%s
		GROUP BY r.id`, p.table(p.cfg.SellersTable), f.where("s.flagged", 3))
	rows, err := p.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("count sellers: %w", err)
	}
	out := make(map[string]int64, len(runs))
	var id string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&id, &n}, func() error { out[id] = n; return nil })
	if err != nil {
		return nil, fmt.Errorf("count sellers: %w", err)
	}
	return out, nil
}

// CountByOrg returns the number of live sellers (matching f) per org, ""
// standing for sellers without an org.
func (p *Postgres) CountByOrg(ctx context.Context, f Filter) (map[string]int64, error) {
	q := fmt.Sprintf(`SELECT coalesce(org_id::text, ''), count(*) FROM %s WHERE deleted_at IS NULL`, p.table(p.cfg.SellersTable)) + f.where("flagged", 1)
	var args []any
	if f.Flagged != nil {
		args = append(args, *f.Flagged)
	}
	rows, err := p.pool.Query(ctx, q+` GROUP BY 1`, args...)
	if err != nil {
		return nil, fmt.Errorf("count sellers: %w", err)
	}
	out := map[string]int64{}
	var org string
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&org, &n}, func() error { out[org] = n; return nil }); err != nil {
		return nil, fmt.Errorf("count sellers: %w", err)
	}
	return out, nil
}
