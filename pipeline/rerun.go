package pipeline

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// Selection is what a rerun exports again, as config.CheckSelectors
// checks it: run ids (per_run jobs), a range of dates (both inclusive, in
// the job's time zone: the days the runs completed on, or the snapshot
// dates of a full job), limited to some orgs.
type Selection struct {
	Runs      []string
	From, To  string
	Orgs      []string
	AllowPast bool // full jobs: dates before today get today's rows
	// AsOf is the date (YYYY-MM-DD, the job's time zone) the date rules
	// judge the selection on: a declared rerun is judged on the day it was
	// first applied, so that resuming it after midnight is not refused.
	// Empty: today.
	AsOf string
}

// String describes s for logs and records.
func (s Selection) String() string {
	var parts []string
	if len(s.Runs) > 0 {
		parts = append(parts, "runs "+strings.Join(s.Runs, ","))
	}
	if s.From != "" {
		parts = append(parts, "from "+s.From+" to "+s.To)
	}
	if len(s.Orgs) > 0 {
		parts = append(parts, "orgs "+strings.Join(s.Orgs, ","))
	}
	return strings.Join(parts, " ")
}

// RerunOptions tune RerunSelection.
type RerunOptions struct {
	// ID is recorded in every manifest the rerun writes; a unit whose
	// manifest already carries it is skipped, so a rerun stopped half-way
	// resumes where it was. "" rewrites every unit.
	ID string
	// Progress, when set, is called after each unit.
	Progress func(RerunProgress)
}

// RerunProgress is where a rerun stands.
type RerunProgress struct {
	Total, Done, Resumed, Failed, Busy int
	Rows                               int64
	Elapsed                            time.Duration
}

// RerunResult is what a rerun did.
type RerunResult struct {
	Result
	Total int
	// Resumed units already carried the rerun's id (an earlier attempt
	// wrote them) and were left alone; ResumedRows are their rows.
	Resumed     int
	ResumedRows int64
	// Busy units were being exported by another process and were left
	// for the next attempt.
	Busy int
	// Removed are the manifests of other exports of the runs named by id
	// (a run exported twice before runs were held once), removed with
	// their files and table partitions.
	Removed []string
}

// Complete reports whether every selected unit now carries the rerun.
func (r RerunResult) Complete() bool { return r.Failed == 0 && r.Busy == 0 }

// PlanRerun says what RerunSelection would rewrite, without writing.
func (r *Runner) PlanRerun(ctx context.Context, job *Job, sel Selection) ([]Planned, error) {
	units, err := r.rerunUnits(ctx, job, sel)
	if err != nil {
		return nil, err
	}
	var counts map[string]int64
	if job.Mode == config.ModeFull {
		counts, err = r.Source.CountByOrg(ctx, job.filter)
	} else {
		runs := make([]sources.Run, len(units))
		for i, u := range units {
			runs[i] = *u.run
		}
		counts, err = r.Source.CountByRun(ctx, runs, job.filter)
	}
	if err != nil {
		return nil, err
	}
	return planned(job, units, counts)
}

