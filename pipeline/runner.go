package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/apache/arrow/go/v17/arrow/memory"

	"github.com/sellersnap/sellersnap/config"
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

	mu        sync.Mutex
	buckets   map[string]*sinks.Bucket
	tables    map[string]*iceberg.Table // by job
	catalogs  []*iceberg.Catalog
	ownedKeys map[string]struct{} // manifests read and found to be the job's (see exported)

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
}

// Once exports what job has pending: for a per_run job every completed run
// without a manifest, oldest first; for a full job today's snapshot (in the
// job's time zone) of every org that has none yet. A failed unit does not
// stop the others; the returned error joins every failure.
//
// Then it applies the job's declared reruns not yet applied (ApplyReruns).
func (r *Runner) Once(ctx context.Context, job *Job) (Result, error) {
	res, err := r.Pass(ctx, job)
	if len(job.Reruns) > 0 && ctx.Err() == nil {
		err = errors.Join(err, r.ApplyReruns(ctx, job))
	}
	return res, err
}

// Pass is Once without the declared reruns: what job has pending now. The
// daemon applies the reruns beside its passes, so that a backfill never
// holds a new run.
func (r *Runner) Pass(ctx context.Context, job *Job) (Result, error) {
	if job.Mode == config.ModeFull {
		date, ok := r.slotDate(job)
		if !ok {
			return Result{}, nil // no slot yet
		}
		return r.Full(ctx, job, date)
	}
	d, err := r.discover(ctx, job)
	if err != nil {
		return Result{}, err
	}
	if len(d.pending) == 0 {
		r.observer().Backlog(job.Name, 0, 0)
	}
	res, err := r.exportRuns(ctx, job, d.pending, false)
	d.repairLatest(ctx, res)
	if ctx.Err() == nil {
		if serr := d.save(ctx, res); serr != nil {
			r.logger().Warn("could not save the export state; the next pass reads the previous one", "job", job.Name, "err", serr)
		}
	}
	return res, err
}

// slotDate is the date (job's time zone) of a full job's latest schedule
// slot at or before now: the snapshot a pass takes. So `once` from a
// CronJob every 15 minutes writes the 02:00 snapshot at its first run
// after 02:00, not after midnight, as the daemon would. ok is false when
// the schedule has no slot yet.
func (r *Runner) slotDate(job *Job) (string, bool) {
	slots := job.PrevSlots(r.now(), 1)
	if len(slots) == 0 {
		return "", false
	}
	return slots[0].In(job.Location).Format(time.DateOnly), true
}

// ExportPending exports one run if it is completed and has no manifest
// yet, as Once would, without looking at any other run. The daemon uses it
// for the run a notification names.
func (r *Runner) ExportPending(ctx context.Context, job *Job, runID string) (Result, error) {
	run, err := r.Source.RunByID(ctx, runID)
	if err != nil {
		return Result{}, err
	}
	u := newRunUnit(job, run)
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return Result{}, err
	}
	key, err := u.manifestKey()
	if err != nil {
		return Result{}, err
	}
	// A manifest of another job is not "done": exportRuns reports it.
	if done, err := r.exported(ctx, bucket, job, key); done || err != nil && !isConflict(err) {
		return Result{}, err
	}
	return r.exportRuns(ctx, job, []unit{u}, false)
}

// RerunRun exports one run again, whether or not it was exported before.
// With the same database contents the data files are byte-identical.
func (r *Runner) RerunRun(ctx context.Context, job *Job, runID string) (Result, error) {
	if job.Mode != config.ModePerRun {
		return Result{}, fmt.Errorf("job %s is a %s job: rerun it with -date", job.Name, job.Mode)
	}
	run, err := r.Source.RunByID(ctx, runID)
	if err != nil {
		return Result{}, err
	}
	return r.exportRuns(ctx, job, []unit{newRunUnit(job, run)}, true)
}

