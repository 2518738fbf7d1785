package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"time"

	"github.com/sellersnap/sellersnap/config"
)

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
  sellersnap status   -config pipeline.yaml [-job NAME] [-verify [-quick] [-from D] [-to D]]
  sellersnap repair-latest -config pipeline.yaml [-job NAME] [-dry-run]
  sellersnap repair-table  -config pipeline.yaml -job NAME [-dry-run]
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
	"status":        "Prints each job's recent exports (read from the manifests in the bucket) and pending runs.\nWith -verify, audits every output (files, manifests, table, latest.json) and each exported\nrun's rows against the database, printing the repair of each difference (exit 1 on any).",
	"repair-table":  "Rebuilds the job's Iceberg table from its manifests (a table dropped, replaced or emptied):\ncommits each exported unit once, with its earlier data file or one rebuilt from its Parquet\nfile, records the table as the job's, and prints what it did. Exports do not commit meanwhile.",
	"repair-latest": "Recomputes each org's latest.json from the job's manifests (reads every one) and rewrites\nthose that name anything but the newest export dated today or earlier.",
}

type options struct {
	json, verbose, allowPast, dryRun, verify, quick bool
	config, job, date, logFormat, logLevel          string
	runs, orgs                                      []string // rerun -run, -org (repeatable)
	from, to, rerunID                               string
	listen                                          *string
	cpuProfile, memProfile, traceFile               string
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
	case "repair-table":
		fs.BoolVar(&o.dryRun, "dry-run", false, "print the table's state and the units it would commit; write nothing")
	case "status":
		fs.BoolVar(&o.verify, "verify", false, "audit every output: each export's files against its manifest (size, sha256), the manifests against the Iceberg table and latest.json, and each exported run's rows against the database (per_run jobs); print the command that repairs each difference, exit 1 on any")
		fs.BoolVar(&o.quick, "quick", false, "with -verify: compare file sizes only, reading no file")
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
	if cmd == "repair-table" {
		if o.job == "" {
			return &usageError{"repair-table needs -job"}
		}
		for _, j := range only {
			if j.Iceberg == nil {
				return &usageError{fmt.Sprintf("job %s has no iceberg table to repair", j.Name)}
			}
		}
	}
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
