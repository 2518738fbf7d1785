// Command sellersnap exports marketplace sellers from PostgreSQL into
// snapshot files (CSV, NDJSON, Parquet) in a bucket.
//
//	sellersnap validate -config pipeline.yaml
//	sellersnap once     -config pipeline.yaml [-job NAME]
//	sellersnap plan     -config pipeline.yaml [-job NAME] [-json]
//	sellersnap rerun    -config pipeline.yaml -job NAME (-run RUN_ID… | -date D | -from D -to D) [-org ORG…] [-dry-run]
//	sellersnap run      -config pipeline.yaml [-job NAME] [-listen ADDR]
//	sellersnap status   -config pipeline.yaml [-job NAME]
//	sellersnap repair-latest -config pipeline.yaml [-job NAME] [-dry-run]
//	sellersnap repair-table  -config pipeline.yaml -job NAME [-dry-run]
//	sellersnap version
//
// Exit status: 0 success, 1 an export failed, 2 usage or configuration error.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"syscall"
	"time"
	_ "time/tzdata" // time zones work on machines without a zoneinfo database

	"github.com/apache/arrow/go/v17/arrow/memory"
	_ "gocloud.dev/blob/fileblob"
	_ "gocloud.dev/blob/memblob" // s3:// is opened by sinks itself (the AWS SDK's logs go through slog); gs:// and azblob:// in drivers_*.go

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/internal/arrowmem"
	"github.com/sellersnap/sellersnap/internal/daemon"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sources"
)

// version and commit are set at build time with -ldflags "-X
// main.version=… -X main.commit=…" (make build, make release); commit
// falls back to what the Go toolchain stamped from git, if it did.
var version, commit = "", ""

// gcPercent is the garbage collector's target unless GOGC is set: an
// export's heap is mostly short-lived batches over ~35 MB live (Parquet's
// open row group), so peak heap is live × (1 + gcPercent/100). 35 instead
// of 100 cut peak RSS from ~145 to ~99 MiB (1M rows, Parquet), costing
// ~4% of the wall time (docs/benchmarks.md).
const gcPercent = 35

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	// Arrow's Parquet encoders take scratch buffers from sync.Pools of
	// DefaultAllocator buffers, which every collection empties; with the
	// pool, the buffers they free are reused (internal/arrowmem).
	memory.DefaultAllocator = arrowmem.Shared()
	// SIGHUP: the daemon reloads its configuration (see reloading); any
	// other command takes it as it takes SIGTERM.
	stopSignals := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if len(os.Args) < 2 || os.Args[1] != "run" {
		stopSignals = append(stopSignals, syscall.SIGHUP)
	} else {
		signal.Ignore(syscall.SIGHUP) // until reloading listens for it: never the default (exit)
	}
	ctx, stop := signal.NotifyContext(context.Background(), stopSignals...)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd, o, done, err := parseArgs(args, stdout, stderr)
	if err != nil || done {
		return err
	}
	logger, err := newLogger(stderr, o.logFormat, o.logLevel)
	if err != nil {
		return err
	}
	stopProfiles, err := o.startProfiles()
	if err != nil {
		return err
	}
	defer stopProfiles()
	if cmd == "run" {
		return reloading(ctx, o.config, logger, func(ctx context.Context) error {
			return execute(ctx, cmd, o, logger, stdout, stderr)
		})
	}
	return execute(ctx, cmd, o, logger, stdout, stderr)
}

// reloading runs the daemon (serve) until ctx is done. On SIGHUP it checks
// the configuration file again: when it loads, the daemon stops as on
// SIGTERM (exports in flight finish, within the shutdown grace) and starts
// again with it; when it does not, the error is logged and the daemon goes
// on with the configuration it has.
func reloading(ctx context.Context, path string, logger *slog.Logger, serve func(context.Context) error) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- serve(sctx) }()
	wait:
		select {
		case err := <-done:
			cancel()
			return err
		case <-hup:
			if _, err := config.Load(path, pipeline.CheckConfig, checkDriver); err != nil {
				logger.Error("SIGHUP: not reloading, the configuration has errors; the daemon goes on with the one it runs", "config", path, "err", err)
				goto wait
			}
			logger.Info("SIGHUP: reloading the configuration; exports in flight finish first", "config", path)
			cancel()
			if err := <-done; err != nil || ctx.Err() != nil {
				return err
			}
			logger.Info("configuration reloaded; starting again", "config", path)
		}
	}
}

