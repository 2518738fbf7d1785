package pipeline

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
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
			if u.run != nil {
				// The failed rerun removed the run's manifest: the state
				// must not keep counting it as exported.
				if ferr := r.forgetExported(context.WithoutCancel(ctx), job, *u.run); ferr != nil {
					r.logger().Warn("could not record the run as pending in the export state; the next reconciliation finds it", append(u.logAttrs(), "err", ferr)...)
				}
			}
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
