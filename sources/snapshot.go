package sources

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

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
