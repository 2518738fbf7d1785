package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"sync"
	"time"

	"github.com/apache/arrow/go/v17/arrow/memory"

	"github.com/sellersnap/sellersnap/internal/arrowmem"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sinks/iceberg"
	"github.com/sellersnap/sellersnap/sources"
)

// Runner runs export jobs: it finds what is pending, exports it, and
// publishes files and manifests.
type Runner struct {
	// Source is the collector's database. Required.
	Source *sources.Postgres
	// Version is recorded in manifests. Default "dev".
	Version string
	// Logger for one line per export. Default slog.Default().
	Logger *slog.Logger
	// Allocator for Arrow records. Default arrowmem.Shared(), a pool.
	Allocator memory.Allocator
	// Now is the wall clock (exported_at, today's date for full jobs).
	// Default time.Now.
	Now func() time.Time
	// Retry retries transient errors within one export. The zero value
	// tries once.
	Retry Backoff
	// Observer, when set, is told of every export (the daemon's metrics).
	Observer Observer
	// ProgressEvery is how often a long export logs its progress.
	// Default 10s.
	ProgressEvery time.Duration
	// Locker, when set, serialises exports of the same unit across
	// processes: each run (or full-snapshot date) is exported under its
	// lock, and a unit another process holds is skipped. Set it whenever
	// more than one sellersnap may run against the same bucket.
	Locker Locker

	mu       sync.Mutex
	buckets  map[string]*sinks.Bucket
	tables   map[string]*iceberg.Table // by job
	catalogs []*iceberg.Catalog
	owners   ownership

	beforeCommit func() // fault tests: called before an export's first commit
}

// Locker takes named locks that exclude other processes;
// *sources.Postgres (advisory locks) is one.
type Locker interface {
	TryLock(ctx context.Context, key string) (Unlocker, bool, error)
}

// Unlocker releases a lock. One that also has Held(ctx) error (as
// *sources.Lock does) is asked before every change an export makes to the
// bucket, so that an exporter that lost its lock changes nothing.
type Unlocker interface{ Unlock() }

// fence returns nil while a lock is held.
type fence func(ctx context.Context) error

func noFence(context.Context) error { return nil }

// errExportedElsewhere reports that another process published the unit
// first: its manifest appeared while this one was exporting.
var errExportedElsewhere = errors.New("exported by another process")

// lock takes key if a Locker is set. ok is false when another process
// holds it. held tells whether the lock is still held.
func (r *Runner) lock(ctx context.Context, key string) (release func(), held fence, ok bool, err error) {
	if r.Locker == nil {
		return func() {}, noFence, true, nil
	}
	l, ok, err := r.Locker.TryLock(ctx, key)
	if err != nil || !ok {
		return nil, nil, false, err
	}
	held = noFence
	if h, ok := l.(interface{ Held(context.Context) error }); ok {
		held = h.Held
	}
	return l.Unlock, held, true, nil
}

// existsConcurrency bounds the manifest look-ups made at once.
const existsConcurrency = 8

// Bucket opens (once) and returns the bucket at url.
func (r *Runner) Bucket(ctx context.Context, url string) (*sinks.Bucket, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if b, ok := r.buckets[url]; ok {
		return b, nil
	}
	b, err := sinks.OpenBucket(ctx, url, sinks.WithLogger(r.logger()))
	if err != nil {
		return nil, err
	}
	if r.buckets == nil {
		r.buckets = map[string]*sinks.Bucket{}
	}
	r.buckets[url] = b
	return b, nil
}

// Close closes the buckets the runner opened.
func (r *Runner) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, b := range r.buckets {
		errs = append(errs, b.Close())
	}
	for _, c := range r.catalogs {
		c.Close()
	}
	r.buckets, r.tables, r.catalogs = nil, nil, nil
	return errors.Join(errs...)
}

// Result sums up one Once or Rerun call.
type Result struct {
	Exported []*Manifest
	// Failed is how many units failed; their errors are joined in the
	// returned error.
	Failed int
	// Skipped is how many units another process was exporting (locked)
	// or had just exported.
	Skipped int
	// Held are runs found exported under another date (their completed_at
	// moved since): exported already, left as they are.
	Held []*Manifest
}

// PostgresLocker locks each unit with a PostgreSQL advisory lock taken in
// the unit's own snapshot transaction (sources.Snapshot.TryLock); as a
// Locker on its own it takes session locks (sources.Postgres.TryLock),
// which exclude the same units.
func PostgresLocker(p *sources.Postgres) Locker { return pgLocker{p} }