// Full exports the full snapshot for date (YYYY-MM-DD) of every org that
// has none for that date yet, retrying transient errors of each org.
func (r *Runner) Full(ctx context.Context, job *Job, date string) (Result, error) {
	return r.full(ctx, job, date, false)
}

// FutureDateError refuses a full snapshot dated after today: it would hold
// today's rows under a date that has not come, and its latest.json would
// name it over every real snapshot until then.
type FutureDateError struct {
	Job, Date, Today, Location string
}

func (e *FutureDateError) Error() string {
	return fmt.Sprintf("job %s: date %s is after today (%s in %s); a full snapshot holds the rows as they are when it is taken", e.Job, e.Date, e.Today, e.Location)
}

// RerunDate writes the full snapshot of every org for date again, with the
// database as it is now: a date before today gets today's rows (the
// manifest says so in data_as_of); a date after today is refused
// (FutureDateError).
func (r *Runner) RerunDate(ctx context.Context, job *Job, date string) (Result, error) {
	if job.Mode != config.ModeFull {
		return Result{}, fmt.Errorf("job %s is a %s job: rerun it with -run", job.Name, job.Mode)
	}
	if _, err := time.Parse(time.DateOnly, date); err != nil {
		return Result{}, fmt.Errorf("date %q: want YYYY-MM-DD", date)
	}
	if today := r.now().In(job.Location).Format(time.DateOnly); date > today {
		return Result{}, &FutureDateError{Job: job.Name, Date: date, Today: today, Location: job.Location.String()}
	}
	return r.full(ctx, job, date, true)
}

// exportRuns exports units one after the other, each under its lock.
// Unless force, a unit whose manifest exists once its lock is held is
// skipped, and the manifest is written create-only.
func (r *Runner) exportRuns(ctx context.Context, job *Job, units []unit, force bool) (Result, error) {
	var res Result
	if len(units) == 0 {
		return res, nil
	}
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return res, err
	}
	var errs []error
	var failed []unit
	for i, u := range units {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		r.observer().Backlog(job.Name, len(units)-i, r.now().Sub(u.run.CompletedAt))
		var m *Manifest
		err := r.retry(ctx, job.Name, u.logAttrs(), func() error {
			return guard(func() error {
				var err error
				m, err = r.exportLocked(ctx, bucket, u, force)
				return err
			})
		})
		if errors.Is(err, errExportedElsewhere) {
			res.Skipped++
			r.observer().Skipped(job.Name)
			continue
		}
		if err != nil {
			res.Failed++
			failed = append(failed, u)
			r.failed(u, err)
			r.logFailure(u, err)
			if force {
				// A failed rerun removed the run's manifest: the state
				// must not keep counting it as exported.
				if ferr := r.forgetExported(context.WithoutCancel(ctx), job, *u.run); ferr != nil {
					r.logger().Warn("could not record the run as pending in the export state; the next reconciliation finds it", append(u.logAttrs(), "err", ferr)...)
				}
			}
			err = unitError(u, err)
			errs = append(errs, err)
			continue
		}
		res.Exported = append(res.Exported, m)
	}
	if ctx.Err() == nil {
		// What is left are the failed units: the oldest of them is the
		// age the gauge reports.
		var oldest time.Duration
		for _, u := range failed {
			oldest = max(oldest, r.now().Sub(u.run.CompletedAt))
		}
		r.observer().Backlog(job.Name, res.Failed, oldest)
	}
	return res, errors.Join(errs...)
}

// RefreshBacklog reports to the Observer how many runs of a per_run job
// are pending now and how old the oldest is, as a pass would find them,
// without exporting anything (the daemon calls it every minute, so the
// backlog gauges follow the database between passes).
func (r *Runner) RefreshBacklog(ctx context.Context, job *Job) error {
	if job.Mode != config.ModePerRun {
		return nil
	}
	d, err := r.discover(ctx, job)
	if err != nil {
		return err
	}
	var oldest time.Duration
	if len(d.pending) > 0 {
		oldest = max(r.now().Sub(d.pending[0].run.CompletedAt), 0)
	}
	r.observer().Backlog(job.Name, len(d.pending), oldest)
	return nil
}

