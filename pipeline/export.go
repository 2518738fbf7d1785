package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/memory"

	"github.com/sellersnap/sellersnap/internal/arrowmem"
	"github.com/sellersnap/sellersnap/internal/failpoint"
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

	var outs []*output
	published := false
	defer func() {
		for _, o := range outs {
			o.abort()
			if !published {
				// Parts committed early (split output) go again.
				r.unpublish(ctx, bucket, u, o.committedKeys())
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
	mkey, err := u.manifestKey()
	if err != nil {
		return nil, err
	}
	data, err := r.publish(ctx, bucket, u, outs, m, mkey, force)
	if errors.Is(err, sinks.ErrExists) {
		published = true
		return r.afterLostRace(ctx, bucket, u, mkey, m, data)
	}
	if err != nil {
		return nil, err
	}
	published = true
	r.afterPublish(ctx, bucket, u, current, m, mkey, time.Since(start))
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

// publish commits every data file of outs (adding each to m), writes
// _SUCCESS, then the manifest at mkey, last; it returns the manifest's
// bytes. Before each change it checks that the unit's lock is still held.
// On failure it removes what it committed (for a rerun, the old manifest
// too, which no longer matches the files). An error wrapping
// sinks.ErrExists says another process's manifest is at mkey.
func (r *Runner) publish(ctx context.Context, bucket *sinks.Bucket, u unit, outs []*output, m *Manifest, mkey string, force bool) ([]byte, error) {
	var committed []string
	stale := func() []string {
		if force {
			return append(committed, mkey)
		}
		return committed
	}
	failpoint.Hit("before-commit")
	if r.beforeCommit != nil {
		r.beforeCommit()
	}
	for i, o := range outs {
		for k, p := range o.parts {
			if i > 0 || k > 0 {
				failpoint.Hit("between-commits")
			}
			if !p.committed {
				err := u.stillHeld(ctx)
				if err == nil {
					err = p.obj.Commit()
				}
				if err != nil {
					r.unpublish(ctx, bucket, u, stale())
					return nil, err
				}
				p.committed = true
				committed = append(committed, p.obj.Key())
			}
			m.Files = append(m.Files, o.manifestFile(p, k))
		}
	}
	data, err := m.encode()
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	// _SUCCESS: the data files are whole (Hadoop/Spark convention).
	skey := u.job.Layout.Success(mkey)
	err = u.stillHeld(ctx)
	if err == nil {
		// Only the lock's holder writes these keys: temporary files of
		// theirs are a killed holder's.
		err = errors.Join(bucket.RemoveStaleTemp(ctx, skey), bucket.RemoveStaleTemp(ctx, mkey))
	}
	if err == nil {
		err = bucket.Put(ctx, skey, nil, "application/octet-stream", nil)
	}
	if err != nil {
		r.unpublish(ctx, bucket, u, stale())
		return nil, err
	}
	failpoint.Hit("before-manifest")
	if err := u.stillHeld(ctx); err != nil {
		r.unpublish(ctx, bucket, u, stale())
		return nil, err
	}
	if err := bucket.Put(ctx, mkey, data, "application/json", &sinks.PutOptions{IfNotExist: !force}); err != nil {
		if !errors.Is(err, sinks.ErrExists) {
			// An older manifest (a rerun) would now describe files that
			// were replaced: remove it, so the unit shows as pending.
			r.unpublish(ctx, bucket, u, []string{skey, mkey})
		}
		return data, err
	}
	return data, nil
}

// afterPublish does what follows a published export: schema.json,
// latest.json (conveniences: a failure leaves the export published, and
// the next export retries), the Observer and the log.
func (r *Runner) afterPublish(ctx context.Context, bucket *sinks.Bucket, u unit, current *JobSchema, m *Manifest, mkey string, took time.Duration) {
	job := u.job
	if err := recordSchema(ctx, bucket, job, current, m, mkey); err != nil {
		r.logger().Error("could not write schema.json; the next export retries", append(u.logAttrs(), "err", err)...)
	}
	if err := r.updateLatest(ctx, bucket, u, mkey, m); err != nil {
		r.observer().LatestFailed(job.Name)
		r.logger().Error("could not update latest.json", append(u.logAttrs(), "err", err)...)
	}
	e := ExportOf(m, mkey)
	e.Duration, e.At = took, r.now()
	r.observer().Exported(e, m)
	r.logger().Info("exported", append(u.logAttrs(),
		"rows", m.Rows, "files", len(m.Files), "duration", took.Round(time.Millisecond),
		"rows_per_sec", int64(float64(m.Rows)/max(took.Seconds(), 1e-9)), "manifest", mkey)...)
}

// afterLostRace handles a manifest that appeared at mkey although this
// export held the unit's lock when it checked: a process that exports
// without the lock, or one whose lock was lost in the instant between its
// check and its commit. This export's files are at the keys now. If the
// manifest there lists other bytes it no longer matches the files, and it
// is replaced by this export's manifest, which does.
func (r *Runner) afterLostRace(ctx context.Context, bucket *sinks.Bucket, u unit, mkey string, m *Manifest, data []byte) (*Manifest, error) {
	theirs, err := readManifest(ctx, bucket, mkey)
	if err == nil && sameFiles(theirs.Files, m.Files) {
		r.logger().Warn("another process published this export first, with the same bytes; its manifest stands",
			append(u.logAttrs(), "manifest", mkey)...)
		return nil, errExportedElsewhere
	}
	if err := u.stillHeld(ctx); err != nil {
		return nil, err
	}
	if err := bucket.Put(ctx, mkey, data, "application/json", nil); err != nil {
		return nil, fmt.Errorf("replace the manifest another process published over this export's files: %w", err)
	}
	r.logger().Error("another process published this unit while this one committed its files; its manifest no longer matched them and was replaced",
		append(u.logAttrs(), "manifest", mkey)...)
	return m, nil
}

// sameFiles reports whether two manifests list the same keys with the same bytes.
func sameFiles(a, b []ManifestFile) bool {
	return slices.EqualFunc(a, b, func(x, y ManifestFile) bool { return x.Key == y.Key && x.SHA256 == y.SHA256 && x.Bytes == y.Bytes })
}

// unpublish removes what a failed attempt committed (and, for a rerun,
// the old manifest, which no longer matches the files at its keys). The
// next export of the unit writes them anew. An exporter that lost its lock
// removes nothing: the keys may hold what the new holder published.
func (r *Runner) unpublish(ctx context.Context, bucket *sinks.Bucket, u unit, keys []string) {
	stopped := context.Cause(ctx) // the export was cancelled (a shutdown)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := u.stillHeld(ctx); err != nil {
		switch {
		case stopped != nil:
			// Cancelling a query closes its connection, and the lock
			// goes with it: no other process is involved.
			r.logger().Info("export stopped; leaving its files for the next attempt", append(u.logAttrs(), "cause", stopped)...)
		case errors.Is(err, sources.ErrLockLost):
			r.logger().Warn("lock lost: leaving the files of the failed export to the new holder", append(u.logAttrs(), "err", err)...)
		default:
			r.logger().Warn("could not check the unit's lock; leaving the files of the failed export for its next attempt", append(u.logAttrs(), "err", err)...)
		}
		return
	}
	for i := len(keys) - 1; i >= 0; i-- {
		if err := bucket.Delete(ctx, keys[i]); err != nil {
			r.logger().Warn("could not remove a file of a failed export", "key", keys[i], "err", err)
		}
	}
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