type pgLocker struct{ p *sources.Postgres }

func (l pgLocker) TryLock(ctx context.Context, key string) (Unlocker, bool, error) {
	lk, ok, err := l.p.TryLock(ctx, key)
	if err != nil || !ok {
		return nil, ok, err
	}
	return lk, true, nil
}

func (r *Runner) allocator() memory.Allocator {
	if r.Allocator != nil {
		return r.Allocator
	}
	return arrowmem.Shared()
}

func (r *Runner) logger() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// retry calls f until it succeeds, fails permanently, or the attempts are
// used up. It returns f's last error.
func (r *Runner) retry(ctx context.Context, job string, what []any, f func() error) error {
	b := r.Retry
	wait := b.Initial
	for attempt := 1; ; attempt++ {
		err := f()
		if err == nil || attempt >= b.Attempts || !transient(err) || ctx.Err() != nil {
			return err
		}
		d := jitter(max(wait, time.Millisecond))
		r.observer().Retried(job)
		r.logger().Warn("transient error; retrying", append(what, "attempt", attempt, "in", d.Round(time.Millisecond), "err", err)...)
		if !sleep(ctx, d) {
			return err
		}
		wait = min(wait*2, b.Max)
	}
}

func (r *Runner) observer() Observer {
	if r.Observer == nil {
		return nopObserver{}
	}
	return r.Observer
}

// failed reports u's failure to the Observer.
func (r *Runner) failed(u unit, err error) {
	e := Export{Job: u.job.Name, OrgID: u.orgID, Date: u.date, Outcome: "failure", Error: err.Error(), At: r.now()}
	if u.run != nil {
		e.RunID = u.run.ID
	}
	r.observer().ExportFailed(e)
}

// logFailure logs a failed unit once: with the stack when it panicked.
func (r *Runner) logFailure(u unit, err error) {
	if pe, ok := errors.AsType[*PanicError](err); ok {
		r.logger().Error("panic in export; the unit is marked failed", append(u.logAttrs(), "err", err, "stack", string(pe.Stack))...)
		return
	}
	r.logger().Error("export failed", append(u.logAttrs(), "err", err)...) // the attributes name the unit
}

// table returns the job's Iceberg table, opening its catalog (and
// creating the catalog's tables and the namespace) on first use.
func (r *Runner) table(ctx context.Context, job *Job) (*iceberg.Table, error) {
	r.mu.Lock()
	tb := r.tables[job.Name]
	r.mu.Unlock()
	if tb != nil {
		return tb, nil
	}
	cfg := job.table.cfg
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return nil, err
	}
	prefix := path.Join(cfg.Warehouse, cfg.Namespace, cfg.Table)
	loc, err := tableLocation(bucket.URL(), prefix)
	if err != nil {
		return nil, fmt.Errorf("job %s: iceberg: %w", job.Name, err)
	}
	cat, err := iceberg.OpenCatalog(ctx, cfg.URI, cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", job.Name, err)
	}
	if err := cat.Ensure(ctx, cfg.Namespace); err != nil {
		cat.Close()
		return nil, fmt.Errorf("job %s: %w", job.Name, err)
	}
	tb, err = iceberg.Open(iceberg.Options{Catalog: cat, Ident: iceberg.Ident{Namespace: cfg.Namespace, Table: cfg.Table},
		Bucket: bucket, KeyPrefix: prefix, Location: loc, Logger: r.logger(), Now: r.Now, // nil: the catalog's clock
		Properties: map[string]string{"write.format.default": "parquet", "sellersnap.job": job.Name},
		Retention:  iceberg.Retention{MaxAge: cfg.Retention, Keep: cfg.KeepSnapshots, Off: cfg.Retention == 0}})
	if err != nil {
		cat.Close()
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := r.tables[job.Name]; old != nil {
		cat.Close()
		return old, nil
	}
	if r.tables == nil {
		r.tables = map[string]*iceberg.Table{}
		r.catalogs = nil
	}
	r.tables[job.Name] = tb
	r.catalogs = append(r.catalogs, cat)
	return tb, nil
}

// latest writes the latest.json pointers.
func (r *Runner) latest() latestWriter { return latestWriter{src: r.Source, logger: r.logger()} }