// logFailure logs a failed unit once: with the stack when it panicked.
func (r *Runner) logFailure(u unit, err error) {
	if pe, ok := errors.AsType[*PanicError](err); ok {
		r.logger().Error("panic in export; the unit is marked failed", append(u.logAttrs(), "err", err, "stack", string(pe.Stack))...)
		return
	}
	r.logger().Error("export failed", append(u.logAttrs(), "err", err)...) // the attributes name the unit
}

// exportLocked reads one unit (a run, or an org's snapshot for a date) in
// its own snapshot, under the unit's lock: with PostgresLocker a lock of
// the snapshot's own transaction, else the Locker's.
func (r *Runner) exportLocked(ctx context.Context, bucket *sinks.Bucket, u unit, force bool) (*Manifest, error) {
	if _, ok := r.Locker.(pgLocker); ok {
		return r.exportInSnapshotLock(ctx, bucket, u, force)
	}
	release, held, ok, err := r.lock(ctx, u.lockKey())
	if err != nil {
		return nil, err
	}
	if !ok {
		r.logger().Debug("unit is being exported by another process", u.logAttrs()...)
		return nil, errExportedElsewhere
	}
	defer release()
	u.held = held
	if err := r.recheck(ctx, bucket, u, force); err != nil {
		return nil, err
	}
	snap, err := r.Source.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	defer snap.Close(context.WithoutCancel(ctx))
	return r.exportUnit(ctx, snap, bucket, u, force)
}

// full exports one date's snapshot of every org: each org under its own
// lock and in its own REPEATABLE READ transaction, so that replicas export
// the orgs of a date side by side and no transaction lasts longer than one
// org's export (orgs of one date are not one snapshot; docs/scaling.md).
// Unless force, orgs whose manifest for the date exists are skipped.
func (r *Runner) full(ctx context.Context, job *Job, date string, force bool) (Result, error) {
	var res Result
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return res, err
	}
	orgs, err := r.orgs(ctx, job)
	if err != nil {
		return res, err
	}
	// Each replica starts at another org, so that replicas spread over
	// the orgs instead of queueing behind each other's locks.
	if len(orgs) > 1 {
		k := rand.IntN(len(orgs))
		orgs = append(orgs[k:], orgs[:k]...)
	}
	var errs []error
	for i, org := range orgs {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		u := newOrgUnit(job, org, date)
		key, err := u.manifestKey()
		if err != nil {
			return res, unitError(u, err)
		}
		done, err := r.exported(ctx, bucket, job, key)
		if err != nil && !isConflict(err) {
			return res, err
		}
		if done && !force {
			continue
		}
		r.observer().Backlog(job.Name, len(orgs)-i, 0)
		var m *Manifest
		if err == nil { // a conflict fails the org without an attempt
			err = r.retry(ctx, job.Name, u.logAttrs(), func() error {
				return guard(func() error {
					var err error
					m, err = r.exportLocked(ctx, bucket, u, force)
					return err
				})
			})
		}
		if errors.Is(err, errExportedElsewhere) {
			res.Skipped++
			r.observer().Skipped(job.Name)
			continue
		}
		if err != nil {
			res.Failed++
			r.failed(u, err)
			r.logFailure(u, err)
			errs = append(errs, unitError(u, err))
			continue
		}
		res.Exported = append(res.Exported, m)
	}
	if ctx.Err() == nil {
		r.observer().Backlog(job.Name, res.Failed, 0)
	}
	return res, errors.Join(errs...)
}

