package sources

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/big"
	"regexp"
	"slices"
	"strconv"
	"strings"
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

const runColumns = `id::text, coalesce(org_id::text, ''), coalesce(status, ''), coalesce(started_at, '-infinity'), completed_at`

func scanRun(row pgx.Row) (Run, error) {
	var r Run
	var started time.Time
	var completed *time.Time
	err := row.Scan(&r.ID, &r.OrgID, &r.Status, &started, &completed)
	if err != nil {
		return r, err
	}
	if started.Year() > 1 {
		r.StartedAt = started
	}
	if completed != nil {
		r.CompletedAt = *completed
	}
	return r, nil
}

// CompletedRuns lists runs whose status is the completed status and that
// have a completed_at, oldest completed_at first.
func (p *Postgres) CompletedRuns(ctx context.Context) ([]Run, error) {
	return completedRuns(ctx, p.pool, p.cfg, "")
}

// CompletedRunsAfter is CompletedRuns for the runs completed after t.
func (p *Postgres) CompletedRunsAfter(ctx context.Context, t time.Time) ([]Run, error) {
	return completedRuns(ctx, p.pool, p.cfg, " AND completed_at > $2", t)
}

// CompletedRunsBetween is CompletedRuns for the runs completed at or
// after from and before to.
func (p *Postgres) CompletedRunsBetween(ctx context.Context, from, to time.Time) ([]Run, error) {
	return completedRuns(ctx, p.pool, p.cfg, " AND completed_at >= $2 AND completed_at < $3", from, to)
}

// CompletedRunsByID is CompletedRuns for the runs in ids (those not
// completed, or gone, are left out).
func (p *Postgres) CompletedRunsByID(ctx context.Context, ids []string) ([]Run, error) {
	return completedRunsByID(ctx, p.pool, p.cfg, ids)
}

func completedRunsByID(ctx context.Context, q querier, cfg Config, ids []string) ([]Run, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	return completedRuns(ctx, q, cfg, " AND id = ANY($2::uuid[])", ids)
}

// NewestCompletedRuns is CompletedRuns for the n that completed last,
// newest first.
func (p *Postgres) NewestCompletedRuns(ctx context.Context, n int) ([]Run, error) {
	return completedRuns(ctx, p.pool, p.cfg, " ORDER BY completed_at DESC, id DESC LIMIT $2", n)
}

// querier is what a pool and a transaction have in common.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// completedWhere selects the completed runs (a finite completed_at).
const completedWhere = `status = $1 AND completed_at IS NOT NULL AND completed_at <> 'infinity' AND completed_at <> '-infinity'`

func completedRuns(ctx context.Context, q querier, cfg Config, and string, args ...any) ([]Run, error) {
	if !strings.Contains(and, "ORDER BY") {
		and += " ORDER BY completed_at, id"
	}
	sql := fmt.Sprintf(`SELECT %s FROM %s WHERE %s%s`,
		runColumns, pgx.Identifier{cfg.Schema, cfg.RunsTable}.Sanitize(), completedWhere, and)
	rows, err := q.Query(ctx, sql, append([]any{cfg.CompletedStatus}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	runs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Run, error) { return scanRun(row) })
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	return runs, nil
}

// RunByID returns one run, which must be completed.
func (p *Postgres) RunByID(ctx context.Context, id string) (Run, error) {
	q := fmt.Sprintf(`SELECT %s FROM %s WHERE id = $1`, runColumns, p.table(p.cfg.RunsTable))
	r, err := scanRun(p.pool.QueryRow(ctx, q, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("run %s: %w", id, ErrRunNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("get run %s: %w", id, err)
	}
	if r.Status != p.cfg.CompletedStatus || r.CompletedAt.IsZero() {
		return r, &RunNotCompletedError{ID: r.ID, Status: r.Status}
	}
	return r, nil
}

// Column describes one column of a table, from the catalog.
type Column struct {
	Name     string
	Type     string // the (base) type's name: text, int4, numeric, timestamptz, …
	Nullable bool
	// Readable says whether the role may SELECT the column.
	Readable bool
}

// Columns returns the columns of table (in the configured schema), in
// table order, including those the role may not read (information_schema
// hides them, which would report a missing grant as a missing column). A
// missing table is an error naming it.
func (p *Postgres) Columns(ctx context.Context, table string) ([]Column, error) {
	rows, err := p.pool.Query(ctx, `SELECT a.attname, CASE WHEN t.typtype = 'd' THEN bt.typname ELSE t.typname END, NOT a.attnotnull,
			has_schema_privilege(n.oid, 'USAGE') AND has_column_privilege(c.oid, a.attnum, 'SELECT')
		FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
		LEFT JOIN pg_catalog.pg_type bt ON bt.oid = t.typbasetype
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
		ORDER BY a.attnum`,
		pgx.QueryExecModeExec, p.cfg.Schema, table) // one round trip, text and bool results
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", p.cfg.Schema, table, err)
	}
	cols, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Column, error) {
		var c Column
		err := row.Scan(&c.Name, &c.Type, &c.Nullable, &c.Readable)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", p.cfg.Schema, table, err)
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("table %s.%s does not exist", p.cfg.Schema, table)
	}
	return cols, nil
}

