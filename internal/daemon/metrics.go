package daemon

import (
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/pipeline"
)

// Metrics are the Prometheus metrics of a daemon and what its status page
// shows: it is the Runner's pipeline.Observer. A nil *Metrics records
// nothing.
//
//	sellersnap_runs_total{job,outcome}              exports by outcome: success, failure, skipped
//	sellersnap_rows_total{job,format}               rows written
//	sellersnap_bytes_total{job,format}              bytes written
//	sellersnap_run_duration_seconds{job}            histogram of successful export durations
//	sellersnap_last_success_timestamp_seconds{job}  Unix time of the last successful export
//	sellersnap_backlog_runs{job}                    pending runs (per_run) or orgs (full) at the last look
//	sellersnap_oldest_pending_run_age_seconds{job}  age of the oldest pending run's completed_at
//	sellersnap_retries_total{job}                   retries of transient errors
//	sellersnap_exports_in_flight{job}               exports running now
//	sellersnap_panics_total{job}                    panics recovered
//	sellersnap_ticks_coalesced_total{job}           schedule ticks merged into a queued pass
//	sellersnap_latest_failures_total{job}           latest.json pointers that could not be updated
//	sellersnap_reruns_total{job,status}             attempts at declared reruns, by status after them: applied, incomplete, running
//	sellersnap_pass_failures_total{job,reason}      passes that failed: bucket, database, schema, conflict, table, other
//	sellersnap_state_corrections_total{job,reason}  export states not believed: clock, missing_manifest
//	sellersnap_failing_since_timestamp_seconds{job} first failed pass since the last good one; 0 when OK
//	sellersnap_rows_changed_after_export_total{job} runs whose sellers changed within an hour of their export
//	sellersnap_dependency_up{dependency,job}        1 if PostgreSQL (job=""), the job's bucket or its Iceberg catalog answered the last check
//	sellersnap_schedule_interval_seconds{job,mode}  time between the job's next two ticks (for "no success in 2 × schedule")
//
// InitJobs creates every series of every job at zero, so that rate() and
// absence alerts work before anything has happened.
type Metrics struct {
	Registry *prometheus.Registry

	runs         *prometheus.CounterVec
	rows         *prometheus.CounterVec
	bytes        *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	lastSuccess  *prometheus.GaugeVec
	backlog      *prometheus.GaugeVec
	oldest       *prometheus.GaugeVec
	retries      *prometheus.CounterVec
	inFlight     *prometheus.GaugeVec
	panics       *prometheus.CounterVec
	coalesced    *prometheus.CounterVec
	latestFails  *prometheus.CounterVec
	tableCommits *prometheus.CounterVec
	headAhead    *prometheus.GaugeVec
	tableFails   *prometheus.CounterVec
	reruns       *prometheus.CounterVec
	passFails    *prometheus.CounterVec
	corrections  *prometheus.CounterVec
	rowsChanged  *prometheus.CounterVec
	failingSince *prometheus.GaugeVec
	up           *prometheus.GaugeVec
	interval     *prometheus.GaugeVec

	mu       sync.Mutex
	history  map[string][]pipeline.Export // job → newest last
	backlogs map[string]int
	oldests  map[string]time.Duration
	health   map[string]*jobHealth
	deps     map[string]bool                  // "postgres", "bucket/<job>" → up at the last check
	tables   map[string]*pipeline.TableStatus // by job: the Iceberg table at the last check
	depErrs  map[string]error                 // … → why it was down
}

// jobHealth is what the status page says of a job's passes.
type jobHealth struct {
	failingSince time.Time // zero when the last pass succeeded
	lastError    string
	lastSuccess  time.Time
}

// historySize is how many exports per job the status page keeps.
const historySize = 20

