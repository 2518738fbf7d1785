package daemon

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sinks"
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

// randomHex is 8 random bytes in hex.
func randomHex() string {
	var b [8]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
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
