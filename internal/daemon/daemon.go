package daemon

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/pprof"
	"path"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// Daemon runs jobs on their cron schedules until stopped.
//
// Each job has one worker: exports of a job never overlap, and a tick that
// arrives while the worker is busy is coalesced with the next run. per_run
// jobs export every pending run at start-up, at every tick and on every
// notification; full jobs export the slot of each tick (its date in the
// job's time zone is the snapshot's identity) and, at start-up, the slots
// their catchup setting asks for.
type Daemon struct {
	Runner *pipeline.Runner
	Jobs   []*pipeline.Job
	// Metrics, when set, are served on /metrics and feed the status page;
	// Run makes them the Runner's Observer.
	Metrics *Metrics
	// NotifyChannel is LISTENed on when set: a notification makes every
	// per_run job look for pending runs at once.
	NotifyChannel string
	// Listen is the HTTP address of /healthz and /readyz; "" for none.
	Listen string
	// Pprof adds /debug/pprof/ to the HTTP server.
	Pprof bool
	// Check, when set, checks a job against the source before its first
	// pass (its columns exist and can be read). Until it passes, the job
	// is failing with its reason and the check is tried again every
	// CheckRetry; the other jobs run. So a daemon whose configuration
	// parses starts with the database down or one job's column gone, and
	// recovers by itself.
	Check func(ctx context.Context, job *pipeline.Job) error
	// CheckRetry is how often a failed Check is tried again. Default 1m.
	CheckRetry time.Duration

	mu      sync.Mutex
	workers []*worker
	ready   chan struct{}
	addr    net.Addr
	// listenState is set by listen (under mu).
	listenState string
}

type worker struct {
	job    *pipeline.Job
	signal chan struct{} // capacity 1: a pending signal coalesces later ones
	// reruns asks the job's rerun loop to apply its declared reruns; it
	// runs beside the passes, so that a backfill never holds a new run.
	reruns chan struct{} // capacity 1, as signal
	mu     sync.Mutex
	slot   time.Time // full jobs: the newest slot not yet run
	first  []string  // per_run jobs: runs named by notifications, exported first

	failingSince time.Time       // the first failed pass since the last good one (work goroutine only)
	warnedRows   map[string]bool // runs whose changed rows were reported (work goroutine only)
	checked      bool            // Check passed (work goroutine only)
	checkErr     string          // the last failed Check's error, logged when it changes
}

// Run schedules the jobs until ctx is done, then waits for exports in
// flight to end and returns. Exports run under work: cancel it to abort
// them (on a second signal, or when the shutdown grace is over).
func (d *Daemon) Run(ctx, work context.Context) error {
	d.mu.Lock()
	d.ready = make(chan struct{})
	d.workers = nil
	for _, j := range d.Jobs {
		d.workers = append(d.workers, &worker{job: j, signal: make(chan struct{}, 1), reruns: make(chan struct{}, 1)})
	}
	d.mu.Unlock()

	var srv *http.Server
	if d.Listen != "" {
		ln, err := net.Listen("tcp", d.Listen)
		if err != nil {
			return fmt.Errorf("listen %s: %w", d.Listen, err)
		}
		d.addr = ln.Addr()
		limit := newConnLimiter(HTTPMaxConns)
		srv = &http.Server{
			ConnState:         limit.hook,
			Handler:           d.Handler(),
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      60 * time.Second, // room for a 30 s /debug/pprof/profile
			IdleTimeout:       HTTPIdleTimeout,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(d.logger().Handler(), slog.LevelWarn),
		}
		go func() { _ = srv.Serve(ln) }()
		d.logger().Info("serving", "addr", ln.Addr().String())
	}
	close(d.ready)
	now := d.now()
	for _, j := range d.Jobs {
		d.logger().Info("job scheduled", "job", j.Name, "mode", j.Mode, "schedule", j.Schedule, "timezone", j.Location.String(),
			"next", j.Cron.Next(now.In(j.Location)).Format(time.RFC3339), "destination", sinks.Redact(j.Destination))
	}
	if d.NotifyChannel == "" {
		d.logger().Info("not listening for notifications (daemon.notify_channel is empty): per_run jobs run on their schedule")
	}

	d.Metrics.InitJobs(d.Jobs)
	var wg sync.WaitGroup
	if d.Metrics != nil {
		d.Runner.Observer = d.Metrics
		wg.Go(func() { d.watchDependencies(ctx) })
		wg.Go(func() { d.seedFromBucket(ctx) })
	}
	for _, w := range d.workers {
		wg.Go(func() { d.work(ctx, work, w) })
		if len(w.job.Reruns) > 0 {
			wg.Go(func() { d.applyReruns(ctx, work, w) })
			w.reruns <- struct{}{} // at start-up, whatever the schedule
		}
		wg.Go(func() { d.schedule(ctx, w) })
		d.startUp(w)
	}
	if d.NotifyChannel != "" {
		wg.Go(func() { d.listen(ctx) })
	}
	<-ctx.Done()
	wg.Wait()
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}
	d.logger().Info("stopped", "exports_cancelled", work.Err() != nil)
	return nil
}