// NewMetrics registers the metrics, with Go and process collectors, in a
// registry of their own.
func NewMetrics() *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry(), history: map[string][]pipeline.Export{}, backlogs: map[string]int{},
		oldests: map[string]time.Duration{}, health: map[string]*jobHealth{}, deps: map[string]bool{}, depErrs: map[string]error{}}
	job := []string{"job"}
	m.runs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sellersnap_runs_total", Help: "Exports by outcome (success, failure, skipped)."}, []string{"job", "outcome"})
	m.rows = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sellersnap_rows_total", Help: "Rows written, per format."}, []string{"job", "format"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sellersnap_bytes_total", Help: "Bytes written, per format."}, []string{"job", "format"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sellersnap_run_duration_seconds", Help: "Duration of successful exports.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)}, job)
	m.lastSuccess = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sellersnap_last_success_timestamp_seconds", Help: "Unix time of the last successful export."}, job)
	m.backlog = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sellersnap_backlog_runs", Help: "Units (runs or orgs) pending at the last look."}, job)
	m.oldest = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sellersnap_oldest_pending_run_age_seconds", Help: "Age of the oldest pending run (since its completed_at); 0 when none."}, job)
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sellersnap_retries_total", Help: "Retries of transient errors."}, job)
	m.inFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sellersnap_exports_in_flight", Help: "Exports running now."}, job)
	m.panics = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sellersnap_panics_total", Help: "Panics recovered in exports."}, job)
	m.coalesced = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sellersnap_ticks_coalesced_total", Help: "Schedule ticks merged into an already queued pass."}, job)
	m.reruns = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sellersnap_reruns_total", Help: "Attempts at declared reruns (pipeline.yaml reruns:), by status after the attempt."}, append(slices.Clone(job), "status"))
	m.latestFails = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sellersnap_latest_failures_total", Help: "latest.json pointers that could not be updated (the export itself succeeded)."}, job)
	m.tableCommits = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sellersnap_table_commits_total", Help: "Iceberg snapshots committed (one per exported unit of a job with iceberg:)."}, job)
	m.tableFails = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sellersnap_table_commit_failures_total", Help: "Iceberg commits that failed (the unit is exported again), by reason: conflict (lost every retry to other writers), schema, cancelled, error."}, []string{"job", "reason"})
	m.headAhead = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sellersnap_table_head_ahead_seconds", Help: "How far the Iceberg table's head was dated after the catalog's clock at the job's last commit (another writer's clock ahead); 0 when it was not. Above 60 the commit took the future entries out of the table's logs (docs/iceberg.md)."}, job)
	m.rowsChanged = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sellersnap_rows_changed_after_export_total", Help: "Runs whose sellers changed within an hour after this process exported them (a breach of the source contract; rerun them)."}, job)
	m.failingSince = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sellersnap_failing_since_timestamp_seconds", Help: "Unix time of the first failed pass since the job's last good one; 0 while its last pass succeeded (or none ran yet)."}, job)
	m.corrections = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sellersnap_state_corrections_total", Help: "Export states not believed and corrected, by reason: clock (a watermark after the database's clock), missing_manifest (a run listed as exported without its manifest)."}, []string{"job", "reason"})
	m.passFails = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sellersnap_pass_failures_total", Help: "Passes of a job that failed, by reason: bucket, database, schema, conflict, table (its Iceberg catalog or commit), other."}, []string{"job", "reason"})
	m.up = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sellersnap_dependency_up", Help: "1 if the dependency answered the last check: PostgreSQL (job=\"\"), a job's bucket, or its Iceberg catalog (iceberg_catalog)."}, []string{"dependency", "job"})
	m.interval = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sellersnap_schedule_interval_seconds", Help: "Time between the job's next two schedule ticks."}, []string{"job", "mode"})
	m.Registry.MustRegister(m.runs, m.rows, m.bytes, m.duration, m.lastSuccess, m.backlog, m.oldest,
		m.retries, m.inFlight, m.panics, m.coalesced, m.latestFails, m.tableCommits, m.tableFails, m.headAhead, m.reruns, m.passFails, m.corrections, m.rowsChanged, m.failingSince, m.up, m.interval,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// outcomes of an export: every series exists from the start.
func outcomes() []string { return []string{"success", "failure", "skipped"} }

// InitJobs creates every series of jobs at zero (last success at 0: never,
// until SeedLastSuccess or an export says otherwise).
func (m *Metrics) InitJobs(jobs []*pipeline.Job) {
	if m == nil {
		return
	}
	for _, j := range jobs {
		for _, o := range outcomes() {
			m.runs.WithLabelValues(j.Name, o)
		}
		for _, f := range j.Formats {
			m.rows.WithLabelValues(j.Name, f.Name())
			m.bytes.WithLabelValues(j.Name, f.Name())
		}
		for _, r := range pipeline.FailureReasons() {
			m.passFails.WithLabelValues(j.Name, r)
		}
		if j.Mode == config.ModePerRun {
			for _, r := range []string{"clock", "missing_manifest"} {
				m.corrections.WithLabelValues(j.Name, r)
			}
			m.rowsChanged.WithLabelValues(j.Name)
		}
		m.duration.WithLabelValues(j.Name)
		m.failingSince.WithLabelValues(j.Name)
		m.lastSuccess.WithLabelValues(j.Name)
		m.backlog.WithLabelValues(j.Name)
		m.oldest.WithLabelValues(j.Name)
		m.retries.WithLabelValues(j.Name)
		m.inFlight.WithLabelValues(j.Name)
		m.panics.WithLabelValues(j.Name)
		m.coalesced.WithLabelValues(j.Name)
		m.latestFails.WithLabelValues(j.Name)
		m.tableCommits.WithLabelValues(j.Name)
		m.headAhead.WithLabelValues(j.Name)
		for _, st := range []string{pipeline.RerunApplied, pipeline.RerunIncomplete, pipeline.RerunRunning, pipeline.RerunRefused} {
			m.reruns.WithLabelValues(j.Name, st)
		}
		if j.Cron != nil {
			next := j.Cron.Next(time.Now().In(j.Location))
			m.interval.WithLabelValues(j.Name, j.Mode).Set(j.Cron.Next(next).Sub(next).Seconds())
		}
	}
}

// SeedLastSuccess sets job's last success to at, unless a later one is set.
func (m *Metrics) SeedLastSuccess(job string, at time.Time) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if h := m.healthOf(job); at.After(h.lastSuccess) {
		h.lastSuccess = at
		m.lastSuccess.WithLabelValues(job).Set(float64(at.Unix()))
	}
}