// execute runs cmd with the configuration at o.config.
func execute(ctx context.Context, cmd string, o options, logger *slog.Logger, stdout, stderr io.Writer) error {
	cfg, err := config.Load(o.config, pipeline.CheckConfig, checkDriver)
	if err != nil {
		return &configError{err}
	}
	only := cfg.Jobs // the jobs this command runs
	if o.job != "" {
		j, _, err := cfg.Job(o.job)
		if err != nil {
			return &usageError{err.Error()}
		}
		only = []*config.Job{j}
	}
	if err := o.check(cmd, only); err != nil {
		return err
	}

	src, err := sources.Open(ctx, sources.Config{
		DSN: cfg.Source.DSN, Schema: cfg.Source.Schema, RunsTable: cfg.Source.RunsTable,
		SellersTable: cfg.Source.SellersTable, CompletedStatus: cfg.Source.CompletedStatus,
		StatementTimeout: cfg.Source.StatementTimeout.Duration,
		Conns:            exportConns(cmd),
		// The daemon starts with the database down, serves its metrics
		// and status page, and connects when it can.
		Lazy: cmd == "run",
	})
	if err != nil {
		return err
	}
	defer src.Close()
	var jobs []*pipeline.Job
	if cmd == "run" {
		// Each job is checked against the source before its first pass
		// (daemon.Check), not here: one broken job, or the database
		// down, does not stop the others or the daemon.
		jobs, err = build(cfg, only)
	} else {
		jobs, err = compile(ctx, cfg, src, only)
	}
	if err != nil {
		return err
	}
	runner := &pipeline.Runner{Source: src, Version: toolVersion(), Logger: logger,
		Locker: pipeline.PostgresLocker(src),
		Retry: pipeline.Backoff{Attempts: cfg.Daemon.Retry.Attempts,
			Initial: cfg.Daemon.Retry.Initial.Duration, Max: cfg.Daemon.Retry.Max.Duration}}
	defer runner.Close()

	if cmd != "rerun" && cmd != "repair-latest" && cmd != "repair-table" {
		// An applied reruns: entry whose selectors changed is a
		// configuration error; the bucket being unreachable is not (yet).
		for _, j := range jobs {
			for _, d := range j.Reruns {
				var changed *pipeline.RerunChangedError
				if _, err := runner.ReadRerunRecord(ctx, j, d); errors.As(err, &changed) {
					return &configError{cfg.Errorf(rerunField(cfg, d.ID), "%v", err)}
				}
			}
		}
	}

	switch cmd {
	case "validate":
		return validate(ctx, runner, jobs, stdout, o.verbose)
	case "plan":
		return plan(ctx, runner, jobs, stdout, o.json, o.verbose)
	case "status":
		if o.verify {
			return verifyRows(ctx, runner, jobs, stdout, o)
		}
		return status(ctx, runner, jobs, stdout)
	case "repair-latest":
		return repairLatest(ctx, runner, jobs, stdout, o.dryRun)
	case "repair-table":
		return repairTable(ctx, runner, jobs[0], o.config, stdout, o.dryRun)
	case "run":
		listen := *cfg.Daemon.Listen
		if *o.listen != "" {
			listen = *o.listen
		}
		d := &daemon.Daemon{Runner: runner, Jobs: jobs, Metrics: daemon.NewMetrics(), NotifyChannel: *cfg.Daemon.NotifyChannel,
			Listen: listen, Pprof: cfg.Daemon.Pprof, Check: checkAgainstSource(cfg, src)}
		return d.Run(ctx, abortAfter(ctx, cfg.Daemon.ShutdownGrace.Duration, logger))
	case "rerun":
		return rerun(ctx, runner, jobs[0], o, stdout, stderr)
	default:
		return once(ctx, runner, jobs, logger)
	}
}

