package config

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	"go.yaml.in/yaml/v3"

	"github.com/sellersnap/sellersnap/internal/keys"
)

// Modes of a job.
const (
	ModePerRun = "per_run"
	ModeFull   = "full"
)

// Defaults for fields left out of the file.
const (
	DefaultPerRunSchedule   = "*/15 * * * *"
	DefaultFullSchedule     = "0 2 * * *"
	DefaultTimezone         = "UTC"
	DefaultDestination      = "file://./snapshots"
	DefaultPerRunPath       = "sellers/new/org={org_id}/date={run_date}/run={run_id}/sellers_{run_date}_run-{run_id8}.{ext}"
	DefaultFullPath         = "sellers/full/org={org_id}/date={date}/sellers_{date}_full.{ext}"
	MaxBatchRows            = 1 << 20
	DefaultStatementTimeout = 30 * time.Minute
)

// DefaultColumns returns the user-facing seller columns, in export order.
func DefaultColumns() []string {
	return []string{"display_name", "normalized_name", "platform", "platform_id",
		"times_seen", "feedback_percent", "feedback_count", "flagged", "created_at"}
}

// DefaultFormats returns the formats a job writes when it names none.
func DefaultFormats() []string { return []string{"csv", "ndjson", "parquet"} }

// Placeholders allowed in path templates, per mode.
func placeholders(mode string) []string {
	switch mode {
	case ModePerRun:
		return []string{"job", "org_id", "run_id", "run_id8", "run_date", "ext"}
	case ModeFull:
		return []string{"job", "org_id", "date", "ext"}
	}
	return nil
}

// Config is a whole pipeline.yaml.
type Config struct {
	Source Source `yaml:"source"`
	Daemon Daemon `yaml:"daemon"`
	Jobs   []*Job `yaml:"jobs"`
	// Reruns are units to export again, each applied once (config/reruns.go).
	Reruns []*Rerun `yaml:"reruns"`
}

// Defaults of the daemon (sellersnap run).
const (
	DefaultListen        = "127.0.0.1:9464"
	DefaultShutdownGrace = 25 * time.Second
	DefaultNotifyChannel = "collection_run_completed"
	DefaultRetryAttempts = 3
	DefaultRetryInitial  = time.Second
	DefaultRetryMax      = 30 * time.Second
	CatchupLatest        = "latest"
	CatchupAll           = "all"
	CatchupNone          = "none"
)

// Daemon configures sellersnap run.
type Daemon struct {
	// Listen is the HTTP address for /metrics, /healthz, /readyz and the
	// status page. Default 127.0.0.1:9464; "" disables the server.
	Listen *string `yaml:"listen"`
	// ShutdownGrace is how long an in-flight export may finish after
	// SIGTERM before it is cancelled. Default 25s.
	ShutdownGrace *Duration `yaml:"shutdown_grace"`
	// NotifyChannel is LISTENed on; a notification (payload: a run id, or
	// empty) exports completed runs at once. Default
	// collection_run_completed; "" disables LISTEN.
	NotifyChannel *string `yaml:"notify_channel"`
	// Retry bounds the retries of transient errors within one export.
	Retry Retry `yaml:"retry"`
	// Pprof serves /debug/pprof/ on the HTTP server. Default false.
	Pprof bool `yaml:"pprof"`
}

// Retry is exponential backoff with jitter.
type Retry struct {
	// Attempts in all, the first included. Default 3.
	Attempts int `yaml:"attempts"`
	// Initial backoff. Default 1s.
	Initial *Duration `yaml:"initial"`
	// Max backoff. Default 30s.
	Max *Duration `yaml:"max"`
}

// Source says where the collector's database is.
type Source struct {
	// DSN is a libpq connection string or URL; never printed.
	DSN string `yaml:"dsn"`
	// Schema holding both tables. "" (the default) is the source's
	// default: public.
	Schema string `yaml:"schema"`
	// RunsTable. "" is the source's default: collection_runs.
	RunsTable string `yaml:"runs_table"`
	// SellersTable. "" is the source's default: sellers.
	SellersTable string `yaml:"sellers_table"`
	// CompletedStatus is the status of a finished run. "" is the source's
	// default: completed.
	CompletedStatus string `yaml:"completed_status"`
	// StatementTimeout bounds each query of an export. Default 30m; "0s" for none.
	StatementTimeout *Duration `yaml:"statement_timeout"`
}