// The HTTP side is bounded so that no client, however many connections it
// opens or holds, can take the file descriptors and memory exports need,
// or keep a liveness probe waiting: at most HTTPMaxConns connections are
// open at once, a new one closing the oldest that waits for a request
// (connLimiter), and a connection idle for HTTPIdleTimeout is closed.
const (
	HTTPMaxConns    = 32
	HTTPIdleTimeout = 20 * time.Second
)

// Addr is the HTTP server's address once Run has started it.
func (d *Daemon) Addr() net.Addr {
	d.mu.Lock()
	ready := d.ready
	d.mu.Unlock()
	if ready == nil {
		return nil
	}
	<-ready
	return d.addr
}

// startUp queues what a job does when the daemon starts: catch-up.
func (d *Daemon) startUp(w *worker) {
	if w.job.Mode != config.ModeFull {
		d.fire(w, time.Time{}, "start-up")
		return
	}
	if w.job.Catchup == config.CatchupNone {
		return
	}
	slots := prevSlots(w.job, d.now(), 1)
	if len(slots) > 0 {
		d.fire(w, slots[0], "start-up")
	}
}

// fire asks w to run; slot is the schedule slot (full jobs), runID a run
// to export before any other (per_run jobs), if not "".
func (d *Daemon) fire(w *worker, slot time.Time, why string, runID ...string) {
	w.mu.Lock()
	if slot.After(w.slot) {
		w.slot = slot
	}
	if len(w.first) < 1000 {
		w.first = append(w.first, runID...)
	}
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
		d.Metrics.coalescedTick(w.job.Name)
		d.logger().Info("coalesced: the job is busy and already has a run queued", "job", w.job.Name, "trigger", why)
	}
}

// schedule fires w at every tick of its cron schedule.
func (d *Daemon) schedule(ctx context.Context, w *worker) {
	for {
		now := d.now().In(w.job.Location)
		next := w.job.Cron.Next(now)
		if next.IsZero() {
			d.logger().Error("schedule never fires again", "job", w.job.Name)
			return
		}
		t := time.NewTimer(next.Sub(now))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
			d.fire(w, next, "schedule")
		}
	}
}

// work runs w's job each time it is signalled, one run at a time.
func (d *Daemon) work(ctx, work context.Context, w *worker) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.signal:
		}
		if ctx.Err() != nil {
			return
		}
		d.runJob(work, w)
	}
}

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

// listen LISTENs for completed runs and signals every per_run job on each
// notification, reconnecting with backoff when the connection drops. On
// every (re)connect the jobs are signalled too: notifications sent while
// it was down are lost, the runs they announced are not.
func (d *Daemon) listen(ctx context.Context) {
	backoff := time.Second
	recovering := false
	for ctx.Err() == nil {
		l, err := d.Runner.Source.Listen(ctx, d.NotifyChannel)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			recovering = true
			d.setListenState("reconnecting")
			d.logger().Warn("LISTEN failed; retrying", "channel", d.NotifyChannel, "in", backoff, "err", err)
			if !wait(ctx, backoff/2+rand.N(backoff/2+1)) {
				return
			}
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		if recovering {
			d.logger().Info("LISTEN recovered", "channel", d.NotifyChannel)
		} else {
			d.logger().Info("listening for notifications", "channel", d.NotifyChannel)
		}
		d.setListenState("listening")
		recovering = false
		backoff = time.Second
		d.firePerRun("listen")
		for {
			payload, err := l.Wait(ctx)
			if err != nil {
				l.Close()
				if ctx.Err() == nil {
					d.logger().Warn("LISTEN connection lost; reconnecting", "channel", d.NotifyChannel, "err", err)
					recovering = true
					d.setListenState("reconnecting")
				}
				break
			}
			d.logger().Debug("notified", "channel", d.NotifyChannel, "payload", payload)
			var first []string
			if sources.IsRunID(payload) {
				first = append(first, payload)
			}
			d.firePerRun("notify", first...)
		}
	}
}

func (d *Daemon) setListenState(s string) {
	d.mu.Lock()
	d.listenState = s
	d.mu.Unlock()
}

// ListenState is "listening", "reconnecting", "connecting" (not yet) or
// "off" (daemon.notify_channel is empty).
func (d *Daemon) ListenState() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.NotifyChannel == "":
		return "off"
	case d.listenState == "":
		return "connecting"
	}
	return d.listenState
}

func (d *Daemon) firePerRun(why string, runIDs ...string) {
	for _, w := range d.workers {
		if w.job.Mode == config.ModePerRun {
			d.fire(w, time.Time{}, why, runIDs...)
		}
	}
}

