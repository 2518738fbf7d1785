package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/memory"

	"github.com/sellersnap/sellersnap/internal/arrowmem"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// unit is one set of files with one manifest: a run (per_run) or an org's
// snapshot for one date (full).
type unit struct {
	job    *Job
	run    *sources.Run // per_run only
	orgID  string
	date   string
	values map[string]string // placeholder values, less ext
	held   fence             // nil when not locked (plan, tests)
	// rerunID is the rerun writing the unit, recorded in its manifest.
	rerunID string
}

// stillHeld returns nil while u's lock is held (or u has none).
func (u unit) stillHeld(ctx context.Context) error {
	if u.held == nil {
		return nil
	}
	return u.held(ctx)
}

// noOrg stands for sellers without an org in keys.
const noOrg = "none"

func newRunUnit(job *Job, run sources.Run) unit {
	date := run.CompletedAt.In(job.Location).Format(time.DateOnly)
	org := run.OrgID
	if org == "" {
		org = noOrg
	}
	id8 := run.ID
	if len(id8) > 8 {
		id8 = id8[:8]
	}
	return unit{job: job, run: &run, orgID: run.OrgID, date: date, values: map[string]string{
		"job": job.Name, "org_id": org, "run_id": run.ID, "run_id8": id8, "run_date": date,
	}}
}

func newOrgUnit(job *Job, orgID, date string) unit {
	org := orgID
	if org == "" {
		org = noOrg
	}
	return unit{job: job, orgID: orgID, date: date, values: map[string]string{
		"job": job.Name, "org_id": org, "date": date,
	}}
}

// key returns the key of part n of the file in format (0: unsplit).
func (u unit) key(f *sinks.Format, part int) (string, error) {
	return u.job.Layout.File(u.values, f.Ext(), part)
}

// manifestKey is the manifest's key: beside the data files.
func (u unit) manifestKey() (string, error) {
	folder, err := u.job.Layout.Folder(u.values)
	if err != nil {
		return "", err
	}
	return u.job.Layout.Manifest(folder), nil
}

// latestKey is the key of the unit's latest.json.
func (u unit) latestKey(manifestKey string) string {
	return u.job.Layout.Latest(manifestKey, u.values["org_id"])
}

func (u unit) query() sources.Query {
	q := sources.Query{Columns: u.job.sourceColumns, OrgID: u.orgID, Filter: u.job.filter}
	if u.run != nil {
		q.RunID = u.run.ID
	}
	return q
}

// lockKey names the unit's lock: one exporter at a time, across processes.
func (u unit) lockKey() string {
	if u.run != nil {
		return "run:" + u.job.Name + ":" + u.run.ID
	}
	return "full:" + u.job.Name + ":" + u.date + ":" + u.orgID
}

func (u unit) logAttrs() []any {
	attrs := []any{"job", u.job.Name}
	if u.run != nil {
		attrs = append(attrs, "run_id", u.run.ID)
	} else {
		attrs = append(attrs, "date", u.date)
	}
	return append(attrs, "org_id", u.orgID)
}