// exportInSnapshotLock is exportLocked with the lock taken inside the
// snapshot (pg_try_advisory_xact_lock): one connection per export, held
// until the snapshot closes, and a unit another process holds costs one
// short transaction.
func (r *Runner) exportInSnapshotLock(ctx context.Context, bucket *sinks.Bucket, u unit, force bool) (*Manifest, error) {
	snap, err := r.Source.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	defer snap.Close(context.WithoutCancel(ctx))
	lock, ok, err := snap.TryLock(ctx, u.lockKey())
	if err != nil {
		return nil, err
	}
	if !ok {
		r.logger().Debug("unit is being exported by another process", u.logAttrs()...)
		return nil, errExportedElsewhere
	}
	u.held = lock.Held
	if err := r.recheck(ctx, bucket, u, force); err != nil {
		return nil, err
	}
	return r.exportUnit(ctx, snap, bucket, u, force)
}

// recheck runs once the unit's lock is held: another process may have
// finished the unit between listing and locking (errExportedElsewhere),
// and a rerun must not overwrite another job's unit (a ConflictError).
func (r *Runner) recheck(ctx context.Context, bucket *sinks.Bucket, u unit, force bool) error {
	key, err := u.manifestKey()
	if err != nil {
		return err
	}
	done, err := r.exported(ctx, bucket, u.job, key)
	if err == nil && done && !force {
		return errExportedElsewhere
	}
	return err
}

// orgs lists the orgs with sellers (of the job's filter), in a short
// snapshot of its own.
func (r *Runner) orgs(ctx context.Context, job *Job) ([]string, error) {
	snap, err := r.Source.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	defer snap.Close(context.WithoutCancel(ctx))
	return snap.Orgs(ctx, job.filter)
}

// Planned is one unit Once would export now.
type Planned struct {
	RunID string `json:"run_id,omitempty"` // per_run jobs
	OrgID string `json:"org_id"`
	Date  string `json:"date"`
	Rows  int64  `json:"rows"`
	// Keys are every key the export writes, in order: data files,
	// _SUCCESS, the manifest, latest.json (written unless it names a
	// newer export).
	Keys []string `json:"keys"`
	// MoreParts: the job splits its output, so each format may have more
	// parts than the first, listed in Keys.
	MoreParts bool `json:"more_parts,omitempty"`
	// Table is the Iceberg commit the export makes (jobs with a table).
	Table string `json:"table,omitempty"`
}

// Plan says what Once would export now, without writing anything. It
// fails as Once would when the output schema drifted from schema.json
// under on_schema_change: fail.
func (r *Runner) Plan(ctx context.Context, job *Job) ([]Planned, error) {
	if err := r.checkSchemaDrift(ctx, job); err != nil {
		return nil, err
	}
	var units []unit
	var counts map[string]int64
	nextState := "" // per_run: the export state version the pass writes
	if job.Mode == config.ModeFull {
		bucket, err := r.Bucket(ctx, job.Destination)
		if err != nil {
			return nil, err
		}
		date, ok := r.slotDate(job)
		if !ok {
			return nil, nil
		}
		if counts, err = r.Source.CountByOrg(ctx, job.filter); err != nil {
			return nil, err
		}
		for org := range counts {
			u := newOrgUnit(job, org, date)
			key, err := u.manifestKey()
			if err != nil {
				return nil, unitError(u, err)
			}
			if done, err := r.exported(ctx, bucket, job, key); err != nil && !isConflict(err) {
				return nil, err
			} else if !done {
				units = append(units, u) // a conflict included: once fails it
			}
		}
		slices.SortFunc(units, func(a, b unit) int { return strings.Compare(a.orgID, b.orgID) })
	} else {
		d, err := r.discover(ctx, job)
		if err != nil {
			return nil, err
		}
		units = d.pending
		nextState = stateKey(job, d.seq+1)
		runs := make([]sources.Run, len(units))
		for i, u := range units {
			runs[i] = *u.run
		}
		if counts, err = r.Source.CountByRun(ctx, runs, job.filter); err != nil {
			return nil, err
		}
	}
	plan, err := planned(job, units, counts)
	if err != nil {
		return nil, err
	}
	if len(plan) > 0 {
		bucket, err := r.Bucket(ctx, job.Destination)
		if err != nil {
			return nil, err
		}
		if ok, err := bucket.Exists(ctx, job.Layout.Schema()); err != nil {
			return nil, err
		} else if !ok {
			plan[0].Keys = append(plan[0].Keys, job.Layout.Schema()) // the first export records the schema
		}
		if nextState != "" {
			plan[0].Keys = append(plan[0].Keys, nextState) // the pass records what it exported
		}
	}
	return plan, nil
}