// Handler serves the status page (/), the manifests it links to, /metrics
// (when the Runner has Metrics), /healthz (the process is alive) and
// /readyz (PostgreSQL answers and every destination bucket can be read).
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", d.serveStatus)
	mux.HandleFunc("GET /manifest", d.serveManifest)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := d.checkReady(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if m := d.Metrics; m != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	}
	if d.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// checkReady reports the dependencies' state at their last check (every
// dependencyCheckEvery): PostgreSQL answers, every job's bucket takes a
// write. It makes no request itself, so it answers at once whatever the
// dependencies do.
func (d *Daemon) checkReady(context.Context) error {
	if d.Metrics == nil {
		return nil
	}
	return d.Metrics.dependencyErrors()
}

func (d *Daemon) logger() *slog.Logger {
	if d.Runner.Logger != nil {
		return d.Runner.Logger
	}
	return slog.Default()
}

// now is the Runner's clock.
func (d *Daemon) now() time.Time {
	if d.Runner.Now != nil {
		return d.Runner.Now()
	}
	return time.Now()
}

// dependencyCheckEvery is how often sellersnap_dependency_up is refreshed.
const dependencyCheckEvery = 15 * time.Second

// backlogEvery is how many dependency checks go by between two refreshes
// of the backlog gauges (4 × 15 s: a minute).
const backlogEvery = 4

// watchDependencies sets sellersnap_dependency_up for PostgreSQL and each
// job's bucket, at start-up and every dependencyCheckEvery.
func (d *Daemon) watchDependencies(ctx context.Context) {
	probe := randomHex()
	for i := 0; ; i++ {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		d.dependency(ctx, "postgres", "", d.Runner.Source.Ping(cctx))
		for _, j := range d.Jobs {
			d.dependency(ctx, "bucket", j.Name, d.bucketWritable(cctx, j, probe))
			if j.HasTable() {
				// The catalog answers and its table's metadata reads: a
				// commit would get as far.
				ts, err := d.Runner.TableStatus(cctx, j)
				d.dependency(ctx, "iceberg_catalog", j.Name, err)
				if err == nil {
					d.Metrics.setTable(j.Name, ts)
				}
			}
		}
		cancel()
		if i%backlogEvery == backlogEvery-1 {
			// The backlog gauges follow the database between passes: a
			// run completed without a notification shows within a minute.
			for _, j := range d.Jobs {
				bctx, cancel := context.WithTimeout(ctx, time.Minute)
				if err := d.Runner.RefreshBacklog(bctx, j); err != nil && ctx.Err() == nil {
					d.logger().Debug("could not refresh the backlog", "job", j.Name, "err", err)
				}
				cancel()
			}
		}
		if !wait(ctx, dependencyCheckEvery) {
			return
		}
	}
}

// dependency records a check's outcome, logging each change of state.
func (d *Daemon) dependency(ctx context.Context, dependency, job string, err error) {
	if ctx.Err() != nil {
		return
	}
	if changed := d.Metrics.dependencyUp(dependency, job, err); changed {
		if err != nil {
			d.logger().Warn("dependency down", "dependency", dependency, "job", job, "err", err)
		} else {
			d.logger().Info("dependency up", "dependency", dependency, "job", job)
		}
	}
}

// bucketWritable checks that job's bucket takes a write, a read and a
// delete, as exports need: a bucket that can be read but not written is
// down for the daemon. The probe object lives in the job's _sellersnap
// folder, which readers of the data skip, and is deleted at once.
func (d *Daemon) bucketWritable(ctx context.Context, j *pipeline.Job, probe string) error {
	b, err := d.Runner.Bucket(ctx, j.Destination)
	if err != nil {
		return err
	}
	key := path.Join(j.Layout.Prefix(), "_sellersnap", j.Name, "probe", probe)
	if err := b.Probe(ctx, key); err != nil {
		if pe, ok := errors.AsType[*sinks.ProbeError](err); ok && pe.Op == "write" {
			return fmt.Errorf("job %s: bucket not writable: %w", j.Name, pe.Err)
		}
		return fmt.Errorf("job %s: bucket: %w", j.Name, err)
	}
	return nil
}

// randomHex is 8 random bytes in hex.
func randomHex() string {
	var b [8]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// seedFromBucket reads each job's recent exports from its bucket (the
// manifests, as sellersnap status does), so that a restart loses neither
// the status page's history nor the last success.
func (d *Daemon) seedFromBucket(ctx context.Context) {
	for _, j := range d.Jobs {
		exports, err := d.Runner.RecentExports(ctx, j, historySize)
		if err != nil {
			if ctx.Err() == nil {
				d.logger().Debug("could not read the recent exports from the bucket", "job", j.Name, "err", err)
			}
			continue
		}
		slices.Reverse(exports) // oldest first, as the history keeps them
		d.Metrics.seedHistory(j.Name, exports)
		if len(exports) > 0 {
			d.Metrics.SeedLastSuccess(j.Name, exports[len(exports)-1].At)
		}
	}
}

// wait waits d, or until ctx is done (then false).
func wait(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
