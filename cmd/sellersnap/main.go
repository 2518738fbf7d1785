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
//	sellersnap version
//
// Exit status: 0 success, 1 an export failed, 2 usage or configuration error.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path"
	"regexp"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	_ "time/tzdata" // time zones work on machines without a zoneinfo database

	"github.com/apache/arrow/go/v17/arrow/memory"
	_ "gocloud.dev/blob/fileblob"
	_ "gocloud.dev/blob/memblob" // s3:// is opened by sinks itself (the AWS SDK's logs go through slog); gs:// and azblob:// in drivers_*.go

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/internal/arrowmem"
	"github.com/sellersnap/sellersnap/internal/daemon"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sinks"
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

// usageError and configError exit with status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

type configError struct{ err error }

func (e *configError) Error() string { return e.err.Error() }
func (e *configError) Unwrap() error { return e.err }

func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ue *usageError
	var ce *configError
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 2
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "sellersnap: %v\n\n%s", err, usage)
		return 2
	case errors.As(err, &ce):
		if msg := err.Error(); strings.Contains(msg, "\n") {
			fmt.Fprintf(stderr, "sellersnap: configuration errors:\n%s\n", indent(msg))
		} else {
			fmt.Fprintf(stderr, "sellersnap: configuration error: %s\n", msg)
		}
		return 2
	default:
		fmt.Fprintf(stderr, "sellersnap: %v\n", err)
		return 1
	}
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}

const usage = `usage:
  sellersnap validate -config pipeline.yaml [-v]
  sellersnap plan     -config pipeline.yaml [-job NAME] [-json] [-v]
  sellersnap once     -config pipeline.yaml [-job NAME]
  sellersnap rerun    -config pipeline.yaml -job NAME (-run RUN_ID… | -date D | -from D -to D) [-org ORG…] [-allow-past] [-dry-run] [-id ID]
  sellersnap run      -config pipeline.yaml [-job NAME] [-listen ADDR]
  sellersnap status   -config pipeline.yaml [-job NAME]
  sellersnap repair-latest -config pipeline.yaml [-job NAME] [-dry-run]
  sellersnap version

common flags: -log-format text|json, -log-level debug|info|warn|error
exit status: 0 success, 1 an export failed, 2 usage or configuration error
`

// commandHelp says what each command does, for "sellersnap CMD -h".
var commandHelp = map[string]string{
	"validate":      "Checks the config, schedules, database (tables, columns, types, grants), schema drift and\nevery bucket (writes and deletes a probe object), then summarises what once would do.",
	"plan":          "Prints what once would do now: each job's pending runs (or orgs), their rows and the keys\nit would write. Writes nothing.",
	"once":          "Exports everything pending for every job (or -job), then exits: 0 when all succeeded,\n1 when an export failed (the next once retries it).",
	"rerun":         "Exports one unit again, whether or not it was exported: a run of a per_run job (-run) or a\ndate of a full job (-date). Rewrites its files and manifest.",
	"run":           "The daemon: runs each job on its schedule (and per_run jobs on NOTIFY), serves the status\npage, /metrics, /healthz and /readyz, and stops cleanly on SIGTERM.",
	"status":        "Prints each job's recent exports (read from the manifests in the bucket) and pending runs.\nWith -verify, compares each exported run's rows with the database (exit 1 on a difference).",
	"repair-latest": "Recomputes each org's latest.json from the job's manifests (reads every one) and rewrites\nthose that name anything but the newest export dated today or earlier.",
}

