package pipeline

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

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
//
// It first settles what replacing attempts (reruns) left between two
// exports (settleIntents).
func (r *Runner) Pass(ctx context.Context, job *Job) (Result, error) {
	settled, serr := r.settleIntents(ctx, job)
	res, err := r.pass(ctx, job)
	res.Exported = append(settled.Exported, res.Exported...)
	res.Failed += settled.Failed
	return res, errors.Join(serr, err)
}

func (r *Runner) pass(ctx context.Context, job *Job) (Result, error) {
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
	if done, err := r.owners.exported(ctx, bucket, job, key); done || err != nil && !isConflict(err) {
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
		if err := r.exportCounted(ctx, bucket, u, force, &res); err != nil {
			failed = append(failed, u)
			errs = append(errs, err)
		}
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
		done, err := r.owners.exported(ctx, bucket, job, key)
		if err != nil && !isConflict(err) {
			return res, err
		}
		if done && !force {
			continue
		}
		r.observer().Backlog(job.Name, len(orgs)-i, 0)
		if err != nil { // a conflict fails the org without an attempt
			err = r.count(&res, u, nil, err)
		} else {
			err = r.exportCounted(ctx, bucket, u, force, &res)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if ctx.Err() == nil {
		r.observer().Backlog(job.Name, res.Failed, 0)
	}
	return res, errors.Join(errs...)
}

// exportCounted exports u under its lock (exportLocked), retrying
// transient errors, and counts the outcome in res (count).
func (r *Runner) exportCounted(ctx context.Context, bucket *sinks.Bucket, u unit, force bool, res *Result) error {
	var m *Manifest
	err := r.retry(ctx, u.job.Name, u.logAttrs(), func() error {
		return guard(func() error {
			var err error
			m, err = r.exportLocked(ctx, bucket, u, force)
			return err
		})
	})
	return r.count(res, u, m, err)
}

// count adds the outcome of an export of u to res: skipped (another
// process has it), failed (reported, and returned naming the unit) or
// exported.
func (r *Runner) count(res *Result, u unit, m *Manifest, err error) error {
	var held *heldError
	switch {
	case errors.As(err, &held):
		res.Held = append(res.Held, held.m)
	case errors.Is(err, errExportedElsewhere):
		res.Skipped++
		r.observer().Skipped(u.job.Name)
	case err != nil:
		res.Failed++
		r.failed(u, err)
		r.logFailure(u, err)
		return unitError(u, err)
	default:
		res.Exported = append(res.Exported, m)
	}
	return nil
}

// exportLocked reads one unit (a run, or an org's snapshot for a date) in
// its own snapshot, under the unit's lock (withLock), after settling what
// an earlier attempt left.
func (r *Runner) exportLocked(ctx context.Context, bucket *sinks.Bucket, u unit, force bool) (*Manifest, error) {
	return r.withLock(ctx, u, func(u unit, snap *sources.Snapshot) (*Manifest, error) {
		held, hm, err := r.heldAt(ctx, bucket, u)
		if err != nil {
			return nil, err
		}
		if hm != nil {
			key, _ := held.manifestKey()
			if !force {
				r.logger().Warn("the run's completed_at moved to another day after its export: the export stays under the date of its first export (README, \"Reruns and backfills\"); a rerun rewrites it there",
					append(u.logAttrs(), "exported_under", held.date, "completed_on_now", u.date, "manifest", key)...)
				return nil, &heldError{m: hm, key: key}
			}
			u = held
		}
		if m, err := r.settle(ctx, bucket, u, force); m != nil || err != nil {
			return m, err
		}
		if snap == nil {
			s, err := r.Source.Snapshot(ctx)
			if err != nil {
				return nil, err
			}
			defer s.Close(context.WithoutCancel(ctx))
			snap = s
		}
		return (&attempt{r: r, snap: snap, bucket: bucket, u: u, force: force}).run(ctx)
	})
}

// withLock runs fn with u's lock held (u.held set): with PostgresLocker a
// lock of a snapshot's own transaction (pg_try_advisory_xact_lock: one
// connection per export, held until the snapshot closes, and a unit
// another process holds costs one short transaction), which fn gets;
// else the Locker's, and fn gets no snapshot. A unit another process
// holds is errExportedElsewhere.
func (r *Runner) withLock(ctx context.Context, u unit, fn func(u unit, snap *sources.Snapshot) (*Manifest, error)) (*Manifest, error) {
	if _, ok := r.Locker.(pgLocker); ok {
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
		return fn(u, snap)
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
	return fn(u, nil)
}

// settleIntents settles, each under its unit's lock, the intents that
// replacing attempts of job left (killed, or stopped between their two
// exports): units nothing else would export again. Those rolled forward
// are in the result.
func (r *Runner) settleIntents(ctx context.Context, job *Job) (Result, error) {
	var res Result
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return res, err
	}
	ins, err := pendingIntents(ctx, bucket, job)
	errs := []error{err}
	for _, in := range ins {
		u := in.unit(job)
		m, err := r.withLock(ctx, u, func(u unit, _ *sources.Snapshot) (*Manifest, error) {
			return (&attempt{r: r, bucket: bucket, u: u}).settle(ctx)
		})
		switch {
		case errors.Is(err, errExportedElsewhere):
		case err != nil:
			res.Failed++
			r.failed(u, err)
			r.logFailure(u, err)
			errs = append(errs, unitError(u, err))
		case m != nil:
			res.Exported = append(res.Exported, m)
		}
	}
	return res, errors.Join(errs...)
}

// settle runs once the unit's lock is held, before anything else: it
// settles the intent a replacing attempt of the unit left (intent.go),
// then rechecks. A rolled-forward unit is exported: its manifest is
// returned unless force (a rerun goes on to export it again).
func (r *Runner) settle(ctx context.Context, bucket *sinks.Bucket, u unit, force bool) (*Manifest, error) {
	m, err := (&attempt{r: r, bucket: bucket, u: u}).settle(ctx)
	if err != nil || m != nil && !force {
		return m, err
	}
	return nil, r.recheck(ctx, bucket, u, force)
}

// recheck: another process may have finished the unit between listing
// and locking (errExportedElsewhere), and a rerun must not overwrite
// another job's unit (a ConflictError).
func (r *Runner) recheck(ctx context.Context, bucket *sinks.Bucket, u unit, force bool) error {
	key, err := u.manifestKey()
	if err != nil {
		return err
	}
	done, err := r.owners.exported(ctx, bucket, u.job, key)
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

// discover finds the pending runs of a per_run job: from the state when
// there is a recent one, else from every completed run and every manifest.
// The database is read in one snapshot.
func (r *Runner) discover(ctx context.Context, job *Job) (*discovery, error) {
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return nil, err
	}
	d := &discovery{r: r, job: job, bucket: bucket, now: r.now(), done: map[string]bool{}}
	if err := d.readState(ctx); err != nil {
		return nil, err
	}
	snap, err := r.Source.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	defer snap.Close(context.WithoutCancel(ctx))
	d.watermark = snap.Time().Add(-watermarkLag).UTC()
	reconcile := d.prev == nil || d.now.Sub(d.prev.ReconciledAt) >= reconcileEvery
	if !reconcile {
		if why := d.prev.contradiction(d.watermark, d.now); why != "" {
			d.corrected("clock", "the export state contradicts the clock; rebuilding it from the manifests", "key", stateKey(job, d.seq), "why", why)
			reconcile = true
		}
	}
	if reconcile {
		err = d.reconcile(ctx, snap)
	} else {
		err = d.incremental(ctx, snap)
	}
	if err != nil {
		return nil, err
	}
	for _, run := range d.runs {
		if !d.done[run.ID] {
			d.pending = append(d.pending, newRunUnit(job, run))
		}
	}
	return d, nil
}
