package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"time"

	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// DeclaredRerun is an entry of the config's reruns: section, for the job
// it names (config.Rerun).
type DeclaredRerun struct {
	ID     string
	Reason string
	Selection
	// Selectors is config.Rerun.Selectors: what the record must match.
	Selectors string
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

// Judged is d's selection with the date its date rules are judged on: the
// day (in job's time zone) it was first applied, as rec says, or today for
// an entry not applied yet (rec nil). An entry valid when it was applied
// stays valid after midnight.
func (d DeclaredRerun) Judged(job *Job, rec *RerunRecord) Selection {
	sel := d.Selection
	if rec != nil && !rec.StartedAt.IsZero() {
		sel.AsOf = rec.StartedAt.In(job.Location).Format(time.DateOnly)
	}
	return sel
}

// RerunRecord is what the bucket keeps of a declared rerun, at
// RerunRecordKey: the entry, who applied it and when, and the outcome.
type RerunRecord struct {
	RecordVersion int    `json:"record_version"`
	ID            string `json:"id"`
	Job           string `json:"job"`
	Selectors     string `json:"selectors"`
	Selection     string `json:"selection"`
	Reason        string `json:"reason"`
	// Status is "running" (an attempt started; a process that died left
	// it so, and the next attempt resumes), "incomplete" (units failed or
	// were busy; the next pass retries them) or "applied" (for good).
	Status     string    `json:"status"`
	Attempts   int       `json:"attempts"`
	By         string    `json:"by"` // host and process of the last attempt
	Version    string    `json:"version"`
	StartedAt  time.Time `json:"started_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	Units      int       `json:"units"`
	Rewritten  int       `json:"rewritten"` // units whose manifest carries the rerun, after the last attempt
	Failed     int       `json:"failed"`    // in the last attempt
	Busy       int       `json:"busy"`      // in the last attempt
	Rows       int64     `json:"rows"`      // of the units rewritten
	LastError  string    `json:"last_error,omitempty"`
}

// Statuses of a RerunRecord. running is written when an attempt starts
// and is true only while its process holds the entry's lock (RerunHeld);
// an attempt that stops for any reason writes incomplete and why. refused:
// the entry selects a run the database does not have; it is not tried
// again (declare a new entry).
const (
	RerunRunning    = "running"
	RerunIncomplete = "incomplete"
	RerunApplied    = "applied"
	RerunRefused    = "refused"
)

// done reports whether rec needs no further attempt.
func (rec *RerunRecord) done() bool {
	return rec != nil && (rec.Status == RerunApplied || rec.Status == RerunRefused)
}

// RerunRecordKey is where job's record of declared rerun id lives: beside
// its export state, in a folder readers of the data skip.
func RerunRecordKey(job *Job, id string) string {
	return path.Join(job.Layout.Prefix(), "_sellersnap", job.Name, "reruns", id+".json")
}

// RerunChangedError says a reruns: entry was changed after it was applied
// (or started): its id stands for what it selected then.
type RerunChangedError struct {
	Job, ID   string
	Was, Now  string
	RecordKey string
}

func (e *RerunChangedError) Error() string {
	return fmt.Sprintf("job %s: rerun %q was applied with selectors %s and now selects %s; give the new selection a new id (the record is %s)",
		e.Job, e.ID, e.Was, e.Now, e.RecordKey)
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

// progressAttrs are the log attributes of p: units, rows/s and an ETA.
func progressAttrs(p RerunProgress) []any {
	attrs := []any{"units_done", p.Done, "units", p.Total, "rows", p.Rows, "elapsed", p.Elapsed.Round(time.Second)}
	if s := p.Elapsed.Seconds(); s > 0 {
		attrs = append(attrs, "rows_per_sec", int64(float64(p.Rows)/s))
	}
	if p.Done > 0 && p.Done < p.Total {
		eta := time.Duration(float64(p.Elapsed) / float64(p.Done) * float64(p.Total-p.Done))
		attrs = append(attrs, "eta", eta.Round(time.Second))
	}
	return attrs
}

// ProgressLine renders p for a terminal (rerun's progress on stderr).
func ProgressLine(p RerunProgress) string {
	s := fmt.Sprintf("%d/%d units, %d rows", p.Done, p.Total, p.Rows)
	if sec := p.Elapsed.Seconds(); sec > 0 {
		s += fmt.Sprintf(", %.0f rows/s", float64(p.Rows)/sec)
	}
	if p.Done > 0 && p.Done < p.Total {
		s += ", ETA " + time.Duration(float64(p.Elapsed)/float64(p.Done)*float64(p.Total-p.Done)).Round(time.Second).String()
	}
	if p.Resumed > 0 {
		s += fmt.Sprintf(", %d already done", p.Resumed)
	}
	if p.Failed > 0 {
		s += fmt.Sprintf(", %d failed", p.Failed)
	}
	return s
}