// Job is one export job.
type Job struct {
	// Name identifies the job (lowercase letters, digits, - and _).
	Name string `yaml:"name"`
	// Mode is per_run (sellers first seen in each completed run) or full
	// (all live sellers of each org).
	Mode string `yaml:"mode"`
	// Schedule is a cron expression (5 fields, optional leading seconds
	// field, or @daily-style descriptors). Default */15 * * * * for per_run,
	// 0 2 * * * for full.
	Schedule string `yaml:"schedule"`
	// Timezone (IANA) for the schedule and for dates in keys. Default UTC.
	Timezone string `yaml:"timezone"`
	// Destination is a gocloud.dev bucket URL. Default file://./snapshots.
	Destination string `yaml:"destination"`
	// Path is the key template of the data files; the manifest goes in the
	// same folder. Default DefaultPerRunPath or DefaultFullPath.
	Path string `yaml:"path"`
	// Formats to write. Default csv, ndjson, parquet.
	Formats []string `yaml:"formats"`
	// Columns to export, each a name or {name, as}. Default DefaultColumns.
	Columns []Column `yaml:"columns"`
	// Flagged, when set, exports only sellers whose flagged equals it.
	Flagged *bool `yaml:"flagged"`
	// Catchup (full jobs) says which schedule slots missed while the
	// daemon was down are exported at start-up: latest (the most recent
	// one), all (every one back to the newest exported, at most 31), or
	// none. Default latest.
	Catchup string `yaml:"catchup"`
	// MaxRowsPerFile and MaxBytesPerFile split a unit's output into
	// numbered parts (…_part-0001.parquet): a part ends once it holds
	// MaxRowsPerFile rows, or at the first batch boundary (Parquet: row
	// group) after MaxBytesPerFile bytes. Zero (the default) keeps one
	// file per format.
	MaxRowsPerFile  int64    `yaml:"max_rows_per_file"`
	MaxBytesPerFile ByteSize `yaml:"max_bytes_per_file"`
	// OnSchemaChange says what an export does when the output schema
	// (column names, types, nullability, transforms) differs from the
	// job's schema.json: fail (default) or evolve (export, record the new
	// schema).
	OnSchemaChange string `yaml:"on_schema_change"`
	// MaskKeyEnv names the environment variable that holds the key of
	// masked columns (never the YAML). Default SELLERSNAP_MASK_KEY.
	MaskKeyEnv string `yaml:"mask_key_env"`
	// MaskKey is the key read from MaskKeyEnv when a column is masked.
	MaskKey []byte `yaml:"-"`
	// BatchRows is the most rows per Arrow record batch. 0 (the default)
	// is the reader's default, 2048.
	BatchRows int     `yaml:"batch_rows"`
	CSV       CSV     `yaml:"csv"`
	NDJSON    NDJSON  `yaml:"ndjson"`
	Parquet   Parquet `yaml:"parquet"`
	// Iceberg, when set, also commits every export of the job to an
	// Apache Iceberg table (docs/iceberg.md).
	Iceberg *Iceberg `yaml:"iceberg"`

	// Resolved by Load.
	Location *time.Location `yaml:"-"`
	Cron     cron.Schedule  `yaml:"-"`
	Template *keys.Template `yaml:"-"`
}

// Iceberg is the Iceberg table a job commits its exports to.
type Iceberg struct {
	// Catalog is the catalog's kind: sql, a SQL catalog in PostgreSQL
	// (the tables of the Java JDBC catalog, pyiceberg and iceberg-go).
	// Required.
	Catalog string `yaml:"catalog"`
	// URI is the catalog database's connection string: a role that may
	// create and write the catalog's tables (never printed). Required.
	URI string `yaml:"uri"`
	// Name is the catalog's name (catalog_name). Default sellersnap.
	Name string `yaml:"name"`
	// Namespace of the table. Default sellersnap.
	Namespace string `yaml:"namespace"`
	// Table is the table's name. Required.
	Table string `yaml:"table"`
	// Warehouse is the folder of the job's destination bucket under which
	// the table lives (<warehouse>/<namespace>/<table>/{data,metadata}).
	// Default DefaultWarehouse.
	Warehouse string `yaml:"warehouse"`
	// SnapshotRetention: snapshots older than this expire, and the files
	// only they read are deleted (the table's own files, never the job's
	// exports), but for the newest KeepSnapshots. A duration of at least
	// 1m, or "forever" to keep every snapshot. Default 24h.
	SnapshotRetention string `yaml:"snapshot_retention"`
	// KeepSnapshots never expire, whatever their age. Default 10.
	KeepSnapshots int `yaml:"keep_snapshots"`

	// Resolved: Retention is SnapshotRetention, 0 for forever.
	Retention time.Duration `yaml:"-"`
}

