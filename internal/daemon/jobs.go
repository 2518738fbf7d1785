package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/pipeline"
)

// applyReruns applies w's declared reruns each time a pass of the job
// asks for it (pipeline.Runner.ApplyReruns: each entry once, across
// replicas), beside the job's passes: new runs keep their latency while a
// backfill of any size runs. A failure is logged, and the next pass asks
// again.
func (d *Daemon) applyReruns(ctx, work context.Context, w *worker) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.reruns:
		}
		err := func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					d.Metrics.panicked(w.job.Name)
					err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
				}
			}()
			return d.Runner.ApplyReruns(work, w.job)
		}()
		if err != nil && ctx.Err() == nil {
			d.logger().Warn("declared reruns not applied yet; the next pass tries again", "job", w.job.Name, "err", err)
		}
	}
}

// runJob runs one pass of a job; a panic fails the pass, not the daemon.
func (d *Daemon) runJob(ctx context.Context, w *worker) {
	defer func() {
		if p := recover(); p != nil {
			d.Metrics.panicked(w.job.Name)
			d.logger().Error("panic in export; the run is marked failed", "job", w.job.Name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		}
	}()
	job := w.job
	if !d.checkJob(ctx, w) {
		return
	}
	var err error
	failedUnits := 0 // each already logged as "export failed", with its unit
	if job.Mode == config.ModeFull {
		w.mu.Lock()
		slot := w.slot
		w.slot = time.Time{}
		w.mu.Unlock()
		if slot.IsZero() {
			return
		}
		dates := []string{slot.In(job.Location).Format(time.DateOnly)}
		if job.Catchup == config.CatchupAll {
			dates = nil
			for _, s := range prevSlots(job, slot, maxCatchup) {
				dates = append([]string{s.In(job.Location).Format(time.DateOnly)}, dates...)
			}
			dates = dedupe(dates)
		}
		for _, date := range dates {
			var res pipeline.Result
			res, err = d.Runner.Full(ctx, job, date)
			failedUnits += res.Failed
			if err != nil {
				break
			}
		}
	} else {
		w.mu.Lock()
		first := w.first
		w.first = nil
		w.mu.Unlock()
		for _, id := range first {
			if _, err := d.Runner.ExportPending(ctx, job, id); err != nil && ctx.Err() == nil {
				d.logger().Debug("notified run not exported first; the pass looks at every run", "job", job.Name, "run_id", id, "err", err)
			}
		}
		var res pipeline.Result
		res, err = d.Runner.Pass(ctx, job)
		failedUnits = res.Failed
	}
	if job.Mode == config.ModePerRun && ctx.Err() == nil {
		d.recountRecent(ctx, w)
	}
	if len(job.Reruns) > 0 {
		select {
		case w.reruns <- struct{}{}:
		default: // already asked
		}
	}
	if _, ok := errors.AsType[*pipeline.PanicError](err); ok {
		d.Metrics.panicked(job.Name) // the unit's failure is logged with the stack
	}
	switch {
	case err != nil && ctx.Err() == nil:
		d.Metrics.passFailed(job.Name, err, d.now())
		if w.failingSince.IsZero() {
			w.failingSince = d.now()
		}
		if failedUnits > 0 {
			d.logger().Warn("job pass failed; the next tick retries", "job", job.Name, "reason", pipeline.FailureReason(err), "failed_units", failedUnits)
		} else {
			d.logger().Warn("job pass failed; the next tick retries", "job", job.Name, "reason", pipeline.FailureReason(err), "err", err)
		}
	case err == nil:
		d.Metrics.passSucceeded(job.Name)
		if !w.failingSince.IsZero() {
			d.logger().Info("job recovered: a pass succeeded again", "job", job.Name,
				"failing_for", d.now().Sub(w.failingSince).Round(time.Second))
			w.failingSince = time.Time{}
		}
	}
}

// checkJob runs d.Check before w's first pass: false (the pass does not
// run) while it fails. A failure counts as a failed pass with its reason
// (database when the source cannot be reached, schema when it lacks what
// the job needs), is logged when it first happens or changes, and the
// check is tried again after CheckRetry, keeping a full job's slot.
func (d *Daemon) checkJob(ctx context.Context, w *worker) bool {
	if d.Check == nil || w.checked {
		return true
	}
	err := d.Check(ctx, w.job)
	if err == nil {
		w.checked = true
		if w.checkErr != "" {
			d.logger().Info("job checked against the source: it runs again", "job", w.job.Name)
			w.checkErr = ""
		}
		return true
	}
	if ctx.Err() != nil {
		return false
	}
	d.Metrics.passFailed(w.job.Name, err, d.now())
	if w.failingSince.IsZero() {
		w.failingSince = d.now()
	}
	retry := cmp.Or(d.CheckRetry, time.Minute)
	if msg := err.Error(); msg != w.checkErr {
		w.checkErr = msg
		d.logger().Error("job cannot run: the check against the source failed; the other jobs run, and this one is checked again",
			"job", w.job.Name, "reason", pipeline.FailureReason(err), "retry_in", retry, "err", err)
	}
	time.AfterFunc(retry, func() {
		if ctx.Err() == nil {
			d.fire(w, time.Time{}, "check retry")
		}
	})
	return false
}

// recountWindow is how long after its export the daemon checks that a
// run still holds the rows it published.
const recountWindow = time.Hour

// recountRecent compares the rows of the runs this process exported in
// the last recountWindow with the database (one count query, no bucket
// request) and reports each run whose sellers changed after its export
// once: a WARN naming the rerun that repairs it and
// sellersnap_rows_changed_after_export_total. It never rewrites anything.
func (d *Daemon) recountRecent(ctx context.Context, w *worker) {
	var recent []pipeline.Export
	for _, e := range d.Metrics.History(w.job.Name) {
		if e.RunID != "" && e.Outcome == "success" && d.now().Sub(e.At) <= recountWindow && !w.warnedRows[e.RunID] {
			recent = append(recent, e)
		}
	}
	mm, err := d.Runner.Recount(ctx, w.job, recent)
	if err != nil {
		d.logger().Debug("could not recount the recent exports", "job", w.job.Name, "err", err)
		return
	}
	for _, m := range mm {
		if w.warnedRows == nil {
			w.warnedRows = map[string]bool{}
		}
		w.warnedRows[m.RunID] = true
		d.Metrics.rowsChangedAfterExport(w.job.Name)
		d.logger().Warn("sellers of a run changed after its export",
			"why", "the collector marked the run completed before its sellers were committed (README, Source contract); the published files stay as they are",
			"job", w.job.Name, "run_id", m.RunID, "org_id", m.OrgID, "manifest_rows", m.Published, "database_rows", m.Now,
			"repair", "sellersnap rerun -job "+w.job.Name+" -run "+m.RunID)
	}
}

// maxCatchup bounds how many missed slots catchup: all exports.
const maxCatchup = 31

// prevSlots returns up to n schedule slots at or before t, newest first.
func prevSlots(job *pipeline.Job, t time.Time, n int) []time.Time { return job.PrevSlots(t, n) }

func dedupe(s []string) []string {
	var out []string
	for _, v := range s {
		if len(out) == 0 || out[len(out)-1] != v {
			out = append(out, v)
		}
	}
	return out
}
