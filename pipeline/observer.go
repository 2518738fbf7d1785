package pipeline

import (
	"errors"
	"fmt"
	"time"

	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sinks/iceberg"
	"github.com/sellersnap/sellersnap/sources"
)

// Observer is told what a Runner does, as it happens: the daemon's
// metrics and status page implement it. Its methods are called from
// several goroutines at once.
type Observer interface {
	// ExportStarted is called when an export of job begins; done when it
	// ends, however it ends.
	ExportStarted(job string) (done func())
	// Exported reports a published export and its manifest.
	Exported(e Export, m *Manifest)
	// ExportFailed reports a failed export (e.Error says why).
	ExportFailed(e Export)
	// Skipped reports a unit another process was exporting or had just
	// exported.
	Skipped(job string)
	// Retried reports a retry of a transient error.
	Retried(job string)
	// LatestFailed reports a latest.json that could not be updated (the
	// export itself succeeded).
	LatestFailed(job string)
	// Backlog reports the units still pending and the age of the oldest.
	Backlog(job string, n int, oldest time.Duration)
	// RerunApplied reports an attempt at a declared rerun and its status
	// after it (RerunApplied, RerunIncomplete, RerunRefused).
	RerunApplied(job, status string)
	// StateCorrected reports an export state the pass did not believe
	// (reason: clock, missing_manifest) and corrected.
	StateCorrected(job, reason string)
	// TableCommitted reports an Iceberg commit of an export: failure is ""
	// for a commit made, else why it failed (conflict, schema, cancelled,
	// error).
	TableCommitted(job, failure string)
	// TableHeadAhead reports, after each commit to the job's table, how
	// far the head it was made on was dated after the catalog's clock
	// (0 when it was not; a writer's clock ahead otherwise).
	TableHeadAhead(job string, ahead time.Duration)
}

// Export is one finished export, as an Observer and the status page see
// it.
type Export struct {
	Job      string
	RunID    string
	OrgID    string
	Date     string
	Rows     int64
	Files    int
	Duration time.Duration
	Outcome  string // success or failure
	Manifest string // its key
	Error    string
	At       time.Time
}

// ExportOf describes the published export of manifest m at key.
func ExportOf(m *Manifest, key string) Export {
	return Export{Job: m.Job, RunID: m.RunID, OrgID: m.OrgID, Date: m.Date, Rows: m.Rows, Files: len(m.Files),
		Duration: max(m.ExportedAt.Sub(m.Snapshot.ReadAt), 0), Outcome: "success", Manifest: key, At: m.ExportedAt}
}

// FailureReason sorts an error of a pass or an export: bucket, conflict
// (another job's manifest), schema (drift), database, or other.
func FailureReason(err error) string {
	var be *sinks.BucketError
	var se *SchemaChangeError
	var mc *sources.MissingColumnsError
	var sm *SourceMismatchError
	var ts *iceberg.SchemaChangeError
	var te *TableError
	switch {
	case errors.As(err, &be):
		return "bucket"
	case isConflict(err):
		return "conflict"
	case errors.As(err, &se), errors.As(err, &mc), errors.As(err, &sm), errors.As(err, &ts):
		return "schema"
	case errors.As(err, &te):
		return "table"
	case sources.IsDatabaseError(err):
		return "database"
	}
	return "other"
}

// SourceMismatchError says the source lacks what a job needs (a column, a
// grant, a type it can export), found by the check before the job's first
// pass: schema drift, with the fix.
type SourceMismatchError struct {
	Job string
	Err error
}

func (e *SourceMismatchError) Error() string {
	return fmt.Sprintf("job %s: the source does not have what it needs: %v", e.Job, e.Err)
}
func (e *SourceMismatchError) Unwrap() error { return e.Err }

// FailureReasons are the values FailureReason returns.
func FailureReasons() []string {
	return []string{"bucket", "database", "schema", "conflict", "table", "other"}
}

// nopObserver observes nothing (a Runner without an Observer).
type nopObserver struct{}

func (nopObserver) ExportStarted(string) func()          { return func() {} }
func (nopObserver) Exported(Export, *Manifest)           {}
func (nopObserver) ExportFailed(Export)                  {}
func (nopObserver) Skipped(string)                       {}
func (nopObserver) Retried(string)                       {}
func (nopObserver) LatestFailed(string)                  {}
func (nopObserver) RerunApplied(string, string)          {}
func (nopObserver) StateCorrected(string, string)        {}
func (nopObserver) TableCommitted(string, string)        {}
func (nopObserver) TableHeadAhead(string, time.Duration) {}
func (nopObserver) Backlog(string, int, time.Duration)   {}