// requiredRunColumns and requiredSellerColumns are the columns the exporter
// filters and orders on.
var (
	requiredRunColumns    = []string{"id", "org_id", "status", "started_at", "completed_at"}
	requiredSellerColumns = []string{"id", "org_id", "first_seen_run_id", "deleted_at", "flagged", "created_at"}
)

// idColumns must be uuid wherever they are required (id and org_id in
// both tables, first_seen_run_id in sellers): ids are compared, locked and
// put into keys as text, which is one spelling per id only for uuid.
var idColumns = []string{"id", "org_id", "first_seen_run_id"}

// Catalog is what the catalog says about the runs and sellers tables, read
// once to check any number of jobs against.
type Catalog struct {
	p                   *Postgres
	runCols, sellerCols []Column
}

// Catalog reads the columns of both tables. A missing table is an error
// naming it.
func (p *Postgres) Catalog(ctx context.Context) (*Catalog, error) {
	runCols, err := p.Columns(ctx, p.cfg.RunsTable)
	if err != nil {
		return nil, err
	}
	sellerCols, err := p.Columns(ctx, p.cfg.SellersTable)
	if err != nil {
		return nil, err
	}
	return &Catalog{p: p, runCols: runCols, sellerCols: sellerCols}, nil
}

// Sellers returns the columns of the sellers table, in table order.
func (c *Catalog) Sellers() []Column { return c.sellerCols }

// Check verifies that both tables exist with the columns the exporter needs
// and that every column in export exists with a supported type. The error
// names each offending column.
func (p *Postgres) Check(ctx context.Context, export []string) error {
	c, err := p.Catalog(ctx)
	if err != nil {
		return err
	}
	return c.Check(ctx, export)
}

// Check is Postgres.Check against the catalog already read.
func (c *Catalog) Check(ctx context.Context, export []string) error {
	p, runCols, sellerCols := c.p, c.runCols, c.sellerCols
	var errs []error
	missing := func(table string, have []Column, want []string, what string) {
		for _, w := range want {
			if !slices.ContainsFunc(have, func(c Column) bool { return c.Name == w }) {
				errs = append(errs, fmt.Errorf("%s: column %q does not exist in %s.%s (columns: %s)", what, w, p.cfg.Schema, table, columnNames(have)))
			}
		}
	}
	missing(p.cfg.RunsTable, runCols, requiredRunColumns, "runs table")
	missing(p.cfg.SellersTable, sellerCols, requiredSellerColumns, "sellers table")
	missing(p.cfg.SellersTable, sellerCols, export, "columns")
	if err := p.checkGrants(ctx, p.cfg.RunsTable, runCols, requiredRunColumns); err != nil {
		errs = append(errs, err)
	}
	if err := p.checkGrants(ctx, p.cfg.SellersTable, sellerCols, append(slices.Clone(requiredSellerColumns), export...)); err != nil {
		errs = append(errs, err)
	}
	wantUUID := func(table string, have []Column, what string) {
		for _, c := range have {
			if slices.Contains(idColumns, c.Name) && c.Type != "uuid" && (table == p.cfg.SellersTable || c.Name != "first_seen_run_id") {
				errs = append(errs, fmt.Errorf("%s: column %q of %s.%s has type %s: sellersnap needs uuid ids, since a text id has many spellings of one run or org (A0EE…, a0ee…, {a0ee…}) that would be exported as different units (ALTER TABLE %s ALTER COLUMN %s TYPE uuid USING %s::uuid)",
					what, c.Name, p.cfg.Schema, table, c.Type, pgx.Identifier{p.cfg.Schema, table}.Sanitize(), pgx.Identifier{c.Name}.Sanitize(), pgx.Identifier{c.Name}.Sanitize()))
			}
		}
	}
	wantUUID(p.cfg.RunsTable, runCols, "runs table")
	wantUUID(p.cfg.SellersTable, sellerCols, "sellers table")
	for _, c := range sellerCols {
		if slices.Contains(export, c.Name) && !SupportedType(c.Type) {
			errs = append(errs, fmt.Errorf("columns: column %q has type %s, which sellersnap cannot export (supported: %s)", c.Name, c.Type, strings.Join(supportedTypes, ", ")))
		}
	}
	return errors.Join(errs...)
}