// Iceberg defaults.
const (
	IcebergCatalogSQL  = "sql"
	DefaultCatalogName = "sellersnap"
	DefaultNamespace   = "sellersnap"
	DefaultWarehouse   = "iceberg"
	// DefaultSnapshotRetention: with a run a minute, a day of snapshots
	// is ~1 MB of table metadata, rewritten by every commit.
	DefaultSnapshotRetention = "24h"
	DefaultKeepSnapshots     = 10
)

// icebergName is what catalog, namespace and table names may be: they
// become keys of the bucket and identifiers in Spark and Trino.
var icebergName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,127}$`)

func (ic *Iceberg) check(p string, bad bad) {
	p += ".iceberg"
	switch ic.Catalog {
	case IcebergCatalogSQL:
	case "":
		bad(p+".catalog", "is required: sql (a SQL catalog in PostgreSQL)")
	default:
		bad(p+".catalog", "unknown catalog %q: want sql (a SQL catalog in PostgreSQL)", ic.Catalog)
	}
	if strings.TrimSpace(ic.URI) == "" {
		bad(p+".uri", "is required: the catalog database's connection string (e.g. ${ICEBERG_CATALOG_URL})")
	}
	ic.Name = cmp.Or(ic.Name, DefaultCatalogName)
	ic.Namespace = cmp.Or(ic.Namespace, DefaultNamespace)
	for field, v := range map[string]string{"name": ic.Name, "namespace": ic.Namespace, "table": ic.Table} {
		if v == "" {
			bad(p+"."+field, "is required")
		} else if !icebergName.MatchString(v) {
			bad(p+"."+field, "%q: want lowercase letters, digits and _, not starting with a digit", v)
		}
	}
	switch r := cmp.Or(ic.SnapshotRetention, DefaultSnapshotRetention); r {
	case "forever":
		ic.Retention = 0
	default:
		d, err := time.ParseDuration(r)
		if err != nil || d < time.Minute {
			bad(p+".snapshot_retention", "%q: want a duration of at least 1m (e.g. 24h, 168h), or forever", r)
		}
		ic.Retention = d
	}
	if ic.KeepSnapshots < 0 {
		bad(p+".keep_snapshots", "must be at least 1, got %d", ic.KeepSnapshots)
	}
	ic.KeepSnapshots = cmp.Or(ic.KeepSnapshots, DefaultKeepSnapshots)
	ic.Warehouse = strings.Trim(cmp.Or(ic.Warehouse, DefaultWarehouse), "/")
	switch {
	case strings.Contains(ic.Warehouse, "://"):
		bad(p+".warehouse", "%q: want a folder of the job's destination bucket (e.g. iceberg), not a URL", ic.Warehouse)
	case slices.Contains(strings.Split(ic.Warehouse, "/"), ".."), strings.ContainsAny(ic.Warehouse, "{}\\"):
		bad(p+".warehouse", "%q: want a plain folder name such as iceberg or lake/tables", ic.Warehouse)
	}
}

// CSV options of a job.
type CSV struct {
	// FormulaGuard neutralises cells starting with = + - @ TAB CR. Default true.
	FormulaGuard *bool `yaml:"formula_guard"`
	// Compression: none (the default), gzip or zstd; checked by the
	// format (sinks).
	Compression string `yaml:"compression"`
	// Delimiter is one character. Default ",".
	Delimiter string `yaml:"delimiter"`
	// QuoteAll quotes every field but NULLs (which stay empty and
	// unquoted, so that NULL and "" differ). Default false.
	QuoteAll bool `yaml:"quote_all"`
	// Include keeps only these output columns in this format; Exclude
	// drops these. Default: every column.
	Include []string `yaml:"include"`
	Exclude []string `yaml:"exclude"`
}

// Select narrows the columns of one format, by output name: Include keeps
// only these, Exclude drops these. Default: every column.
type Select struct {
	Include []string `yaml:"include"`
	Exclude []string `yaml:"exclude"`
}

// Columns returns the indices of the job's output columns the format
// writes.
func (s Select) Columns(cols []Column) []int {
	var idx []int
	for i, c := range cols {
		out := c.Output()
		if len(s.Include) > 0 && !slices.Contains(s.Include, out) || slices.Contains(s.Exclude, out) {
			continue
		}
		idx = append(idx, i)
	}
	return idx
}

// NDJSON options of a job.
type NDJSON struct {
	// Compression: none (the default), gzip or zstd.
	Compression string `yaml:"compression"`
	// Include keeps only these output columns in this format; Exclude
	// drops these. Default: every column.
	Include []string `yaml:"include"`
	Exclude []string `yaml:"exclude"`
}

// Parquet options of a job.
type Parquet struct {
	// Compression: zstd (the default), snappy, gzip, brotli or none.
	Compression string `yaml:"compression"`
	// CompressionLevel is the codec's level (zstd 1–22, gzip 1–9, brotli
	// 1–11); 0 (the default) is the codec's default (zstd: 3).
	CompressionLevel int `yaml:"compression_level"`
	// RowGroupRows is the most rows per row group. 0 (the default) is the
	// encoder's default, 65536.
	RowGroupRows int64 `yaml:"row_group_rows"`
	// Include keeps only these output columns in this format; Exclude
	// drops these. Default: every column.
	Include []string `yaml:"include"`
	Exclude []string `yaml:"exclude"`
}

// Column is a sellers column and the name it gets in the output.
type Column struct {
	Name string `yaml:"name"`
	As   string `yaml:"as"`
	// Mask replaces each value by its keyed hash: "hmac-sha256" writes the
	// lowercase hex HMAC-SHA256 of the value under the job's mask key, so
	// equal values stay joinable without being readable. Text columns only.
	Mask string `yaml:"mask"`
	// Redact writes NULL for every value (the column stays in the schema).
	Redact bool `yaml:"redact"`
}

// Job.OnSchemaChange values.
const (
	SchemaFail   = "fail"
	SchemaEvolve = "evolve"
)

// MaskHMACSHA256 is the one supported Column.Mask.
const MaskHMACSHA256 = "hmac-sha256"

// DefaultMaskKeyEnv is the environment variable holding the mask key
// unless a job names another.
const DefaultMaskKeyEnv = "SELLERSNAP_MASK_KEY"

// minMaskKey is the shortest accepted mask key, in bytes.
const minMaskKey = 16

// UnmarshalYAML accepts "display_name" or {name: created_at, as: discovered_at, mask: hmac-sha256, redact: true}.
func (c *Column) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		c.Name = n.Value
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return errors.New("want a column name or {name: …, as: …, mask: …, redact: …}")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if v.Kind != yaml.ScalarNode {
			return fmt.Errorf("%s: want a string", k.Value)
		}
		switch k.Value {
		case "name":
			c.Name = v.Value
		case "as":
			c.As = v.Value
		case "mask":
			c.Mask = v.Value
		case "redact":
			switch v.Value {
			case "true":
				c.Redact = true
			case "false":
			default:
				return fmt.Errorf("redact: want true or false, got %q", v.Value)
			}
		default:
			return fmt.Errorf("unknown key %q (known keys: name, as, mask, redact)", k.Value)
		}
	}
	return nil
}

// Output is the column's name in the files.
func (c Column) Output() string {
	if c.As != "" {
		return c.As
	}
	return c.Name
}

// Duration is a time.Duration written as "30s", "10m", "1h30m".
type Duration struct{ time.Duration }

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("want a duration such as 30s or 10m, got %q", n.Value)
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", n.Value)
	}
	d.Duration = v
	return nil
}

// ByteSize is a size in bytes written as 268435456, "256MiB" or "1GB".
type ByteSize int64

var byteUnits = map[string]int64{"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}

// UnmarshalYAML parses a whole number with an optional unit.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v := strings.TrimSpace(n.Value)
	i := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
	if i < 0 {
		i = len(v)
	}
	num, err := strconv.ParseInt(v[:i], 10, 64)
	unit, ok := byteUnits[strings.TrimSpace(v[i:])]
	if err != nil || !ok || num > (1<<62)/unit {
		return fmt.Errorf("want a size such as 268435456, 256MiB or 1GB, got %q", n.Value)
	}
	*b = ByteSize(num * unit)
	return nil
}

// File is a loaded config with the line of every field, for later errors.
type File struct {
	*Config
	Path  string
	lines map[string]int
}

// Errorf returns a FieldError for the field at path (jobs[0].columns[2]).
func (f *File) Errorf(path, format string, args ...any) error {
	return &FieldError{File: f.Path, Line: f.lines[path], Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Job returns the job called name.
func (f *File) Job(name string) (*Job, int, error) {
	for i, j := range f.Jobs {
		if j.Name == name {
			return j, i, nil
		}
	}
	names := make([]string, len(f.Jobs))
	for i, j := range f.Jobs {
		names[i] = j.Name
	}
	return nil, -1, fmt.Errorf("no job %q in %s (jobs: %s)", name, f.Path, strings.Join(names, ", "))
}

// A Check is a check of a job that config cannot make itself because it
// needs what another package knows (which formats and compressions exist
// is known to sinks). Load runs each on every job after config's own
// checks; bad reports a problem with a field below the job
// ("csv.compression", "formats[1]"), and the error names file, line and
// the whole field path, among config's own errors.
type Check func(j *Job, bad func(field, format string, args ...any))

// Load reads, expands and validates a config file. The error lists every
// problem found, each naming the file, line and field path.
func Load(path string, checks ...Check) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data, checks...)
}

// MaxFileSize bounds a config file: decoding YAML costs a few hundred
// bytes of memory per byte of input.
const MaxFileSize = 1 << 20

// yamlLine finds the line in a YAML syntax error.
var yamlLine = regexp.MustCompile(`^line (\d+): `)

// Parse is Load for data already read; name is used in errors.
func Parse(name string, data []byte, checks ...Check) (*File, error) {
	if len(data) > MaxFileSize {
		return nil, &FieldError{File: name, Msg: fmt.Sprintf("the file is larger than %d KiB; a pipeline.yaml is a few", MaxFileSize>>10)}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		// yaml.v3 says "yaml: line 5: did not find …": file:line like the rest.
		msg, line := strings.TrimPrefix(err.Error(), "yaml: "), 0
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = msg[len(m[0]):]
		}
		return nil, &FieldError{File: name, Line: line, Msg: msg}
	}
	if len(doc.Content) == 0 {
		return nil, &FieldError{File: name, Msg: "the file is empty"}
	}
	d := &decoder{file: name, lines: map[string]int{}}
	d.expandEnv(&doc, "")
	cfg := &Config{}
	d.decode(doc.Content[0], reflect.ValueOf(cfg).Elem(), "")
	if len(d.errs) > 0 {
		return nil, joinErrors(d.errs)
	}
	f := &File{Config: cfg, Path: name, lines: d.lines}
	if err := f.validate(checks); err != nil {
		return nil, err
	}
	return f, nil
}

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

// Selects returns each format's column selection.
func (j *Job) Selects() map[string]Select {
	return map[string]Select{
		"csv":     {j.CSV.Include, j.CSV.Exclude},
		"ndjson":  {j.NDJSON.Include, j.NDJSON.Exclude},
		"parquet": {j.Parquet.Include, j.Parquet.Exclude},
	}
}

// Split reports whether the job splits its output into numbered parts.
func (j *Job) Split() bool { return j.MaxRowsPerFile > 0 || j.MaxBytesPerFile > 0 }

// SourceColumns are the sellers columns a job reads, in order.
func (j *Job) SourceColumns() []string {
	out := make([]string, len(j.Columns))
	for i, c := range j.Columns {
		out[i] = c.Name
	}
	return out
}
