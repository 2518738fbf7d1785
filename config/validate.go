package config

import (
	"cmp"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/sellersnap/sellersnap/internal/keys"
)

var jobName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

func (f *File) validate(checks []Check) error {
	var errs []error
	bad := func(path, format string, args ...any) { errs = append(errs, f.Errorf(path, format, args...)) }

	s := &f.Source
	if s.DSN == "" {
		bad("source.dsn", "is required (a PostgreSQL URL or connection string, usually ${DATABASE_URL})")
	}
	for path, v := range map[string]*string{"source.schema": &s.Schema, "source.runs_table": &s.RunsTable, "source.sellers_table": &s.SellersTable, "source.completed_status": &s.CompletedStatus} {
		if _, set := f.lines[path]; set && *v == "" {
			bad(path, "must not be empty")
		}
	}
	if s.StatementTimeout == nil {
		s.StatementTimeout = &Duration{DefaultStatementTimeout}
	}

	d := &f.Daemon
	if d.Listen == nil {
		l := DefaultListen
		d.Listen = &l
	}
	if *d.Listen != "" {
		if _, _, err := net.SplitHostPort(*d.Listen); err != nil {
			bad("daemon.listen", "%q: want host:port, such as 127.0.0.1:9464 or :9464, or \"\" for no HTTP server", *d.Listen)
		}
	}
	if d.ShutdownGrace == nil {
		d.ShutdownGrace = &Duration{DefaultShutdownGrace}
	}
	if d.NotifyChannel == nil {
		c := DefaultNotifyChannel
		d.NotifyChannel = &c
	}
	switch {
	case d.Retry.Attempts == 0:
		d.Retry.Attempts = DefaultRetryAttempts
	case d.Retry.Attempts < 1 || d.Retry.Attempts > 100:
		bad("daemon.retry.attempts", "must be between 1 and 100, got %d", d.Retry.Attempts)
	}
	if d.Retry.Initial == nil {
		d.Retry.Initial = &Duration{DefaultRetryInitial}
	}
	if d.Retry.Max == nil {
		d.Retry.Max = &Duration{DefaultRetryMax}
	}
	if d.Retry.Max.Duration < d.Retry.Initial.Duration {
		bad("daemon.retry.max", "must not be less than daemon.retry.initial")
	}

	if len(f.Jobs) == 0 {
		bad("jobs", "at least one job is required")
	}
	names := map[string]int{}
	for i, j := range f.Jobs {
		p := fmt.Sprintf("jobs[%d]", i)
		if j == nil {
			bad(p, "empty job")
			continue
		}
		switch {
		case j.Name == "":
			bad(p+".name", "is required")
		case !jobName.MatchString(j.Name):
			bad(p+".name", "%q: use lowercase letters, digits, - and _ (at most 63)", j.Name)
		default:
			if first, dup := names[j.Name]; dup {
				bad(p+".name", "duplicate job name %q (also jobs[%d], line %d)", j.Name, first, f.lines[fmt.Sprintf("jobs[%d].name", first)])
			} else {
				names[j.Name] = i
			}
		}
		errs = append(errs, f.validateJob(j, p)...)
		for _, c := range checks {
			c(j, func(field, format string, args ...any) { bad(p+"."+field, format, args...) })
		}
	}
	if len(errs) == 0 {
		errs = append(errs, f.checkKeysDisjoint()...)
	}
	if len(errs) == 0 {
		f.validateReruns(bad)
	}
	return joinErrors(errs)
}

// checkKeysDisjoint refuses jobs that could write the same keys: two jobs
// on one bucket whose paths start with the same literal text (or one with
// a prefix of the other's) would find each other's manifests and count
// runs as exported that they never wrote, or overwrite each other's files.
// Placeholder values never contain "/" and {job} differs between jobs, so
// paths whose literal beginnings diverge can never meet.
func (f *File) checkKeysDisjoint() []error {
	type root struct {
		i      int
		where  string // bucket identity + prefix: one folder may hold another's bucket
		prefix string
	}
	var roots []root
	var errs []error
	for i, j := range f.Jobs {
		r := root{i: i, prefix: literalPrefix(strings.ReplaceAll(j.Path, "{job}", keys.Escape(j.Name)))}
		r.where = bucketIdentity(j.Destination) + r.prefix
		for _, o := range roots {
			if !strings.HasPrefix(r.where, o.where) && !strings.HasPrefix(o.where, r.where) {
				continue
			}
			other := f.Jobs[o.i]
			field := fmt.Sprintf("jobs[%d].path", i)
			if _, set := f.lines[field]; !set {
				field = fmt.Sprintf("jobs[%d]", i) // the default path
			}
			errs = append(errs, f.Errorf(field,
				"jobs %q and %q (jobs[%d], line %d) write to the same bucket with paths starting %q and %q: they could write the same keys and take each other's manifests for their own; give each job its own path (e.g. with {job} in it)",
				j.Name, other.Name, o.i, f.lines[fmt.Sprintf("jobs[%d].name", o.i)], r.prefix, o.prefix))
		}
		roots = append(roots, r)
	}
	return append(errs, f.checkTablesApart()...)
}