// compile reads the source's catalog once (two statements, however many
// jobs) and compiles every job against it; it returns those in only.
func compile(ctx context.Context, cfg *config.File, src *sources.Postgres, only []*config.Job) ([]*pipeline.Job, error) {
	catalog, err := src.Catalog(ctx)
	if err != nil {
		return nil, &configError{cfg.Errorf("source", "%v (README, \"Source contract\")", err)}
	}
	compiled, err := pipeline.Compile(ctx, cfg, catalog)
	if err != nil {
		return nil, &configError{err}
	}
	return selected(compiled, only), nil
}

// build compiles the jobs in only without the database (the daemon's
// way; see checkAgainstSource).
func build(cfg *config.File, only []*config.Job) ([]*pipeline.Job, error) {
	built, err := pipeline.Build(cfg)
	if err != nil {
		return nil, &configError{err}
	}
	return selected(built, only), nil
}

// selected keeps the jobs named in only, in their order.
func selected(jobs []*pipeline.Job, only []*config.Job) []*pipeline.Job {
	var out []*pipeline.Job
	for _, j := range jobs {
		if slices.ContainsFunc(only, func(c *config.Job) bool { return c.Name == j.Name }) {
			out = append(out, j)
		}
	}
	return out
}

// checkAgainstSource is the daemon's check of a job before its first
// pass: what compile checks for every job at once, for that job alone. A
// database that does not answer is a database error; a source without the
// job's columns (or grants) a *pipeline.SourceMismatchError.
func checkAgainstSource(cfg *config.File, src *sources.Postgres) func(context.Context, *pipeline.Job) error {
	return func(ctx context.Context, job *pipeline.Job) error {
		catalog, err := src.Catalog(ctx)
		if err != nil {
			return err
		}
		if err := catalog.Check(ctx, nil); err != nil {
			return &pipeline.SourceMismatchError{Job: job.Name, Err: err}
		}
		_, i, err := cfg.Job(job.Name)
		if err != nil {
			return err
		}
		if err := pipeline.CheckJob(ctx, cfg, i, catalog); err != nil {
			return &pipeline.SourceMismatchError{Job: job.Name, Err: err}
		}
		return nil
	}
}

// once exports what every job has pending, one job after the other.
func once(ctx context.Context, runner *pipeline.Runner, jobs []*pipeline.Job, logger *slog.Logger) error {
	var errs []error
	for _, j := range jobs {
		res, err := runner.Once(ctx, j)
		if err != nil {
			errs = append(errs, err)
			if res.Failed == 0 {
				// The pass failed before any unit (bucket, database):
				// say so, not "failed=0".
				logger.Error("job failed; the error follows", "job", j.Name, "exported", len(res.Exported))
				continue
			}
		}
		logger.Info("job done", "job", j.Name, "exported", len(res.Exported), "failed", res.Failed)
	}
	return errors.Join(errs...)
}

// abortAfter returns a context that is cancelled grace after ctx is done
// (the first SIGINT or SIGTERM), or at once on the next signal. Exports in
// flight run under it: cancelling it aborts them cleanly.
func abortAfter(ctx context.Context, grace time.Duration, logger *slog.Logger) context.Context {
	abort, cancel := context.WithCancel(context.Background())
	context.AfterFunc(ctx, func() {
		// main's signal.NotifyContext still holds SIGINT and SIGTERM, so no
		// signal kills the process while this one takes over.
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(sigs)
		logger.Info("shutting down: exports in flight may finish", "grace", grace)
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-sigs:
			logger.Warn("second signal: cancelling exports in flight")
		case <-t.C:
			logger.Warn("shutdown grace is over: cancelling exports in flight")
		}
		cancel()
	})
	return abort
}

func randomHex() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, &usageError{fmt.Sprintf("-log-level %q: want debug, info, warn or error", level)}
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, &usageError{fmt.Sprintf("-log-format %q: want text or json", format)}
	}
}

// exportConns is how many connections a command opens up front: an export
// holds one (its snapshot, which holds the unit's lock) and borrows a second
// for a moment to check the lock before each change to the bucket.
func exportConns(cmd string) int {
	switch cmd {
	case "once", "rerun", "run":
		return 2
	}
	return 1
}
