package pipeline

import (
	"fmt"
	"path"
	"time"
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
