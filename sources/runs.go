package sources

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

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
