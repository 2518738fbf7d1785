package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// Job is a job compiled once from its configuration: its schedule, the
// source query, the columns with their transforms, the formats and the
// key layout, resolved and checked. The runner, the daemon and every
// export take a *Job; none of them reads the YAML again.
type Job struct {
	Name     string
	Mode     string // config.ModePerRun or config.ModeFull
	Schedule string // as configured, for logs and the status page
	Cron     cron.Schedule
	Location *time.Location
	// Catchup (full jobs): config.CatchupLatest, CatchupAll or CatchupNone.
	Catchup string
	// Destination is the bucket URL (with its secrets: never print it
	// unredacted).
	Destination string
	// Formats are written in this order; the first one's folder holds the
	// manifest.
	Formats []*sinks.Format
	// Layout names every key the job writes.
	Layout Layout
	// Reruns are the config's reruns: entries for this job, applied once
	// each by Once (ApplyReruns). Set by whoever compiles the job.
	Reruns []DeclaredRerun

	filter         sources.Filter
	columns        []config.Column
	sourceColumns  []string
	selects        map[string][]int // per format: the columns it writes; nil for all
	onSchemaChange string
	maxRows        int64
	maxBytes       int64
	batchRows      int
	maskKey        []byte
	options        ManifestOptions
	// configFingerprint is recorded in every manifest (config_fingerprint).
	configFingerprint string
	// table is the job's Iceberg table, nil without one.
	table *tableSpec
}

// NewJob compiles j, which config.Load has checked (with CheckConfig).
func NewJob(j *config.Job) (*Job, error) {
	if j.Template == nil || j.Cron == nil || j.Location == nil {
		return nil, fmt.Errorf("job %s: not loaded by config.Load", j.Name)
	}
	job := &Job{
		Name: j.Name, Mode: j.Mode, Schedule: j.Schedule, Cron: j.Cron, Location: j.Location,
		Catchup: j.Catchup, Destination: j.Destination,
		Layout: newLayout(j.Template, j.Split()),
		filter: sources.Filter{Flagged: j.Flagged}, columns: j.Columns, sourceColumns: j.SourceColumns(),
		selects: map[string][]int{}, onSchemaChange: j.OnSchemaChange,
		maxRows: j.MaxRowsPerFile, maxBytes: int64(j.MaxBytesPerFile), batchRows: j.BatchRows, maskKey: j.MaskKey,
	}
	// Every format is built (the manifest records each one's compression),
	// the job writes those it names, in its order.
	all := map[string]*sinks.Format{}
	for _, name := range sinks.FormatNames() {
		f, err := sinks.NewFormat(name, formatOptions(j, name))
		if err != nil {
			return nil, fmt.Errorf("job %s: %w", j.Name, err)
		}
		all[name] = f
	}
	for _, name := range j.Formats {
		f := all[name]
		if f == nil {
			return nil, fmt.Errorf("job %s: unknown format %q", j.Name, name)
		}
		job.Formats = append(job.Formats, f)
		if sel := j.Selects()[name]; len(sel.Include) > 0 || len(sel.Exclude) > 0 {
			job.selects[name] = sel.Columns(j.Columns)
		}
	}
	job.options = ManifestOptions{
		CSVFormulaGuard: j.CSV.FormulaGuard == nil || *j.CSV.FormulaGuard, CSVDelimiter: j.CSV.Delimiter, CSVQuoteAll: j.CSV.QuoteAll,
		CSVCompression: all["csv"].Compression(), NDJSONCompression: all["ndjson"].Compression(), ParquetCompression: all["parquet"].Compression(),
		Flagged: j.Flagged, Order: sources.Order,
	}
	job.configFingerprint = configFingerprint(j, job)
	if j.Iceberg != nil {
		var outputs []string
		for _, c := range j.Columns {
			outputs = append(outputs, c.Output())
		}
		var err error
		if job.table, err = newTableSpec(j, outputs); err != nil {
			return nil, err
		}
	}
	return job, nil
}

