package config

import (
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
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

// Job.OnSchemaChange values.
const (
	SchemaFail   = "fail"
	SchemaEvolve = "evolve"
)

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