// checkTablesApart: two jobs never commit to one Iceberg table (each
// commit replaces its partition: one job's commits would delete the
// other's files), and no table lives inside a job's files (a glob over the
// job's prefix would read the table's data files as exports) nor a job's
// files inside a table (expiry deletes what the table's location holds
// that no snapshot reads).
func (f *File) checkTablesApart() []error {
	var errs []error
	type table struct {
		i          int
		ident, loc string
	}
	var tables []table
	for i, j := range f.Jobs {
		ic := j.Iceberg
		if ic == nil {
			continue
		}
		field := fmt.Sprintf("jobs[%d].iceberg.table", i)
		tb := table{i: i, ident: ic.URI + "\x00" + ic.Name + "." + ic.Namespace + "." + ic.Table,
			loc: bucketIdentity(j.Destination) + path.Join(ic.Warehouse, ic.Namespace, ic.Table) + "/"}
		for _, o := range tables {
			other := f.Jobs[o.i]
			switch {
			case tb.ident == o.ident:
				errs = append(errs, f.Errorf(field, "jobs %q and %q (jobs[%d]) commit to the same table %s.%s.%s: each commit replaces its partition, so one job's commits would delete the other's; give each job its own table",
					j.Name, other.Name, o.i, ic.Name, ic.Namespace, ic.Table))
			case strings.HasPrefix(tb.loc, o.loc) || strings.HasPrefix(o.loc, tb.loc):
				errs = append(errs, f.Errorf(field, "jobs %q and %q (jobs[%d]) keep their tables in the same folder of the bucket (%s): give each its own table name or warehouse",
					j.Name, other.Name, o.i, path.Join(ic.Warehouse, ic.Namespace, ic.Table)))
			}
		}
		tables = append(tables, tb)
	}
	for _, tb := range tables {
		for k, j := range f.Jobs {
			lit := literalPrefix(strings.ReplaceAll(j.Path, "{job}", keys.Escape(j.Name)))
			folder := lit[:strings.LastIndexByte(lit, '/')+1]
			if folder == "" {
				continue // files from the bucket's root (org=…/): their globs start with a placeholder's folder
			}
			prefix := bucketIdentity(j.Destination) + folder
			if strings.HasPrefix(tb.loc, prefix) || strings.HasPrefix(prefix, tb.loc) {
				ic := f.Jobs[tb.i].Iceberg
				errs = append(errs, f.Errorf(fmt.Sprintf("jobs[%d].iceberg.warehouse", tb.i),
					"the table's folder %s and the files of job %q (jobs[%d], path starting %q) are inside one another: a glob over the job's files would read the table's, and the table's expiry may delete what its folder holds; put the warehouse beside the jobs' paths (the default is iceberg/)",
					path.Join(ic.Warehouse, ic.Namespace, ic.Table), j.Name, k, literalPrefix(j.Path)))
			}
		}
	}
	return errs
}

// literalPrefix is a template's text before its first placeholder.
func literalPrefix(tmpl string) string {
	if i := strings.IndexByte(tmpl, '{'); i >= 0 {
		return tmpl[:i]
	}
	return tmpl
}

// bucketIdentity names the storage a bucket URL points at, ending in "/":
// file URLs by absolute directory (file://./out and file:///abs/out are
// one bucket), others by scheme, bucket name and prefix= parameter.
func bucketIdentity(dest string) string {
	u, err := url.Parse(dest)
	if err != nil {
		return dest
	}
	prefix := u.Query().Get("prefix")
	if u.Scheme == "file" {
		p := u.Path
		if u.Host == "." {
			p = strings.TrimPrefix(p, "/")
		} else if u.Opaque != "" {
			p = u.Opaque
		}
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		return "file://" + strings.TrimSuffix(filepath.ToSlash(p), "/") + "/" + prefix
	}
	return u.Scheme + "://" + u.Host + "/" + prefix
}

// bad reports a problem with the field at path.
type bad func(path, format string, args ...any)