// checkGrants returns an error carrying the GRANT statement that would let
// the role read the columns of table it needs, or nil.
func (p *Postgres) checkGrants(ctx context.Context, table string, cols []Column, need []string) error {
	var denied []string
	all := true
	for _, c := range cols {
		if !c.Readable {
			if slices.Contains(need, c.Name) {
				denied = append(denied, pgx.Identifier{c.Name}.Sanitize())
			}
		} else {
			all = false
		}
	}
	if len(denied) == 0 {
		return nil
	}
	var role string
	if err := p.pool.QueryRow(ctx, `SELECT current_user`).Scan(&role); err != nil {
		return fmt.Errorf("read current role: %w", err)
	}
	qt, qr := pgx.Identifier{p.cfg.Schema, table}.Sanitize(), pgx.Identifier{role}.Sanitize()
	var schemaOK bool
	if err := p.pool.QueryRow(ctx, `SELECT has_schema_privilege($1, 'USAGE')`, p.cfg.Schema).Scan(&schemaOK); err == nil && !schemaOK {
		return fmt.Errorf("role %s may not use schema %s: GRANT USAGE ON SCHEMA %s TO %s, and SELECT on its tables",
			role, p.cfg.Schema, pgx.Identifier{p.cfg.Schema}.Sanitize(), qr)
	}
	if all {
		return fmt.Errorf("role %s may not read %s.%s: GRANT SELECT ON %s TO %s", role, p.cfg.Schema, table, qt, qr)
	}
	return fmt.Errorf("role %s may not read columns of %s.%s it needs: GRANT SELECT (%s) ON %s TO %s",
		role, p.cfg.Schema, table, strings.Join(denied, ", "), qt, qr)
}