// configFingerprint identifies what in j shapes a unit's files: mode, path,
// formats and their options, columns with their renames and transforms,
// the flagged filter, the split limits, the schema policy. Not the bucket
// (its URL may hold secrets), the schedule, nor the mask key (secret: a
// new key shows as the masked values changing, not here).
func configFingerprint(j *config.Job, job *Job) string {
	b, _ := json.Marshal(struct {
		Mode, Path     string
		Formats        []string
		Columns        []config.Column
		Selects        map[string][]int
		Options        ManifestOptions
		MaxRows        int64
		MaxBytes       int64
		OnSchemaChange string
	}{j.Mode, j.Path, j.Formats, j.Columns, job.selects, job.options, job.maxRows, job.maxBytes, j.OnSchemaChange})
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Compile compiles every job of f and checks each against the source's
// catalog: the tables' own contract first (blamed on source), then each
// job's columns and masks (blamed on the job's fields). Errors name file,
// line and field.
func Compile(ctx context.Context, f *config.File, catalog *sources.Catalog) ([]*Job, error) {
	if err := catalog.Check(ctx, nil); err != nil {
		return nil, f.Errorf("source", "%v (README, \"Source contract\")", err)
	}
	jobs, err := Build(f)
	if err != nil {
		return nil, err
	}
	for i := range jobs {
		if err := CheckJob(ctx, f, i, catalog); err != nil {
			return nil, err
		}
	}
	return jobs, nil
}

// Build compiles the jobs of f without the database: what the daemon
// schedules before it knows whether each job's columns are in the source
// (CheckJob, before the job's first pass).
func Build(f *config.File) ([]*Job, error) {
	jobs := make([]*Job, len(f.Jobs))
	for i, j := range f.Jobs {
		job, err := NewJob(j)
		if err != nil {
			return nil, err
		}
		for _, rr := range f.Reruns {
			if rr.Job == j.Name {
				job.Reruns = append(job.Reruns, DeclaredRerun{ID: rr.ID, Reason: rr.Reason, Selectors: rr.Selectors(),
					Selection: Selection{Runs: rr.Runs, From: rr.From, To: rr.To, Orgs: rr.Orgs, AllowPast: rr.AllowPast}})
			}
		}
		jobs[i] = job
	}
	return jobs, nil
}

// CheckJob checks f's job i against the source's catalog: its columns
// exist, can be read and exported, and masks apply to text columns. The
// error names the field.
func CheckJob(ctx context.Context, f *config.File, i int, catalog *sources.Catalog) error {
	j := f.Jobs[i]
	if err := catalog.Check(ctx, j.SourceColumns()); err != nil {
		return f.Errorf(fmt.Sprintf("jobs[%d].columns", i), "%v", err)
	}
	for k, c := range j.Columns {
		if c.Mask == "" {
			continue
		}
		for _, sc := range catalog.Sellers() {
			if sc.Name == c.Name && !sources.TextType(sc.Type) {
				return f.Errorf(fmt.Sprintf("jobs[%d].columns[%d]", i, k), "mask: column %q is %s; mask applies to text columns (redact works on any)", c.Name, sc.Type)
			}
		}
	}
	return nil
}

// CheckConfig is the config.Check of what sinks knows: every format a job
// names exists, and each format's options (compression, CSV delimiter)
// are ones it accepts. Pass it to config.Load so that these mistakes are
// reported with file, line and field among config's own.
func CheckConfig(j *config.Job, bad func(field, format string, args ...any)) {
	for i, name := range j.Formats {
		if _, err := sinks.NewFormat(name, sinks.FormatOptions{}); err != nil {
			bad(fmt.Sprintf("formats[%d]", i), "%v", err)
		}
	}
	// Every format's block is checked, written or not.
	for _, name := range sinks.FormatNames() {
		if _, err := sinks.NewFormat(name, sinks.FormatOptions{Compression: formatOptions(j, name).Compression}); err != nil {
			bad(name+".compression", "%v", err)
		} else if name == "parquet" {
			if _, err := sinks.NewFormat(name, formatOptions(j, name)); err != nil {
				bad("parquet.compression_level", "%v", err)
			}
		}
	}
	if len(j.CSV.Delimiter) == 1 {
		if _, err := sinks.NewFormat("csv", sinks.FormatOptions{CSV: sinks.CSVOptions{Delimiter: j.CSV.Delimiter[0]}}); err != nil {
			bad("csv.delimiter", "%v", err)
		}
	}
	if j.Iceberg != nil && j.Path != "" {
		var outputs []string
		for _, c := range j.Columns {
			outputs = append(outputs, c.Output())
		}
		if _, err := newTableSpec(j, outputs); err != nil {
			bad("iceberg", "%v", strings.TrimPrefix(err.Error(), "job "+j.Name+": iceberg: "))
		}
	}
}

// formatOptions are the options j gives format.
func formatOptions(j *config.Job, format string) sinks.FormatOptions {
	switch format {
	case "csv":
		o := sinks.FormatOptions{Compression: j.CSV.Compression, CSV: sinks.CSVOptions{QuoteAll: j.CSV.QuoteAll}}
		o.CSV.FormulaGuard = j.CSV.FormulaGuard == nil || *j.CSV.FormulaGuard
		if len(j.CSV.Delimiter) == 1 {
			o.CSV.Delimiter = j.CSV.Delimiter[0]
		}
		return o
	case "ndjson":
		return sinks.FormatOptions{Compression: j.NDJSON.Compression}
	case "parquet":
		return sinks.FormatOptions{Compression: j.Parquet.Compression, Parquet: sinks.ParquetOptions{
			RowGroupRows: j.Parquet.RowGroupRows, CompressionLevel: j.Parquet.CompressionLevel}}
	}
	return sinks.FormatOptions{}
}

// FormatNames are the names of the job's formats, in order.
func (j *Job) FormatNames() []string {
	out := make([]string, len(j.Formats))
	for i, f := range j.Formats {
		out[i] = f.Name()
	}
	return out
}

// Columns are the job's columns as configured (do not modify).
func (j *Job) Columns() []config.Column { return j.columns }

// SourceColumns are the sellers columns the job reads, in order.
func (j *Job) SourceColumns() []string { return j.sourceColumns }

// Split reports whether the job splits its output into numbered parts.
func (j *Job) Split() bool { return j.maxRows > 0 || j.maxBytes > 0 }

// RunManifestKey is the key of run's manifest (per_run jobs).
func (j *Job) RunManifestKey(run sources.Run) (string, error) {
	return newRunUnit(j, run).manifestKey()
}

// PrevSlots returns up to n of the job's schedule slots at or before t,
// newest first (in the job's time zone).
func (j *Job) PrevSlots(t time.Time, n int) []time.Time {
	t = t.In(j.Location)
	for window := 26 * time.Hour; window <= 800*24*time.Hour; window *= 4 {
		var slots []time.Time
		for s := j.Cron.Next(t.Add(-window)); !s.IsZero() && !s.After(t); s = j.Cron.Next(s) {
			slots = append(slots, s)
			if len(slots) > 100000 { // very frequent schedules: keep the tail
				slots = slots[len(slots)-n:]
			}
		}
		if len(slots) >= n || window*4 > 800*24*time.Hour {
			out := make([]time.Time, 0, n)
			for i := len(slots) - 1; i >= 0 && len(out) < n; i-- {
				out = append(out, slots[i])
			}
			return out
		}
	}
	return nil
}