// healthOf returns job's health record; m.mu must be held.
func (m *Metrics) healthOf(job string) *jobHealth {
	h := m.health[job]
	if h == nil {
		h = &jobHealth{}
		m.health[job] = h
	}
	return h
}

// maxErrorShown bounds an error on the status page.
const maxErrorShown = 500

func (m *Metrics) passSucceeded(job string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.healthOf(job)
	h.failingSince, h.lastError = time.Time{}, ""
	m.failingSince.WithLabelValues(job).Set(0)
}

func (m *Metrics) passFailed(job string, err error, at time.Time) {
	if m == nil {
		return
	}
	m.passFails.WithLabelValues(job, pipeline.FailureReason(err)).Inc()
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.healthOf(job)
	if h.failingSince.IsZero() {
		h.failingSince = at
		m.failingSince.WithLabelValues(job).Set(float64(at.Unix()))
	}
	h.lastError = err.Error()
	if len(h.lastError) > maxErrorShown {
		h.lastError = h.lastError[:maxErrorShown] + "…"
	}
}

func (m *Metrics) dependencyUp(dependency, job string, err error) (changed bool) {
	if m == nil {
		return false
	}
	up := err == nil
	v := 0.0
	if up {
		v = 1
	}
	m.up.WithLabelValues(dependency, job).Set(v)
	key := path.Join(dependency, job)
	m.mu.Lock()
	defer m.mu.Unlock()
	was, seen := m.deps[key]
	m.deps[key] = up
	if err != nil {
		m.depErrs[key] = err
	} else {
		delete(m.depErrs, key)
	}
	return !seen && !up || seen && was != up
}

// dependencyErrors joins the errors of the dependencies down at their
// last check (nil: all up, or not checked yet).
func (m *Metrics) dependencyErrors() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := slices.Sorted(maps.Keys(m.depErrs))
	errs := make([]error, len(keys))
	for i, k := range keys {
		errs[i] = fmt.Errorf("%s: %w", k, m.depErrs[k])
	}
	return errors.Join(errs...)
}

// RerunApplied implements pipeline.Observer.
func (m *Metrics) RerunApplied(job, status string) {
	if m == nil {
		return
	}
	m.reruns.WithLabelValues(job, status).Inc()
}

// LatestFailed implements pipeline.Observer.
// rowsChangedAfterExport counts a run whose sellers changed after its export.
func (m *Metrics) rowsChangedAfterExport(job string) {
	if m != nil {
		m.rowsChanged.WithLabelValues(job).Inc()
	}
}

// StateCorrected counts an export state the pass corrected.
func (m *Metrics) StateCorrected(job, reason string) {
	m.corrections.WithLabelValues(job, reason).Inc()
}

// TableCommitted counts an Iceberg commit, or its failure by reason.
func (m *Metrics) TableCommitted(job, failure string) {
	if m == nil {
		return
	}
	if failure == "" {
		m.tableCommits.WithLabelValues(job).Inc()
		return
	}
	m.tableFails.WithLabelValues(job, failure).Inc()
}

// TableHeadAhead records how far the table's head was dated in the future.
func (m *Metrics) TableHeadAhead(job string, ahead time.Duration) {
	if m != nil {
		m.headAhead.WithLabelValues(job).Set(ahead.Seconds())
	}
}

func (m *Metrics) LatestFailed(job string) {
	if m == nil {
		return
	}
	m.latestFails.WithLabelValues(job).Inc()
}

// Exported implements pipeline.Observer.
func (m *Metrics) Exported(e pipeline.Export, man *pipeline.Manifest) {
	if m == nil {
		return
	}
	m.runs.WithLabelValues(e.Job, "success").Inc()
	for _, f := range man.Files {
		m.rows.WithLabelValues(e.Job, f.Format).Add(float64(f.Rows))
		m.bytes.WithLabelValues(e.Job, f.Format).Add(float64(f.Bytes))
	}
	m.duration.WithLabelValues(e.Job).Observe(e.Duration.Seconds())
	m.SeedLastSuccess(e.Job, e.At)
	m.remember(e)
}