// validateJob applies j's defaults, checks its fields and resolves what
// they name (time zone, schedule, path template, mask key); p is its path
// (jobs[2]).
func (f *File) validateJob(j *Job, p string) []error {
	var errs []error
	report := func(path, format string, args ...any) { errs = append(errs, f.Errorf(path, format, args...)) }
	// Lists given but empty (the default applies, the mistake is reported).
	if _, set := f.lines[p+".formats"]; set && len(j.Formats) == 0 {
		report(p+".formats", "must name at least one format: %s", strings.Join(DefaultFormats(), ", "))
	}
	if _, set := f.lines[p+".columns"]; set && len(j.Columns) == 0 {
		report(p+".columns", "must name at least one column")
	}
	j.withDefaults()
	j.check(p, report)
	j.checkColumns(p, report)
	j.resolve(p, report)
	return errs
}

// withDefaults fills the fields left out with their defaults.
func (j *Job) withDefaults() {
	switch j.Mode {
	case ModePerRun:
		j.Schedule = cmp.Or(j.Schedule, DefaultPerRunSchedule)
		j.Path = cmp.Or(j.Path, DefaultPerRunPath)
	case ModeFull:
		j.Schedule = cmp.Or(j.Schedule, DefaultFullSchedule)
		j.Path = cmp.Or(j.Path, DefaultFullPath)
		j.Catchup = cmp.Or(j.Catchup, CatchupLatest)
	}
	j.OnSchemaChange = cmp.Or(j.OnSchemaChange, SchemaFail)
	j.Timezone = cmp.Or(j.Timezone, DefaultTimezone)
	j.Destination = cmp.Or(j.Destination, DefaultDestination)
	if len(j.Formats) == 0 {
		j.Formats = DefaultFormats()
	}
	if len(j.Columns) == 0 {
		for _, c := range DefaultColumns() {
			j.Columns = append(j.Columns, Column{Name: c})
		}
	}
	if j.CSV.FormulaGuard == nil {
		t := true
		j.CSV.FormulaGuard = &t
	}
	j.CSV.Delimiter = cmp.Or(j.CSV.Delimiter, ",")
}

// check checks the job's own fields (not its columns).
func (j *Job) check(p string, bad bad) {
	switch j.Mode {
	case ModePerRun, ModeFull:
	case "":
		bad(p+".mode", "is required: per_run or full")
	default:
		bad(p+".mode", "unknown mode %q: want per_run or full", j.Mode)
	}
	switch {
	case j.Catchup != "" && j.Mode != ModeFull:
		bad(p+".catchup", "applies to full jobs only: per_run jobs always export every pending run")
	case j.Catchup != "" && j.Catchup != CatchupLatest && j.Catchup != CatchupAll && j.Catchup != CatchupNone:
		bad(p+".catchup", "unknown catchup %q: want latest, all or none", j.Catchup)
	}
	if j.MaxRowsPerFile < 0 {
		bad(p+".max_rows_per_file", "must not be negative, got %d", j.MaxRowsPerFile)
	}
	if j.MaxBytesPerFile != 0 && j.MaxBytesPerFile < 1<<20 {
		bad(p+".max_bytes_per_file", "must be at least 1MiB, got %d bytes", j.MaxBytesPerFile)
	}
	if j.OnSchemaChange != SchemaFail && j.OnSchemaChange != SchemaEvolve {
		bad(p+".on_schema_change", "unknown value %q: want fail or evolve", j.OnSchemaChange)
	}
	if u, err := url.Parse(j.Destination); err != nil || u.Scheme == "" {
		bad(p+".destination", "want a bucket URL such as s3://bucket, gs://bucket, azblob://container, file:///path or mem://")
	} else if !slices.Contains([]string{"s3", "gs", "azblob", "file", "mem"}, u.Scheme) {
		bad(p+".destination", "unknown bucket scheme %q: want s3, gs, azblob, file or mem", u.Scheme)
	} else if u.Scheme == "file" && u.Host != "" && u.Host != "." && u.Host != "localhost" {
		bad(p+".destination", "a file URL takes no host (%q here): write file://./%s for a folder relative to the working directory, or file:///absolute/path", u.Host, u.Host+u.Path)
	}
	for i, fm := range j.Formats {
		if slices.Index(j.Formats, fm) != i {
			bad(fmt.Sprintf("%s.formats[%d]", p, i), "format %q is listed twice", fm)
		}
	}
	if j.Iceberg != nil {
		j.Iceberg.check(p, bad)
	}
	if j.BatchRows < 0 || j.BatchRows > MaxBatchRows {
		bad(p+".batch_rows", "must be between 1 and %d, got %d", MaxBatchRows, j.BatchRows)
	}
	if len(j.CSV.Delimiter) != 1 {
		bad(p+".csv.delimiter", "want one ASCII character other than quotes, CR and LF, got %q", j.CSV.Delimiter)
	}
	if j.Parquet.RowGroupRows < 0 {
		bad(p+".parquet.row_group_rows", "must be positive, got %d", j.Parquet.RowGroupRows)
	}
}