func columnNames(cols []Column) string {
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}

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
	ids := make([]string, len(runs))
	orgs := make([]string, len(runs))
	for i, r := range runs {
		ids[i], orgs[i] = r.ID, r.OrgID
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

// Snapshot is one REPEATABLE READ READ ONLY transaction: every query made
// through it sees the same database state.
type Snapshot struct {
	conn   *pgxpool.Conn
	pool   *pgxpool.Pool // for lock checks while conn streams
	tx     pgx.Tx
	cfg    Config
	time   time.Time
	nulls  map[string]bool // sellers column → nullable
	closed bool
}

// Snapshot begins a read-only snapshot transaction on a dedicated
// connection. The caller must Close it.
func (p *Postgres) Snapshot(ctx context.Context) (*Snapshot, error) {
	bctx, cancel := bound(ctx, p.cfg)
	defer cancel()
	conn, err := p.pool.Acquire(bctx)
	if err != nil {
		return nil, fmt.Errorf("acquire connection: %w", stalled(bctx, err))
	}
	tx, err := conn.BeginTx(bctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		conn.Release()
		return nil, fmt.Errorf("begin snapshot: %w", stalled(bctx, err))
	}
	s := &Snapshot{conn: conn, pool: p.pool, tx: tx, cfg: p.cfg}
	if err := s.init(bctx); err != nil {
		s.Close(ctx)
		if se := stalled(bctx, nil); se != nil {
			err = fmt.Errorf("begin snapshot: %w", se)
		}
		return nil, err
	}
	return s, nil
}

func (s *Snapshot) init(ctx context.Context) error {
	// One statement, one round trip: the snapshot's time, the statement
	// timeout for the rest of the transaction, and the nullability of the
	// sellers columns (from the catalog: information_schema.columns is a
	// view that costs milliseconds).
	var timeout string
	if s.cfg.StatementTimeout > 0 {
		timeout = strconv.FormatInt(s.cfg.StatementTimeout.Milliseconds(), 10)
	}
	var names []string
	var nullable []bool
	var micros int64
	//
	// A SQL_ASCII database stores text bytes unchecked; converting them to
	// UTF8 makes the server fail the whole query on the first bad byte,
	// naming nothing. Within the snapshot the bytes come as stored
	// (client_encoding SQL_ASCII, reverted at its end), and the decoder
	// rejects invalid UTF-8 naming the seller and column.
	err := s.tx.QueryRow(ctx, `SELECT (extract(epoch FROM now()) * 1000000)::int8,
			CASE WHEN $2::text <> '' THEN set_config('statement_timeout', $2::text, true) END,
			CASE WHEN current_setting('server_encoding') = 'SQL_ASCII' THEN set_config('client_encoding', 'SQL_ASCII', true) END,
			coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}'), coalesce(array_agg(NOT a.attnotnull ORDER BY a.attnum), '{}')
		FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = to_regclass($1::text) AND a.attnum > 0 AND NOT a.attisdropped`,
		// One round trip (no prepare). Results come as text in this mode:
		// the time as microseconds, so that no DateStyle changes it.
		pgx.QueryExecModeExec, pgx.Identifier{s.cfg.Schema, s.cfg.SellersTable}.Sanitize(), timeout).Scan(&micros, nil, nil, &names, &nullable)
	if err != nil {
		return fmt.Errorf("begin snapshot: %w", err)
	}
	s.time = time.UnixMicro(micros)
	s.nulls = make(map[string]bool, len(names))
	for i, name := range names {
		s.nulls[name] = nullable[i]
	}
	return nil
}

// bound returns ctx limited to the statement timeout plus clientSlack, so
// that a statement whose replies stop arriving fails instead of hanging.
func bound(ctx context.Context, cfg Config) (context.Context, context.CancelFunc) {
	if cfg.StatementTimeout <= 0 {
		return ctx, func() {}
	}
	d := cfg.StatementTimeout + clientSlack
	return context.WithTimeoutCause(ctx, d, &StalledError{Timeout: d})
}

// StalledError is the cause of a statement given up by the client: its
// reply, or the server's own statement_timeout error, did not arrive in
// time.
type StalledError struct{ Timeout time.Duration }

func (e *StalledError) Error() string {
	return fmt.Sprintf("gave up on the database after %s (statement_timeout + %s) without its reply: network or server slow or stalled", e.Timeout, clientSlack)
}

// Time is the snapshot's transaction start time (the server's now()).
func (s *Snapshot) Time() time.Time { return s.time }

// Close ends the transaction and returns the connection to the pool.
func (s *Snapshot) Close(ctx context.Context) {
	if s.closed {
		return
	}
	s.closed = true
	_ = s.tx.Rollback(ctx) // read-only: nothing to commit
	s.conn.Release()
}

// Orgs lists the orgs that have live sellers matching f, "" standing for
// sellers without an org, in a fixed order.
func (s *Snapshot) Orgs(ctx context.Context, f Filter) ([]string, error) {
	ctx, cancel := bound(ctx, s.cfg)
	defer cancel()
	q := fmt.Sprintf(`SELECT DISTINCT coalesce(org_id::text, '') FROM %s WHERE deleted_at IS NULL`,
		pgx.Identifier{s.cfg.Schema, s.cfg.SellersTable}.Sanitize()) + f.where("flagged", 1)
	var args []any
	if f.Flagged != nil {
		args = append(args, *f.Flagged)
	}
	rows, err := s.tx.Query(ctx, q+` ORDER BY 1`, args...)
	if err != nil {
		return nil, fmt.Errorf("list orgs: %w", err)
	}
	orgs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list orgs: %w", err)
	}
	return orgs, nil
}

// RunDigest sums up a set of completed runs: how many, and the sum of a
// 64-bit hash of each run's id, org and completed_at (PostgreSQL's own
// hash functions for uuid and timestamp, with a seed). Two sets with the
// same digest are the same set but for a hash collision: a run added,
// removed, moved to another day or org, and a deletion paired with an
// insertion (which keeps a count) change it.
type RunDigest struct {
	Runs int64  `json:"runs"`
	Sum  string `json:"sum"` // a decimal integer
}

// Add returns the digest of the runs of d and e together.
func (d RunDigest) Add(e RunDigest) RunDigest {
	a, _ := new(big.Int).SetString(cmp.Or(d.Sum, "0"), 10)
	b, _ := new(big.Int).SetString(cmp.Or(e.Sum, "0"), 10)
	return RunDigest{Runs: d.Runs + e.Runs, Sum: a.Add(a, b).String()}
}

// runHash is the 64-bit hash of one run in a RunDigest ($2 is the seed).
const runHash = `(uuid_hash_extended(id, $2) # uuid_hash_extended(coalesce(org_id, '00000000-0000-0000-0000-000000000000'), $2 + 1) # timestamp_hash_extended(completed_at AT TIME ZONE 'UTC', $2 + 2))`