// RerunSelection exports every unit sel selects again, oldest first, each
// under its lock and atomically as any export (a unit is never left
// without a valid manifest). A unit that fails does not stop the others.
func (r *Runner) RerunSelection(ctx context.Context, job *Job, sel Selection, opts RerunOptions) (RerunResult, error) {
	units, err := r.rerunUnits(ctx, job, sel)
	if err != nil {
		return RerunResult{}, err
	}
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return RerunResult{}, err
	}
	res := RerunResult{Total: len(units)}
	start := time.Now()
	var rows int64
	var errs []error
	for _, u := range units {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		u.rerunID = opts.ID
		if opts.ID != "" {
			m, err := r.carriesRerun(ctx, bucket, u, opts.ID)
			if err != nil {
				res.Failed++
				errs = append(errs, unitError(u, err))
				continue
			}
			if m != nil {
				res.Resumed++
				res.ResumedRows += m.Rows
				continue
			}
		}
		var m *Manifest
		err := r.retry(ctx, job.Name, u.logAttrs(), func() error {
			return guard(func() error {
				var err error
				m, err = r.exportLocked(ctx, bucket, u, true)
				return err
			})
		})
		switch {
		case errors.Is(err, errExportedElsewhere):
			res.Busy++
			r.logger().Warn("another process is exporting this unit; the rerun leaves it for its next attempt", u.logAttrs()...)
		case err != nil:
			res.Failed++
			r.failed(u, err)
			r.logger().Error("rerun failed", append(u.logAttrs(), "err", err)...)
			errs = append(errs, unitError(u, err))
		default:
			res.Exported = append(res.Exported, m)
			rows += m.Rows
		}
		if opts.Progress != nil {
			opts.Progress(RerunProgress{Total: res.Total, Done: len(res.Exported) + res.Resumed + res.Failed + res.Busy,
				Resumed: res.Resumed, Failed: res.Failed, Busy: res.Busy, Rows: rows, Elapsed: time.Since(start)})
		}
	}
	if len(sel.Runs) > 0 {
		// A run named by id is held once: its other exports go (held.go).
		removed, err := r.dropDuplicates(ctx, bucket, job, res.Exported)
		res.Removed = removed
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

// carriesRerun returns u's manifest if rerun id wrote it, else nil.
func (r *Runner) carriesRerun(ctx context.Context, bucket *sinks.Bucket, u unit, id string) (*Manifest, error) {
	key, err := u.manifestKey()
	if err != nil {
		return nil, err
	}
	m, err := readManifest(ctx, bucket, key)
	if sinks.IsNotFound(err) {
		return nil, nil
	}
	if err != nil || m.Job != u.job.Name || m.RerunID != id {
		return nil, err
	}
	return m, nil
}

// rerunUnits resolves sel to units: per_run jobs the runs named and those
// completed on the days from..to, full jobs every org (or those named)
// for each date; oldest first.
func (r *Runner) rerunUnits(ctx context.Context, job *Job, sel Selection) ([]unit, error) {
	orgs := map[string]bool{}
	for _, o := range sel.Orgs {
		orgs[strings.ToLower(o)] = true
	}
	var from, to time.Time
	if sel.From != "" {
		var err1, err2 error
		from, err1 = time.ParseInLocation(time.DateOnly, sel.From, job.Location)
		to, err2 = time.ParseInLocation(time.DateOnly, sel.To, job.Location)
		if err := errors.Join(err1, err2); err != nil || to.Before(from) {
			return nil, fmt.Errorf("job %s: dates %q to %q: want YYYY-MM-DD, from not after to", job.Name, sel.From, sel.To)
		}
	}
	if job.Mode == config.ModeFull {
		if len(sel.Runs) > 0 || sel.From == "" {
			return nil, fmt.Errorf("job %s is a full job: rerun dates (from, to)", job.Name)
		}
		today := cmp.Or(sel.AsOf, r.now().In(job.Location).Format(time.DateOnly))
		if sel.To > today {
			return nil, &FutureDateError{Job: job.Name, Date: sel.To, Today: today, Location: job.Location.String()}
		}
		if sel.From < today && !sel.AllowPast {
			return nil, fmt.Errorf("job %s: %s is before today (%s in %s): a rerun of a past date needs allow_past (today's rows under that date)", job.Name, sel.From, today, job.Location)
		}
		all, err := r.orgs(ctx, job)
		if err != nil {
			return nil, err
		}
		var pick []string
		for _, o := range all {
			if len(orgs) == 0 || orgs[strings.ToLower(o)] {
				pick = append(pick, o)
				delete(orgs, strings.ToLower(o))
			}
		}
		if len(orgs) > 0 {
			return nil, fmt.Errorf("job %s: no live sellers in org %s", job.Name, strings.Join(slices.Sorted(maps.Keys(orgs)), ", "))
		}
		var units []unit
		for d := from; !d.After(to); d = d.AddDate(0, 0, 1) {
			for _, o := range pick {
				units = append(units, newOrgUnit(job, o, d.Format(time.DateOnly)))
			}
		}
		return units, nil
	}

	var runs []sources.Run
	for _, id := range sel.Runs {
		run, err := r.Source.RunByID(ctx, id)
		if err != nil {
			return nil, err
		}
		runs = append(runs, run)
	}
	if sel.From != "" {
		between, err := r.Source.CompletedRunsBetween(ctx, from, to.AddDate(0, 0, 1))
		if err != nil {
			return nil, err
		}
		runs = append(runs, between...)
	}
	if len(orgs) > 0 {
		runs = slices.DeleteFunc(runs, func(run sources.Run) bool { return !orgs[strings.ToLower(run.OrgID)] })
	}
	slices.SortFunc(runs, func(a, b sources.Run) int {
		return cmp.Or(a.CompletedAt.Compare(b.CompletedAt), strings.Compare(a.ID, b.ID))
	})
	runs = slices.CompactFunc(runs, func(a, b sources.Run) bool { return a.ID == b.ID })
	units := make([]unit, len(runs))
	for i, run := range runs {
		units[i] = newRunUnit(job, run)
	}
	return units, nil
}

// RerunHeld reports whether a process is applying d now (holds its lock):
// a record that says running is true only then.
func (r *Runner) RerunHeld(ctx context.Context, job *Job, d DeclaredRerun) (bool, error) {
	release, _, ok, err := r.lock(ctx, "rerun/"+job.Name+"/"+d.ID)
	if err != nil {
		return false, err
	}
	if ok {
		release()
	}
	return !ok, nil
}

// ReadRerunRecord returns the record of declared rerun d of job (nil if
// there is none yet), and a RerunChangedError when the entry no longer
// selects what the record says.
func (r *Runner) ReadRerunRecord(ctx context.Context, job *Job, d DeclaredRerun) (*RerunRecord, error) {
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return nil, err
	}
	key := RerunRecordKey(job, d.ID)
	data, err := bucket.ReadAll(ctx, key)
	if sinks.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rec RerunRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	if rec.Selectors != d.Selectors {
		return &rec, &RerunChangedError{Job: job.Name, ID: d.ID, Was: rec.Selectors, Now: d.Selectors, RecordKey: key}
	}
	return &rec, nil
}