// checkColumns checks the columns (names, output names, transforms) and
// each format's include or exclude list.
func (j *Job) checkColumns(p string, bad bad) {
	outputs := map[string]int{}
	for i, c := range j.Columns {
		cp := fmt.Sprintf("%s.columns[%d]", p, i)
		if c.Name == "" {
			bad(cp, "column name is empty")
			continue
		}
		out := c.Output()
		if first, dup := outputs[out]; dup {
			bad(cp, "output column %q appears twice (also columns[%d])", out, first)
		}
		outputs[out] = i
		switch {
		case c.Mask != "" && c.Mask != MaskHMACSHA256:
			bad(cp, "mask: unknown mask %q: want %s", c.Mask, MaskHMACSHA256)
		case c.Mask != "" && c.Redact:
			bad(cp, "mask and redact exclude each other")
		}
	}
	for name, sel := range j.Selects() {
		sp := p + "." + name
		if len(sel.Include) > 0 && len(sel.Exclude) > 0 {
			bad(sp+".include", "include and exclude exclude each other")
		}
		for field, names := range map[string][]string{"include": sel.Include, "exclude": sel.Exclude} {
			for k, n := range names {
				if !slices.ContainsFunc(j.Columns, func(c Column) bool { return c.Output() == n }) {
					bad(fmt.Sprintf("%s.%s[%d]", sp, field, k), "%q is not an output column of the job", n)
				}
			}
		}
		if (len(sel.Include) > 0 || len(sel.Exclude) > 0) && len(sel.Columns(j.Columns)) == 0 {
			bad(sp+".exclude", "leaves no column")
		}
	}
}

// resolve sets Location, Cron, Template and MaskKey from the fields that
// name them, reporting those that name nothing valid.
func (j *Job) resolve(p string, bad bad) {
	loc, err := time.LoadLocation(j.Timezone)
	if err != nil || strings.EqualFold(j.Timezone, "local") {
		bad(p+".timezone", "unknown time zone %q: want an IANA name such as UTC or Europe/Berlin", j.Timezone)
	}
	j.Location = loc
	if j.Schedule != "" {
		if strings.HasPrefix(j.Schedule, "TZ=") || strings.HasPrefix(j.Schedule, "CRON_TZ=") {
			bad(p+".schedule", "set the time zone with timezone:, not in the schedule")
		} else if sched, err := cronParser.Parse(j.Schedule); err != nil {
			bad(p+".schedule", "invalid cron expression %q: %v", j.Schedule, err)
		} else if loc != nil && dstSafe(sched).Next(time.Now().In(loc)).IsZero() {
			bad(p+".schedule", "cron expression %q never fires", j.Schedule)
		} else {
			j.Cron = dstSafe(sched)
		}
	}
	if ph := placeholders(j.Mode); ph != nil {
		t, err := keys.Parse(j.Path, ph)
		switch {
		case err != nil:
			bad(p+".path", "%v", err)
		case !t.InBase("ext"):
			bad(p+".path", "the file name must contain {ext}, so formats do not overwrite each other")
		case j.Mode == ModePerRun && !t.InDir("run_id"):
			bad(p+".path", "a per_run path needs {run_id} in its folder part: each run's files and manifest need a folder of their own")
		case j.Mode == ModeFull && (!t.InDir("org_id") || !t.InDir("date")):
			bad(p+".path", "a full path needs {org_id} and {date} in its folder part: each org's daily snapshot needs a folder of its own")
		case j.Split() && !strings.HasSuffix(j.Path, ".{ext}"):
			bad(p+".path", "must end in .{ext} when files are split (the part number goes before it)")
		default:
			j.Template = t
		}
	}
	// The mask key, from the environment (never the file), for the first
	// masked column; a problem with it is reported there.
	for i, c := range j.Columns {
		if c.Mask != MaskHMACSHA256 || c.Redact || j.MaskKey != nil {
			continue
		}
		cp := fmt.Sprintf("%s.columns[%d]", p, i)
		j.MaskKeyEnv = cmp.Or(j.MaskKeyEnv, DefaultMaskKeyEnv)
		key := os.Getenv(j.MaskKeyEnv)
		switch {
		case key == "":
			bad(cp, "mask: environment variable %s (the mask key) is not set; the key is never read from the file", j.MaskKeyEnv)
			j.MaskKey = []byte{}
		case len(key) < minMaskKey:
			bad(cp, "mask: the mask key in %s is %d bytes; use at least %d (e.g. openssl rand -hex 32)", j.MaskKeyEnv, len(key), minMaskKey)
			j.MaskKey = []byte{}
		default:
			j.MaskKey = []byte(key)
		}
	}
}