// exportUnit streams one unit out of the snapshot into its files, commits
// them, then writes the manifest. On any error nothing is left at a final
// key by this attempt: uploads in flight are cancelled before they could
// commit, and files already committed are deleted again.
//
// Unless force (a rerun), the manifest is written create-only: if another
// process published the unit meanwhile (which the locks should prevent),
// errExportedElsewhere is returned and its manifest stays.
func (r *Runner) exportUnit(ctx context.Context, snap *sources.Snapshot, bucket *sinks.Bucket, u unit, force bool) (*Manifest, error) {
	start := time.Now()
	job := u.job
	defer r.observer().ExportStarted(job.Name)()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	rd, err := snap.Sellers(ctx, u.query(), sources.ReadOptions{BatchRows: job.batchRows, Allocator: r.allocator()})
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	schema := outputSchema(job, rd.Schema())
	tfs, err := transforms(job, rd.Schema(), r.allocator())
	if err != nil {
		return nil, err
	}
	mcols := manifestColumns(job, schema)
	current, err := readSchema(ctx, bucket, job)
	if err != nil {
		return nil, err
	}
	schemaChange, err := checkSchema(job, current, schemaColumns(mcols), job.Layout.Schema())
	if err != nil {
		return nil, err
	}

	pub := &publisher{r: r, bucket: bucket, u: u, force: force}
	var outs []*output
	published := false
	defer func() {
		for _, o := range outs {
			o.abort()
			if !published {
				// Parts committed early (split output) go again.
				pub.unpublish(ctx, o.committedKeys())
			}
		}
	}()
	st := &stages{rd: rd, schema: schema, tfs: tfs, every: r.ProgressEvery}
	if st.every <= 0 {
		st.every = 10 * time.Second
	}
	for _, format := range job.Formats {
		o, err := r.openOutput(ctx, bucket, u, format, schema)
		if err != nil {
			return nil, err
		}
		outs = append(outs, o)
		st.sinks = append(st.sinks, &sink{name: format.Name(), enc: o, finish: o.Close})
	}
	if job.table != nil {
		tw, err := r.openTableWrite(ctx, bucket, u, schema)
		if err != nil {
			return nil, err
		}
		pub.table = tw
		defer func() {
			if !published {
				tw.abort(ctx, pub)
			}
		}()
		st.sinks = append(st.sinks, &sink{name: "iceberg", enc: tw, finish: tw.Close})
	}
	st.progress = func(rows int64) {
		el := time.Since(start)
		r.logger().Info("exporting", append(u.logAttrs(), "rows", rows, "elapsed", el.Round(time.Second),
			"rows_per_sec", int64(float64(rows)/max(el.Seconds(), 1e-9)))...)
	}
	if err := st.run(ctx, cancel); err != nil {
		return nil, err
	}
	r.logger().Debug("stages", append(u.logAttrs(), st.timings()...)...)

	m := r.newManifest(u, snap, rd, mcols)
	m.SchemaChange, m.Rerun, m.RerunID, m.ConfigFingerprint = schemaChange, force, u.rerunID, u.job.configFingerprint
	if asOf := snap.Time().In(u.job.Location).Format(time.DateOnly); u.run == nil && asOf != u.date {
		m.DataAsOf = asOf
	}
	if schemaChange != nil {
		r.logger().Warn("the output schema changed (on_schema_change: evolve)", append(u.logAttrs(), "change", strings.Join(schemaChange, "; "))...)
	}
	if pub.mkey, err = u.manifestKey(); err != nil {
		return nil, err
	}
	data, err := pub.publish(ctx, outs, m)
	if errors.Is(err, sinks.ErrExists) {
		published = true
		return pub.afterLostRace(ctx, m, data)
	}
	if err != nil {
		return nil, err
	}
	published = true
	pub.after(ctx, m, current, time.Since(start))
	return m, nil
}

// newManifest describes the unit read from snap by rd; its files are
// added as they are committed.
func (r *Runner) newManifest(u unit, snap *sources.Snapshot, rd *sources.Reader, cols []ManifestColumn) *Manifest {
	job := u.job
	m := &Manifest{
		ManifestVersion: ManifestVersion, Job: job.Name, Mode: job.Mode, OrgID: u.orgID, Date: u.date,
		Rows: rd.Rows(), NulledValues: rd.Nulled(),
		Snapshot:   ManifestSnapshot{ReadAt: snap.Time().UTC(), Isolation: "repeatable read, read only"},
		Tool:       ManifestTool{Name: "sellersnap", Version: r.Version},
		Options:    job.options,
		ExportedAt: r.now().UTC(),
		Columns:    cols,
	}
	m.SchemaFingerprint = fingerprint(schemaColumns(cols))
	if m.NulledValues == nil {
		m.NulledValues = []sources.Nulled{}
	}
	if u.run != nil {
		m.RunID = u.run.ID
		c := u.run.CompletedAt.UTC()
		m.Snapshot.RunCompletedAt = &c
		if !u.run.StartedAt.IsZero() {
			s := u.run.StartedAt.UTC()
			m.Snapshot.RunStartedAt = &s
		}
	}
	return m
}

// outputSchema renames the source columns to the job's output names.
func outputSchema(job *Job, src *arrow.Schema) *arrow.Schema {
	fields := make([]arrow.Field, src.NumFields())
	for i, f := range src.Fields() {
		f.Name = job.columns[i].Output()
		if job.columns[i].Redact {
			f.Nullable = true
		}
		fields[i] = f
	}
	return arrow.NewSchema(fields, nil)
}

// manifestColumns describes the output columns for the manifest.
func manifestColumns(job *Job, schema *arrow.Schema) []ManifestColumn {
	cols := make([]ManifestColumn, schema.NumFields())
	for i, f := range schema.Fields() {
		mc := ManifestColumn{Name: f.Name, Source: job.columns[i].Name, Type: f.Type.String(), Nullable: f.Nullable}
		switch c := job.columns[i]; {
		case c.Redact:
			mc.Transform = "redact"
		case c.Mask != "":
			mc.Transform = "mask:" + c.Mask
		}
		cols[i] = mc
	}
	return cols
}

func (r *Runner) allocator() memory.Allocator {
	if r.Allocator != nil {
		return r.Allocator
	}
	return arrowmem.Shared()
}

func (r *Runner) logger() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// unitError wraps a unit's error with what identifies the unit.
func unitError(u unit, err error) error {
	if u.run != nil {
		return fmt.Errorf("job %s, run %s: %w", u.job.Name, u.run.ID, err)
	}
	return fmt.Errorf("job %s, org %s, date %s: %w", u.job.Name, u.values["org_id"], u.date, err)
}