// ApplyReruns applies job's declared reruns that are not applied yet, each
// under a lock of its own (replicas skip one another's) and resumable (a
// unit already rewritten by the entry is skipped), and records each in
// the bucket. A changed entry fails with a RerunChangedError.
func (r *Runner) ApplyReruns(ctx context.Context, job *Job) error {
	var errs []error
	for _, d := range job.Reruns {
		if ctx.Err() != nil {
			break
		}
		if err := r.applyRerun(ctx, job, d); err != nil {
			errs = append(errs, fmt.Errorf("rerun %s: %w", d.ID, err))
		}
	}
	return errors.Join(errs...)
}

func (r *Runner) applyRerun(ctx context.Context, job *Job, d DeclaredRerun) error {
	rec, err := r.ReadRerunRecord(ctx, job, d)
	if err != nil || rec.done() {
		return err
	}
	release, _, ok, err := r.lock(ctx, "rerun/"+job.Name+"/"+d.ID)
	if err != nil || !ok {
		return err // another process is applying it
	}
	defer release()
	// Read again under the lock: another process may have finished it.
	if rec, err = r.ReadRerunRecord(ctx, job, d); err != nil || rec.done() {
		return err
	}
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return err
	}
	now := r.now().UTC()
	if rec == nil {
		rec = &RerunRecord{RecordVersion: 1, ID: d.ID, Job: job.Name, Selectors: d.Selectors, Selection: d.Selection.String(),
			Reason: d.Reason, StartedAt: now}
	}
	host, _ := os.Hostname()
	rec.Status, rec.Attempts, rec.By, rec.Version, rec.UpdatedAt = RerunRunning, rec.Attempts+1, fmt.Sprintf("%s pid %d", host, os.Getpid()), r.Version, now
	if err := r.putRerunRecord(ctx, bucket, job, rec); err != nil {
		return err
	}
	r.logger().Info("applying a declared rerun", "job", job.Name, "rerun", d.ID, "selection", d.Selection.String(), "reason", d.Reason, "attempt", rec.Attempts)
	lastLog := time.Now()
	sel := d.Judged(job, rec)
	res, runErr := r.RerunSelection(ctx, job, sel, RerunOptions{ID: d.ID, Progress: func(p RerunProgress) {
		if time.Since(lastLog) < 10*time.Second && p.Done < p.Total {
			return
		}
		lastLog = time.Now()
		r.logger().Info("rerun progress", append([]any{"job", job.Name, "rerun", d.ID}, progressAttrs(p)...)...)
	}})
	rec.Units, rec.Failed, rec.Busy, rec.UpdatedAt = res.Total, res.Failed, res.Busy, r.now().UTC()
	// Counted from the units, so that an attempt killed before it could
	// write the record is counted by the next.
	rec.Rewritten, rec.Rows = res.Resumed+len(res.Exported), res.ResumedRows
	for _, m := range res.Exported {
		rec.Rows += m.Rows
	}
	rec.LastError = ""
	switch {
	case runErr == nil && res.Complete():
		rec.Status, rec.FinishedAt = RerunApplied, rec.UpdatedAt
	case ctx.Err() != nil:
		rec.Status = RerunIncomplete // stopped: the next start resumes it
		rec.LastError = fmt.Sprintf("stopped before it finished (%v): the process was asked to stop; the next start resumes it", context.Cause(ctx))
	case res.Total == 0 && errors.Is(runErr, sources.ErrRunNotFound):
		rec.Status, rec.LastError = RerunRefused, runErr.Error()
		r.logger().Error("declared rerun refused: it selects a run the database does not have; it will not be tried again (declare a new entry)",
			"job", job.Name, "rerun", d.ID, "err", runErr)
	default:
		rec.Status = RerunIncomplete
		if runErr != nil {
			rec.LastError = runErr.Error()
		}
	}
	if err := r.putRerunRecord(context.WithoutCancel(ctx), bucket, job, rec); err != nil {
		return err
	}
	r.observer().RerunApplied(job.Name, rec.Status)
	if rec.Status == RerunRefused {
		runErr = nil // said once, above and in the record
	}
	r.logger().Info("declared rerun "+rec.Status, "job", job.Name, "rerun", d.ID, "units", res.Total, "rewritten", len(res.Exported),
		"resumed", res.Resumed, "failed", res.Failed, "busy", res.Busy)
	return runErr
}

func (r *Runner) putRerunRecord(ctx context.Context, bucket *sinks.Bucket, job *Job, rec *RerunRecord) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return bucket.Put(ctx, RerunRecordKey(job, rec.ID), append(data, '\n'), "application/json", nil)
}