type options struct {
	json, verbose, allowPast, dryRun, verify bool
	config, job, date, logFormat, logLevel   string
	runs, orgs                               []string // rerun -run, -org (repeatable)
	from, to, rerunID                        string
	listen                                   *string
	cpuProfile, memProfile, traceFile        string
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

	if cmd != "rerun" && cmd != "repair-latest" {
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

// parseArgs parses a command line: the command and its flags. done is
// true when the command is answered already (help, version).
func parseArgs(args []string, stdout, stderr io.Writer) (cmd string, o options, done bool, err error) {
	if len(args) == 0 {
		return "", o, false, &usageError{"missing command"}
	}
	cmd, args = args[0], args[1:]
	fs := flag.NewFlagSet("sellersnap "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "sellersnap %s: %s\n\nflags:\n", cmd, commandHelp[cmd])
		fs.PrintDefaults()
	}
	fs.StringVar(&o.config, "config", "pipeline.yaml", "path of the pipeline config")
	fs.StringVar(&o.job, "job", "", "job name (default: every job)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile to this file (for developers)")
	fs.StringVar(&o.memProfile, "memprofile", "", "write a heap profile to this file at exit (for developers)")
	fs.StringVar(&o.traceFile, "trace", "", "write an execution trace to this file, for go tool trace (for developers)")
	switch cmd {
	case "version":
		fmt.Fprint(stdout, versionReport())
		return cmd, o, true, nil
	case "rerun":
		fs.Func("run", "collection run id to export again (per_run jobs; repeatable)", func(v string) error { o.runs = append(o.runs, v); return nil })
		fs.StringVar(&o.date, "date", "", "one date YYYY-MM-DD: -from and -to that date")
		fs.StringVar(&o.from, "from", "", "first date YYYY-MM-DD (job's time zone): per_run jobs the runs completed from that day, full jobs the snapshot dates")
		fs.StringVar(&o.to, "to", "", "last date YYYY-MM-DD, inclusive")
		fs.Func("org", "only this org id (repeatable)", func(v string) error { o.orgs = append(o.orgs, v); return nil })
		fs.BoolVar(&o.allowPast, "allow-past", false, "full jobs, dates before today: write today's rows under them (the manifests record data_as_of)")
		fs.BoolVar(&o.dryRun, "dry-run", false, "print the units the rerun would rewrite, their rows and keys; write nothing")
		fs.StringVar(&o.rerunID, "id", "", "record this id in every manifest written; run again with the same id, the rerun skips the units it already rewrote")
		fs.BoolVar(&o.verbose, "v", false, "with -dry-run: list every unit and key")
	case "run":
		o.listen = fs.String("listen", "", "HTTP address for /healthz and /readyz (default: daemon.listen in the config)")
	case "plan":
		fs.BoolVar(&o.json, "json", false, "print the plan as JSON")
		fs.BoolVar(&o.verbose, "v", false, "list every pending unit and key (default: a summary)")
	case "validate":
		fs.BoolVar(&o.verbose, "v", false, "list every pending unit and key (default: a summary)")
	case "repair-latest":
		fs.BoolVar(&o.dryRun, "dry-run", false, "print what would change; write nothing")
	case "status":
		fs.BoolVar(&o.verify, "verify", false, "compare each exported run's row count with the database and print the rerun that repairs each difference (per_run jobs)")
		fs.StringVar(&o.from, "from", "", "with -verify: runs completed on or after this date (YYYY-MM-DD, UTC; default 7 days ago)")
		fs.StringVar(&o.to, "to", "", "with -verify: runs completed on or before this date (YYYY-MM-DD, UTC; default today)")
	case "once":
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return cmd, o, true, nil
	default:
		return cmd, o, false, &usageError{fmt.Sprintf("unknown command %q", cmd)}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cmd, o, true, nil // asked for: the help went to stderr
		}
		return cmd, o, false, &usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return cmd, o, false, &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	return cmd, o, false, nil
}

// startProfiles starts the profiles the flags ask for; stop writes them.
func (o options) startProfiles() (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	// startTo starts a recording into a new file at path.
	startTo := func(path string, start func(io.Writer) error, end func()) error {
		if path == "" {
			return nil
		}
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := start(f); err != nil {
			f.Close()
			return err
		}
		stops = append(stops, func() { end(); f.Close() })
		return nil
	}
	if err := startTo(o.cpuProfile, pprof.StartCPUProfile, pprof.StopCPUProfile); err != nil {
		return stop, err
	}
	if err := startTo(o.traceFile, trace.Start, trace.Stop); err != nil {
		return stop, err
	}
	if o.memProfile != "" {
		stops = append(stops, func() {
			if f, err := os.Create(o.memProfile); err == nil {
				_ = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		})
	}
	return stop, nil
}

// check refuses flags that contradict each other or the jobs they name
// (before anything connects anywhere).
func (o *options) check(cmd string, only []*config.Job) error {
	if cmd == "rerun" {
		if o.job == "" {
			return &usageError{"rerun needs -job"}
		}
		if o.date != "" {
			if o.from != "" || o.to != "" {
				return &usageError{"-date is -from and -to that date: give one or the other"}
			}
			o.from, o.to = o.date, o.date
		}
		if len(o.runs) == 0 && o.from == "" && o.to == "" {
			return &usageError{"rerun needs -run RUN_ID (per_run jobs), or -date, or -from and -to"}
		}
		if o.rerunID != "" && !rerunIDPattern.MatchString(o.rerunID) {
			return &usageError{fmt.Sprintf("-id %q: use lowercase letters, digits, '.', '-' and '_' (at most 63)", o.rerunID)}
		}
		var errs []string
		config.CheckSelectors(only[0], o.runs, o.from, o.to, o.orgs, o.allowPast, time.Now(), func(field, format string, args ...any) {
			flag := selectorFlag(field)
			if o.date != "" && (flag == "from" || flag == "to") {
				flag = "date"
			}
			errs = append(errs, "-"+flag+": "+fmt.Sprintf(format, args...))
		})
		if len(errs) > 0 {
			return &usageError{strings.Join(errs, "\n")}
		}
	}
	if o.listen != nil && *o.listen != "" {
		if _, _, err := net.SplitHostPort(*o.listen); err != nil {
			return &usageError{fmt.Sprintf("-listen %q: want host:port, such as 127.0.0.1:9464 or :9464", *o.listen)}
		}
	}
	return nil
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

// RowsChangedError says that exported runs no longer hold the rows the
// database has for them.
type RowsChangedError struct{ N int }

func (e *RowsChangedError) Error() string {
	return fmt.Sprintf("%d exported runs differ from the database; run the reruns printed above to repair them", e.N)
}

// verifyRows prints, for each per_run job, the exported runs (completed
// between -from and -to) whose manifest's row count differs from the
// database's, with the rerun that repairs each.
func verifyRows(ctx context.Context, runner *pipeline.Runner, jobs []*pipeline.Job, w io.Writer, o options) error {
	now := time.Now().UTC()
	from, to := now.AddDate(0, 0, -7).Truncate(24*time.Hour), now.Truncate(24*time.Hour)
	for _, d := range []struct {
		flag string
		v    string
		t    *time.Time
	}{{"from", o.from, &from}, {"to", o.to, &to}} {
		if d.v == "" {
			continue
		}
		t, err := time.Parse(time.DateOnly, d.v)
		if err != nil {
			return &usageError{fmt.Sprintf("-%s %q: want YYYY-MM-DD", d.flag, d.v)}
		}
		*d.t = t
	}
	if to.Before(from) {
		return &usageError{fmt.Sprintf("-to %s is before -from %s", to.Format(time.DateOnly), from.Format(time.DateOnly))}
	}
	total := 0
	for _, j := range jobs {
		if j.Mode != config.ModePerRun {
			fmt.Fprintf(w, "job %s (%s): not verified (a full snapshot holds the rows as they were when it was taken)\n", j.Name, j.Mode)
			continue
		}
		mm, checked, err := runner.Verify(ctx, j, from, to.AddDate(0, 0, 1))
		if err != nil {
			return fmt.Errorf("job %s: %w", j.Name, err)
		}
		fmt.Fprintf(w, "job %s: %d exported runs completed %s to %s checked, %d differ from the database\n", j.Name, checked, from.Format(time.DateOnly), to.Format(time.DateOnly), len(mm))
		for _, m := range mm {
			fmt.Fprintf(w, "  run %s (org %s): manifest %d rows, database %d now\n    repair: sellersnap rerun -config %s -job %s -run %s\n", m.RunID, m.OrgID, m.Published, m.Now, o.config, j.Name, m.RunID)
		}
		total += len(mm)
	}
	if total > 0 {
		return &RowsChangedError{N: total}
	}
	return nil
}

// status prints, per job, the recent exports (from the manifests in the
// bucket) and what is pending.
func status(ctx context.Context, runner *pipeline.Runner, jobs []*pipeline.Job, w io.Writer) error {
	for i, j := range jobs {
		if i > 0 {
			fmt.Fprintln(w)
		}
		next := j.Cron.Next(time.Now().In(j.Location))
		fmt.Fprintf(w, "job %s (%s), schedule %q %s, next %s\n", j.Name, j.Mode, j.Schedule, j.Location, next.Format(time.RFC3339))
		recent, err := runner.Recent(ctx, j, 10)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  EXPORTED AT\tRUN / DATE\tORG\tROWS\tFILES\tMANIFEST")
		for _, m := range recent {
			what := m.RunID
			if what == "" {
				what = m.Date
			}
			key := ""
			if len(m.Files) > 0 {
				key = path.Dir(m.Files[0].Key) + "/" + pipeline.ManifestName
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%s\n", m.ExportedAt.Format(time.RFC3339), what, m.OrgID, m.Rows, len(m.Files), key)
		}
		if len(recent) == 0 {
			fmt.Fprintln(tw, "  (no exports yet)")
		}
		tw.Flush()
		ts, err := runner.TableStatus(ctx, j)
		if err != nil {
			return fmt.Errorf("job %s: iceberg: %w", j.Name, err)
		}
		printTable(w, ts)
		plan, err := runner.Plan(ctx, j)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "  pending: %d\n", len(plan))
		for k, p := range plan {
			if k == 10 {
				fmt.Fprintf(w, "  … and %d more\n", len(plan)-10)
				break
			}
			what := p.RunID
			if what == "" {
				what = "org " + p.OrgID + " " + p.Date
			}
			fmt.Fprintf(w, "  - %s: %d rows\n", what, p.Rows)
		}
		reruns, err := declaredReruns(ctx, runner, j)
		if err != nil {
			return err
		}
		printReruns(w, reruns)
	}
	return nil
}

func validate(ctx context.Context, runner *pipeline.Runner, jobs []*pipeline.Job, w io.Writer, verbose bool) error {
	fmt.Fprintln(w, "config: ok; database: ok (tables and columns checked)")
	for _, j := range jobs {
		bucket, err := runner.Bucket(ctx, j.Destination)
		if err != nil {
			return err
		}
		probe := j.Layout.Prefix() + ".sellersnap-probe-" + randomHex()
		var pe *sinks.ProbeError
		if err := bucket.Probe(ctx, probe); errors.As(err, &pe) {
			switch pe.Op {
			case "write":
				return fmt.Errorf("job %s: cannot write to %s under %q%s: %w", j.Name, bucket.URL(), j.Layout.Prefix(), permissionHint(pe.Err, "write"), pe.Err)
			case "read":
				return fmt.Errorf("job %s: wrote a probe object to %s but cannot read it back%s: %w", j.Name, bucket.URL(), permissionHint(pe.Err, "read"), pe.Err)
			default:
				return fmt.Errorf("job %s: wrote a probe object to %s but cannot delete it%s: %w", j.Name, bucket.URL(), permissionHint(pe.Err, "delete"), pe.Err)
			}
		} else if err != nil {
			return err
		}
		next := j.Cron.Next(time.Now().In(j.Location))
		fmt.Fprintf(w, "\njob %s (%s), schedule %q %s, next %s\n  destination %s (writable, readable)\n  columns %s\n  formats %s\n",
			j.Name, j.Mode, j.Schedule, j.Location, next.Format(time.RFC3339), bucket.URL(), columnList(j), strings.Join(j.FormatNames(), ", "))
		ts, err := runner.CheckTable(ctx, j)
		if err != nil {
			return fmt.Errorf("job %s: iceberg: %w", j.Name, err)
		}
		printTable(w, ts)
		p, err := runner.Plan(ctx, j)
		if err != nil {
			return err
		}
		printPlan(w, j, p, verbose, "")
		reruns, err := declaredReruns(ctx, runner, j)
		if err != nil {
			return fmt.Errorf("job %s: %w", j.Name, err)
		}
		printReruns(w, reruns)
	}
	return nil
}

// plan prints what `once` would do now, writing nothing: per job, each
// pending run (or org, for full jobs), its row count and every key.
func plan(ctx context.Context, runner *pipeline.Runner, jobs []*pipeline.Job, w io.Writer, asJSON, verbose bool) error {
	type jobPlan struct {
		Job     string             `json:"job"`
		Mode    string             `json:"mode"`
		Bucket  string             `json:"bucket"`
		Pending []pipeline.Planned `json:"pending"`
		Reruns  []rerunStatus      `json:"reruns,omitempty"`
	}
	var all []jobPlan
	for _, j := range jobs {
		p, err := runner.Plan(ctx, j)
		if err != nil {
			return fmt.Errorf("job %s: %w", j.Name, err)
		}
		if p == nil {
			p = []pipeline.Planned{}
		}
		reruns, err := declaredReruns(ctx, runner, j)
		if err != nil {
			return fmt.Errorf("job %s: %w", j.Name, err)
		}
		all = append(all, jobPlan{Job: j.Name, Mode: j.Mode, Bucket: sinks.Redact(j.Destination), Pending: p, Reruns: reruns})
		if !asJSON {
			fmt.Fprintf(w, "job %s (%s) → %s\n", j.Name, j.Mode, sinks.Redact(j.Destination))
			printPlan(w, j, p, verbose, "")
			printReruns(w, reruns)
		}
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(all)
	}
	return nil
}

// printPlan prints a job's pending units: a summary (counts, the first unit
// with its keys, the last unit), or with verbose every unit and key.
// printTable prints a job's Iceberg table: where it is, its current
// snapshot, its retention.
func printTable(w io.Writer, ts *pipeline.TableStatus) {
	if ts == nil {
		return
	}
	state := "schema and partitioning match the job's"
	switch {
	case ts.Created:
		state = "created (no snapshot yet)"
	case ts.Metadata == "":
		state = "not created yet (the first export or validate creates it)"
	}
	fmt.Fprintf(w, "  iceberg table %s at %s: %s\n", ts.Name, ts.Location, state)
	if c := ts.Current; c != nil {
		fmt.Fprintf(w, "    current snapshot %d (%s, %s, sequence %d): %s records in %s files; %d snapshots kept (retention %s)\n",
			c.ID, c.Summary["operation"], time.UnixMilli(c.TimestampMS).UTC().Format(time.RFC3339), c.Sequence,
			c.Summary["total-records"], c.Summary["total-data-files"], ts.Snapshots, ts.Retention)
	}
	if ts.Metadata != "" {
		fmt.Fprintf(w, "    metadata %s\n", ts.Metadata)
	}
}

func printPlan(w io.Writer, j *pipeline.Job, plan []pipeline.Planned, verbose bool, what string) {
	switch {
	case what != "":
	case j.Mode == config.ModeFull:
		what = "orgs pending for today's snapshot"
	default:
		what = "pending runs"
	}
	var rows int64
	for _, p := range plan {
		rows += p.Rows
	}
	fmt.Fprintf(w, "  %s: %d (%d rows)\n", what, len(plan), rows)
	for i, p := range plan {
		if !verbose && i > 0 && i < len(plan)-1 {
			if i == 1 {
				fmt.Fprintf(w, "  … %d more (-v lists every unit and key)\n", len(plan)-2)
			}
			continue
		}
		if p.RunID != "" {
			fmt.Fprintf(w, "  - run %s org %s date %s: %d rows\n", p.RunID, p.OrgID, p.Date, p.Rows)
		} else {
			fmt.Fprintf(w, "  - org %s date %s: %d rows\n", p.OrgID, p.Date, p.Rows)
		}
		for _, k := range p.Keys {
			if verbose || i == 0 {
				fmt.Fprintf(w, "      %s\n", k)
			}
		}
		if p.Table != "" && (verbose || i == 0) {
			fmt.Fprintf(w, "      %s\n", p.Table)
		}
	}
}

// permissionHint names, in an operator's words, the permission a bucket
// error is about.
func permissionHint(err error, op string) string {
	switch {
	case sinks.IsPermissionDenied(err):
		if op == "delete" {
			return " (the credentials lack delete permission: s3:DeleteObject, storage.objects.delete, or an Azure role with blob delete; sellersnap deletes files of failed exports)"
		}
		if op == "read" {
			return " (the credentials lack read permission: s3:GetObject, storage.objects.get, or the Storage Blob Data Reader role; sellersnap reads manifests and schema.json)"
		}
		return " (the credentials lack write permission: s3:PutObject, storage.objects.create, or the Storage Blob Data Contributor role)"
	case sinks.IsNotFound(err):
		return " (the bucket or container does not exist: sellersnap does not create it)"
	}
	return ""
}

func columnList(j *pipeline.Job) string {
	var parts []string
	for _, c := range j.Columns() {
		if c.As != "" {
			parts = append(parts, c.Name+" as "+c.As)
		} else {
			parts = append(parts, c.Name)
		}
	}
	return strings.Join(parts, ", ")
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

// versionReport is what `sellersnap version` prints: the version, the
// commit it was built from, the Go toolchain and platform, and the
// versions of the libraries whose behaviour the files depend on.
func versionReport() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sellersnap %s\n", toolVersion())
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b.String()
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if commit != "" {
		settings["vcs.revision"] = commit
	}
	if rev := settings["vcs.revision"]; rev != "" {
		if t := settings["vcs.time"]; t != "" {
			rev += " (" + t + ")"
		}
		if settings["vcs.modified"] == "true" {
			rev += ", modified"
		}
		fmt.Fprintf(&b, "  commit   %s\n", rev)
	}
	fmt.Fprintf(&b, "  go       %s %s/%s\n", bi.GoVersion, runtime.GOOS, runtime.GOARCH)
	for _, lib := range []struct{ name, path string }{
		{"arrow", "github.com/apache/arrow/go/v17"},
		{"pgx", "github.com/jackc/pgx/v5"},
		{"gocloud", "gocloud.dev"},
	} {
		for _, d := range bi.Deps {
			if d.Path == lib.path {
				if d.Replace != nil {
					d = d.Replace
				}
				fmt.Fprintf(&b, "  %-8s %s %s\n", lib.name, lib.path, d.Version)
			}
		}
	}
	return b.String()
}

func toolVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// repairLatest prints each manifest it would not follow, and why, and each
// latest.json it rewrote (or would have).
func repairLatest(ctx context.Context, r *pipeline.Runner, jobs []*pipeline.Job, stdout io.Writer, dryRun bool) error {
	verb := "repaired"
	if dryRun {
		verb = "would repair"
	}
	for _, job := range jobs {
		repairs, rejections, err := r.RepairLatest(ctx, job, dryRun)
		for _, rej := range rejections {
			fmt.Fprintf(stdout, "%s: rejected %s\n  %s\n", job.Name, rej.Manifest, rej.Why)
		}
		for _, rep := range repairs {
			was := rep.Was
			if was == "" {
				was = "(none)"
			}
			fmt.Fprintf(stdout, "%s: %s %s\n  was %s\n  now %s (%s)\n", job.Name, verb, rep.Key, was, rep.Now, rep.Date)
		}
		if err != nil {
			return fmt.Errorf("job %s: %w", job.Name, err)
		}
		if len(repairs) == 0 {
			fmt.Fprintf(stdout, "%s: every latest.json names the newest export\n", job.Name)
		}
	}
	return nil
}

// rerunIDPattern is config's rule for rerun ids.
var rerunIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// selectorFlag names the rerun flag of a config.CheckSelectors field.
func selectorFlag(field string) string {
	switch {
	case strings.HasPrefix(field, "runs"):
		return "run"
	case strings.HasPrefix(field, "orgs"):
		return "org"
	case field == "allow_past":
		return "allow-past"
	}
	return field
}

// rerun rewrites the units the flags select (or, with -dry-run, prints
// them), with progress on stderr when it takes more than a few seconds.
func rerun(ctx context.Context, r *pipeline.Runner, job *pipeline.Job, o options, stdout, stderr io.Writer) error {
	sel := pipeline.Selection{Runs: o.runs, From: o.from, To: o.to, Orgs: o.orgs, AllowPast: o.allowPast}
	if o.dryRun {
		p, err := r.PlanRerun(ctx, job, sel)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "job %s (%s) → %s: rerun %s would rewrite\n", job.Name, job.Mode, sinks.Redact(job.Destination), sel)
		printPlan(stdout, job, p, o.verbose, "units")
		return nil
	}
	start, last := time.Now(), time.Time{}
	res, err := r.RerunSelection(ctx, job, sel, pipeline.RerunOptions{ID: o.rerunID, Progress: func(p pipeline.RerunProgress) {
		if time.Since(start) < 3*time.Second || time.Since(last) < 2*time.Second && p.Done < p.Total {
			return
		}
		last = time.Now()
		fmt.Fprintf(stderr, "rerun %s: %s\n", job.Name, pipeline.ProgressLine(p))
	}})
	if err == nil && res.Busy > 0 {
		err = fmt.Errorf("%d of %d units were being exported by another process and were not rewritten; run the rerun again (with -id, it skips the units it rewrote)", res.Busy, res.Total)
	}
	if res.Total == 0 && err == nil {
		fmt.Fprintf(stderr, "rerun %s: nothing selected (%s)\n", job.Name, sel)
	}
	if res.Total == 0 && errors.Is(err, sources.ErrRunNotFound) {
		// A -run that names no run: a usage error, found before anything
		// was rewritten.
		return &usageError{fmt.Sprintf("-run: %v", err)}
	}
	return err
}

// rerunField is the config field of the reruns: entry with id.
func rerunField(cfg *config.File, id string) string {
	for i, r := range cfg.Reruns {
		if r.ID == id {
			return fmt.Sprintf("reruns[%d]", i)
		}
	}
	return "reruns"
}

// rerunStatus is a declared rerun as plan, validate and status show it.
type rerunStatus struct {
	ID        string                `json:"id"`
	Selection string                `json:"selection"`
	Reason    string                `json:"reason"`
	Status    string                `json:"status"` // pending, or the record's
	Units     int                   `json:"units"`  // selected now (pending) or by the last attempt
	Record    *pipeline.RerunRecord `json:"record,omitempty"`
}

// declaredReruns describes job's reruns: entries: their records, and for
// those not applied yet how many units they select now.
func declaredReruns(ctx context.Context, r *pipeline.Runner, j *pipeline.Job) ([]rerunStatus, error) {
	var out []rerunStatus
	for _, d := range j.Reruns {
		rec, err := r.ReadRerunRecord(ctx, j, d)
		if err != nil {
			return nil, err
		}
		st := rerunStatus{ID: d.ID, Selection: d.Selection.String(), Reason: d.Reason, Status: "pending", Record: rec}
		if rec != nil {
			st.Status, st.Units = rec.Status, rec.Units
			if rec.Status == pipeline.RerunRunning {
				// Running only while a process holds it.
				if held, err := r.RerunHeld(ctx, j, d); err == nil && !held {
					st.Status = pipeline.RerunIncomplete + " (the process applying it stopped; the next pass resumes it)"
				}
			}
		}
		if rec == nil || rec.Status != pipeline.RerunApplied && rec.Status != pipeline.RerunRefused {
			p, err := r.PlanRerun(ctx, j, d.Judged(j, rec))
			if err != nil {
				return nil, fmt.Errorf("rerun %s: %w", d.ID, err)
			}
			st.Units = len(p)
		}
		out = append(out, st)
	}
	return out, nil
}

func printReruns(w io.Writer, reruns []rerunStatus) {
	for _, st := range reruns {
		fmt.Fprintf(w, "  rerun %s: %s, %d units (%s) — %s\n", st.ID, st.Status, st.Units, st.Selection, st.Reason)
		if rec := st.Record; rec != nil {
			fmt.Fprintf(w, "      %d attempts, last by %s at %s; %d rewritten, %d failed, %d busy", rec.Attempts, rec.By,
				rec.UpdatedAt.Format(time.RFC3339), rec.Rewritten, rec.Failed, rec.Busy)
			if rec.LastError != "" {
				fmt.Fprintf(w, "; last error: %s", rec.LastError)
			}
			fmt.Fprintln(w)
		}
	}
}