// ExportFailed implements pipeline.Observer.
func (m *Metrics) ExportFailed(e pipeline.Export) {
	if m == nil {
		return
	}
	m.runs.WithLabelValues(e.Job, "failure").Inc()
	m.remember(e)
}

func (m *Metrics) remember(e pipeline.Export) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := append(m.history[e.Job], e)
	if len(h) > historySize {
		h = h[len(h)-historySize:]
	}
	m.history[e.Job] = h
}

// History returns the recent exports of job, newest first.
func (m *Metrics) History(job string) []pipeline.Export {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.history[job]
	out := make([]pipeline.Export, len(h))
	for i, e := range h {
		out[len(h)-1-i] = e
	}
	return out
}

// seedHistory puts exports read from the bucket before the ones this
// process recorded (newest last, as History keeps them), skipping any it
// already has.
func (m *Metrics) seedHistory(job string, older []pipeline.Export) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.history[job]
	var add []pipeline.Export
	for _, e := range older {
		if e.Manifest != "" && !slices.ContainsFunc(h, func(x pipeline.Export) bool { return x.Manifest == e.Manifest }) {
			add = append(add, e)
		}
	}
	h = append(add, h...)
	if len(h) > historySize {
		h = h[len(h)-historySize:]
	}
	m.history[job] = h
}

// JobStatus is what the status page shows of a job besides its exports.
type JobStatus struct {
	Backlog       int
	OldestPending time.Duration
	FailingSince  time.Time // zero: the last pass succeeded (or none ran)
	LastError     string
	LastSuccess   time.Time // zero: never, as far as this process and the bucket know
	BucketUp      *bool     // nil until checked
	CatalogUp     *bool     // the Iceberg catalog (jobs with a table); nil until checked
	// Table is the job's Iceberg table at the last check (nil: none, or
	// not read yet).
	Table *pipeline.TableStatus
}

// Status returns job's status.
func (m *Metrics) Status(job string) JobStatus {
	if m == nil {
		return JobStatus{}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.healthOf(job)
	s := JobStatus{Backlog: m.backlogs[job], OldestPending: m.oldests[job], FailingSince: h.failingSince,
		LastError: h.lastError, LastSuccess: h.lastSuccess}
	if up, ok := m.deps[path.Join("bucket", job)]; ok {
		s.BucketUp = &up
	}
	if up, ok := m.deps[path.Join("iceberg_catalog", job)]; ok {
		s.CatalogUp = &up
	}
	s.Table = m.tables[job]
	return s
}

// setTable records job's Iceberg table as the last check read it.
func (m *Metrics) setTable(job string, ts *pipeline.TableStatus) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tables == nil {
		m.tables = map[string]*pipeline.TableStatus{}
	}
	m.tables[job] = ts
}

// DatabaseUp reports PostgreSQL's state at the last check (nil: not yet).
func (m *Metrics) DatabaseUp() *bool {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if up, ok := m.deps["postgres"]; ok {
		return &up
	}
	return nil
}

// Backlog implements pipeline.Observer.
func (m *Metrics) Backlog(job string, n int, oldest time.Duration) {
	if m == nil {
		return
	}
	m.backlog.WithLabelValues(job).Set(float64(n))
	m.oldest.WithLabelValues(job).Set(max(oldest, 0).Seconds())
	m.mu.Lock()
	m.backlogs[job] = n
	m.oldests[job] = max(oldest, 0)
	m.mu.Unlock()
}

// Skipped implements pipeline.Observer.
func (m *Metrics) Skipped(job string) {
	if m != nil {
		m.runs.WithLabelValues(job, "skipped").Inc()
	}
}

// Retried implements pipeline.Observer.
func (m *Metrics) Retried(job string) {
	if m != nil {
		m.retries.WithLabelValues(job).Inc()
	}
}

// ExportStarted implements pipeline.Observer.
func (m *Metrics) ExportStarted(job string) func() {
	if m == nil {
		return func() {}
	}
	g := m.inFlight.WithLabelValues(job)
	g.Inc()
	return g.Dec
}

func (m *Metrics) panicked(job string) {
	if m != nil {
		m.panics.WithLabelValues(job).Inc()
		m.runs.WithLabelValues(job, "failure").Inc()
	}
}

func (m *Metrics) coalescedTick(job string) {
	if m != nil {
		m.coalesced.WithLabelValues(job).Inc()
	}
}
