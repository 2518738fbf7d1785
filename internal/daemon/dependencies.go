package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"path"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sinks"
)

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