// planned describes units with their row counts (by run id, or by org).
func planned(job *Job, units []unit, counts map[string]int64) ([]Planned, error) {
	plan := make([]Planned, 0, len(units))
	for _, u := range units {
		p := Planned{OrgID: u.orgID, Date: u.date, Rows: counts[u.orgID]}
		if u.run != nil {
			p.RunID, p.Rows = u.run.ID, counts[u.run.ID]
		}
		p.MoreParts = job.Split()
		for _, f := range job.Formats {
			k, err := u.key(f, 1)
			if err != nil {
				return nil, unitError(u, err)
			}
			p.Keys = append(p.Keys, k)
		}
		mk, _ := u.manifestKey()
		p.Keys = append(p.Keys, job.Layout.Success(mk), mk, u.latestKey(mk))
		if job.table != nil {
			p.Table = job.table.describe(u)
		}
		plan = append(plan, p)
	}
	return plan, nil
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

// Recent returns up to n recent manifests of job in its destination,
// newest first: for a per_run job those of the runs that completed last
// (among the last 4n; a few reads however long the history), for a full
// job the n the bucket stored last (one listing of the job's prefix).
func (r *Runner) Recent(ctx context.Context, job *Job, n int) ([]*Manifest, error) {
	ms, _, err := r.recent(ctx, job, n)
	return ms, err
}

// recent is Recent with each manifest's key.
func (r *Runner) recent(ctx context.Context, job *Job, n int) ([]*Manifest, []string, error) {
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return nil, nil, err
	}
	var candidates []string
	if job.Mode == config.ModePerRun {
		// The manifests of the runs that completed last: a few reads,
		// however long the history (a run without one is pending).
		runs, err := r.Source.NewestCompletedRuns(ctx, 4*n)
		if err != nil {
			return nil, nil, err
		}
		for _, run := range runs {
			key, err := job.RunManifestKey(run)
			if err != nil {
				return nil, nil, err
			}
			candidates = append(candidates, key)
		}
	} else {
		objs, err := bucket.List(ctx, job.Layout.Prefix(), "/"+ManifestName)
		if err != nil {
			return nil, nil, err
		}
		slices.SortFunc(objs, func(a, b sinks.ObjectInfo) int { return b.ModTime.Compare(a.ModTime) })
		for _, o := range objs {
			candidates = append(candidates, o.Key)
		}
	}
	var out []*Manifest
	var keys []string
	for _, key := range candidates {
		if len(out) == n {
			break
		}
		data, err := bucket.ReadAll(ctx, key)
		if sinks.IsNotFound(err) {
			continue // not exported (yet)
		}
		if err != nil {
			return nil, nil, err
		}
		var m Manifest
		if err := json.Unmarshal(data, &m); err != nil || m.Job != job.Name {
			continue // another job's, or not ours
		}
		out = append(out, &m)
		keys = append(keys, key)
	}
	return out, keys, nil
}

// RecentExports returns up to n of job's most recent exports found in its
// bucket (from their manifests), newest first.
func (r *Runner) RecentExports(ctx context.Context, job *Job, n int) ([]Export, error) {
	ms, keys, err := r.recent(ctx, job, n)
	if err != nil {
		return nil, err
	}
	out := make([]Export, len(ms))
	for i, m := range ms {
		out[i] = ExportOf(m, keys[i])
	}
	return out, nil
}