// RunsDigest returns the digest of every completed run up to upTo: one
// pass over the runs, no grouping (index-only with an index on (status,
// completed_at) INCLUDE (id, org_id)). It reads the runs table and every
// table that inherits from it, and rests on no statistic.
func (s *Snapshot) RunsDigest(ctx context.Context, seed int64, upTo time.Time) (RunDigest, error) {
	ctx, cancel := bound(ctx, s.cfg)
	defer cancel()
	q := fmt.Sprintf(`SELECT count(*), coalesce(sum(%s), 0)::text FROM %s WHERE %s AND completed_at <= $3`,
		runHash, pgx.Identifier{s.cfg.Schema, s.cfg.RunsTable}.Sanitize(), completedWhere)
	var d RunDigest
	if err := s.tx.QueryRow(ctx, q, s.cfg.CompletedStatus, seed, upTo).Scan(&d.Runs, &d.Sum); err != nil {
		return d, fmt.Errorf("digest runs: %w", err)
	}
	return d, nil
}

// DayDigests returns, by day of completed_at (UTC, YYYY-MM-DD), the digest
// of the completed runs after after (the zero time: from the first) and
// up to upTo.
func (s *Snapshot) DayDigests(ctx context.Context, seed int64, after, upTo time.Time) (map[string]RunDigest, error) {
	ctx, cancel := bound(ctx, s.cfg)
	defer cancel()
	var from *time.Time
	if !after.IsZero() {
		from = &after
	}
	q := fmt.Sprintf(`SELECT to_char((completed_at AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD'), count(*), sum(%s)::text
		FROM %s WHERE %s AND completed_at <= $3 AND ($4::timestamptz IS NULL OR completed_at > $4)
		GROUP BY 1`, runHash, pgx.Identifier{s.cfg.Schema, s.cfg.RunsTable}.Sanitize(), completedWhere)
	rows, err := s.tx.Query(ctx, q, s.cfg.CompletedStatus, seed, upTo, from)
	if err != nil {
		return nil, fmt.Errorf("digest runs by day: %w", err)
	}
	out := map[string]RunDigest{}
	for rows.Next() {
		var day string
		var d RunDigest
		if err := rows.Scan(&day, &d.Runs, &d.Sum); err != nil {
			rows.Close()
			return nil, fmt.Errorf("digest runs by day: %w", err)
		}
		out[day] = d
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("digest runs by day: %w", err)
	}
	return out, nil
}

// CompletedRuns is Postgres.CompletedRuns in the snapshot.
func (s *Snapshot) CompletedRuns(ctx context.Context) ([]Run, error) {
	ctx, cancel := bound(ctx, s.cfg)
	defer cancel()
	return completedRuns(ctx, s.tx, s.cfg, "")
}

// CompletedRunsAfter is Postgres.CompletedRunsAfter in the snapshot.
func (s *Snapshot) CompletedRunsAfter(ctx context.Context, t time.Time) ([]Run, error) {
	ctx, cancel := bound(ctx, s.cfg)
	defer cancel()
	return completedRuns(ctx, s.tx, s.cfg, " AND completed_at > $2", t)
}

// CompletedRunsByID is Postgres.CompletedRunsByID in the snapshot.
func (s *Snapshot) CompletedRunsByID(ctx context.Context, ids []string) ([]Run, error) {
	ctx, cancel := bound(ctx, s.cfg)
	defer cancel()
	return completedRunsByID(ctx, s.tx, s.cfg, ids)
}

// CompletedRunsOnDays is CompletedRuns, in the snapshot, for the runs
// completed up to upTo on the given days (UTC, YYYY-MM-DD): one index range
// per day.
func (s *Snapshot) CompletedRunsOnDays(ctx context.Context, days []string, upTo time.Time) ([]Run, error) {
	ctx, cancel := bound(ctx, s.cfg)
	defer cancel()
	var out []Run
	for _, day := range days {
		from, err := time.Parse(time.DateOnly, day)
		if err != nil {
			return nil, fmt.Errorf("list runs: day %q: %w", day, err)
		}
		runs, err := completedRuns(ctx, s.tx, s.cfg, ` AND completed_at >= $2 AND completed_at < $3 AND completed_at <= $4`, from, from.AddDate(0, 0, 1), upTo)
		if err != nil {
			return nil, err
		}
		out = append(out, runs...)
	}
	return out, nil
}
