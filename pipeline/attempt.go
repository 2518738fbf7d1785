package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sellersnap/sellersnap/internal/failpoint"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// attempt carries one unit through one export, in order: it reads the
// unit in its snapshot and streams it into its files (the formats' and the
// table's data file), commits the files, commits the table, writes the
// manifest, then runs the after-steps; on a failure it takes back what it
// did. It checks the unit's lock before every change it makes to the
// bucket.
type attempt struct {
	r      *Runner // logger, Observer, clock
	snap   *sources.Snapshot
	bucket *sinks.Bucket
	u      unit
	force  bool        // a rerun: the manifest replaces the unit's
	mkey   string      // the unit's manifest key
	table  *tableWrite // the job's Iceberg table's data file, nil without a table
	id     string      // the attempt's, in its table snapshot (and staging folder)
	// A replacing attempt (a rerun of a published unit, intent.go): in is
	// its intent, old the manifest it replaces. left: the intent stays for
	// the next attempt to settle, and so do the staged files.
	in   *intent
	old  *Manifest
	left bool
}

// run streams one unit out of the snapshot into its files, commits
// them, then writes the manifest. On any error nothing is left at a final
// key by this attempt: uploads in flight are cancelled before they could
// commit, and files already committed are deleted again.
//
// Unless force (a rerun), the manifest is written create-only: if another
// process published the unit meanwhile (which the locks should prevent),
// errExportedElsewhere is returned and its manifest stays.
func (a *attempt) run(ctx context.Context) (*Manifest, error) {
	r, snap, bucket, u, force := a.r, a.snap, a.bucket, a.u, a.force
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
	if a.mkey, err = u.manifestKey(); err != nil {
		return nil, err
	}
	a.id = newAttemptID()
	if force {
		if err := a.replacing(ctx); err != nil {
			return nil, err
		}
		if a.in != nil {
			// Before the first staged file: whatever a kill leaves of
			// them is under the intent's staging folder.
			if err := a.putIntent(ctx); err != nil {
				return nil, err
			}
		}
	}

	var outs []*output
	published := false
	defer func() {
		for _, o := range outs {
			o.abort()
		}
		if published || a.left {
			return
		}
		if a.table != nil {
			a.abortTable(ctx)
		}
		if a.in != nil {
			a.rollBack(ctx) // the staged files go with their folder
			return
		}
		for _, o := range outs {
			// Parts committed early (split output) go again.
			a.unpublish(ctx, o.committedKeys())
		}
	}()
	st := &stages{rd: rd, schema: schema, tfs: tfs, every: r.ProgressEvery}
	if st.every <= 0 {
		st.every = 10 * time.Second
	}
	for _, format := range job.Formats {
		o, err := a.openOutput(ctx, format, schema)
		if err != nil {
			return nil, err
		}
		outs = append(outs, o)
		st.sinks = append(st.sinks, &sink{name: format.Name(), enc: o, finish: o.Close})
	}
	if job.table != nil {
		tw, err := a.openTable(ctx, schema)
		if err != nil {
			return nil, err
		}
		a.table = tw
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

	m := a.manifest(rd, mcols)
	m.SchemaChange, m.Rerun, m.RerunID, m.ConfigFingerprint = schemaChange, force, u.rerunID, u.job.configFingerprint
	if asOf := snap.Time().In(u.job.Location).Format(time.DateOnly); u.run == nil && asOf != u.date {
		m.DataAsOf = asOf
	}
	if schemaChange != nil {
		r.logger().Warn("the output schema changed (on_schema_change: evolve)", append(u.logAttrs(), "change", strings.Join(schemaChange, "; "))...)
	}
	data, err := a.publish(ctx, outs, m)
	if errors.Is(err, sinks.ErrExists) {
		published = true
		return a.afterLostRace(ctx, m, data)
	}
	if err != nil {
		return nil, err
	}
	published = true
	a.after(ctx, m, current, time.Since(start))
	return m, nil
}

// newManifest describes the unit read from snap by rd; its files are
// added as they are committed.
func (a *attempt) manifest(rd *sources.Reader, cols []ManifestColumn) *Manifest {
	r, u, snap := a.r, a.u, a.snap
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

// publish commits every data file of outs (adding each to m), commits
// the table, then writes the manifest at mkey, then _SUCCESS; it returns
// the manifest's bytes. Before each change it checks that the unit's lock
// is still held. A replacing attempt commits its files to their staged
// keys and moves them into place only once the table holds its commit
// (intent.go). On failure it removes what it committed; the manifest
// replaced, if any, stays. An error wrapping sinks.ErrExists says another
// process's manifest is at mkey.
func (a *attempt) publish(ctx context.Context, outs []*output, m *Manifest) ([]byte, error) {
	r, bucket, u, mkey, force := a.r, a.bucket, a.u, a.mkey, a.force
	var committed []string
	failpoint.Hit("before-commit")
	if r.beforeCommit != nil {
		r.beforeCommit()
	}
	// Nothing is committed (to the bucket, to the table) while something
	// is in the way of a key the export must write.
	skey := u.job.Layout.Success(mkey)
	finals := []string{mkey, skey}
	for _, o := range outs {
		for _, part := range o.parts {
			finals = append(finals, part.final)
		}
	}
	if err := bucket.CheckWritable(ctx, finals...); err != nil {
		return nil, err
	}
	for i, o := range outs {
		for k, part := range o.parts {
			if i > 0 || k > 0 {
				failpoint.Hit("between-commits")
			}
			if !part.committed {
				err := u.stillHeld(ctx)
				if err == nil {
					err = part.obj.Commit()
				}
				if err != nil {
					a.unpublish(ctx, committed)
					return nil, err
				}
				part.committed = true
				committed = append(committed, part.obj.Key())
			}
			m.Files = append(m.Files, o.manifestFile(part, k))
		}
	}
	// Only the lock's holder writes these keys: temporary files of
	// theirs are a killed holder's.
	if err := errors.Join(bucket.RemoveStaleTemp(ctx, skey), bucket.RemoveStaleTemp(ctx, mkey)); err != nil {
		a.unpublish(ctx, committed)
		return nil, err
	}
	// Where the run's export is, before its manifest: the run stays there
	// whatever its completed_at does later (held.go).
	if err := a.putRunIndex(ctx); err != nil {
		a.unpublish(ctx, committed)
		return nil, err
	}
	if a.in != nil {
		return a.publishReplacing(ctx, m)
	}
	// _SUCCESS: the data files are whole (Hadoop/Spark convention). A
	// kill after it leaves no manifest: the unit is pending, and its next
	// export writes both.
	if err := u.stillHeld(ctx); err != nil {
		a.unpublish(ctx, committed)
		return nil, err
	}
	if err := bucket.Put(ctx, skey, nil, "application/octet-stream", nil); err != nil {
		a.unpublish(ctx, committed)
		return nil, err
	}
	committed = append(committed, skey)
	// The table commit is the last step before the manifest: the unit is
	// in the table before it is exported, never after without it. A kill
	// between the two leaves no manifest; the unit's next export replaces
	// this commit's partition, so the table holds it once.
	if a.table != nil {
		if err := a.commitTable(ctx, m); err != nil {
			a.unpublish(ctx, committed)
			return nil, err
		}
	}
	data, err := m.encode()
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	failpoint.Hit("before-manifest")
	if err := u.stillHeld(ctx); err != nil {
		a.unpublish(ctx, committed)
		return nil, err
	}
	if err := bucket.Put(ctx, mkey, data, "application/json", &sinks.PutOptions{IfNotExist: !force}); err != nil {
		if !errors.Is(err, sinks.ErrExists) {
			a.unpublish(ctx, committed)
		}
		return data, err
	}
	return data, nil
}

// publishReplacing is publish's second half for a replacing attempt, its
// files staged: the intent (staged), the table commit, then the roll
// forward. A table commit that fails takes the attempt back and keeps the
// published export; one whose outcome stays unknown leaves the intent to
// the next attempt.
func (a *attempt) publishReplacing(ctx context.Context, m *Manifest) ([]byte, error) {
	// The intent names the table's data file before it is uploaded: a
	// kill between the two leaves nothing the intent does not name.
	if err := a.staged(ctx, m); err != nil {
		return nil, err
	}
	if a.table != nil {
		if err := a.commitTable(ctx, m); err != nil {
			if a.table.tried {
				a.left = true
				return nil, a.errBetween(err)
			}
			return nil, fmt.Errorf("%w; the published export is kept (%s)", err, a.mkey)
		}
	}
	data, err := a.rollForward(ctx, m)
	if err != nil {
		a.left = true
		return nil, err
	}
	return data, nil
}

// afterStep is one thing done after a unit is published, in order. A
// step's failure leaves the export published: failed reports it, and the
// next export of the job (or the next pass) does it again.
type afterStep struct {
	name   string
	run    func(ctx context.Context, a *attempt, m *Manifest, current *JobSchema) error
	failed func(a *attempt, err error)
}

// afterSteps are what follows every published export, before the
// Observer and the log hear of it: the job's schema.json, then the org's
// latest.json. (The table commit is not one: it must come before the
// manifest; see publish and the package doc.)
var afterSteps = []afterStep{
	{
		name: "schema.json",
		run: func(ctx context.Context, a *attempt, m *Manifest, current *JobSchema) error {
			return recordSchema(ctx, a.bucket, a.u.job, current, m, a.mkey)
		},
		failed: func(a *attempt, err error) {
			a.r.logger().Error("could not write schema.json; the next export retries", append(a.u.logAttrs(), "err", err)...)
		},
	},
	{
		name: "latest.json",
		run: func(ctx context.Context, a *attempt, m *Manifest, _ *JobSchema) error {
			return a.r.latest().updateLatest(ctx, a.bucket, a.u, a.mkey, m)
		},
		failed: func(a *attempt, err error) {
			a.r.observer().LatestFailed(a.u.job.Name)
			a.r.logger().Error("could not update latest.json", append(a.u.logAttrs(), "err", err)...)
		},
	},
}

// after runs the after-publish steps of the published manifest m, then
// tells the Observer and the log.
func (a *attempt) after(ctx context.Context, m *Manifest, current *JobSchema, took time.Duration) {
	for _, step := range afterSteps {
		if err := step.run(ctx, a, m, current); err != nil {
			step.failed(a, err)
		}
	}
	r, u := a.r, a.u
	e := ExportOf(m, a.mkey)
	e.Duration, e.At = took, r.now()
	r.observer().Exported(e, m)
	r.logger().Info("exported", append(u.logAttrs(),
		"rows", m.Rows, "files", len(m.Files), "duration", took.Round(time.Millisecond),
		"rows_per_sec", int64(float64(m.Rows)/max(took.Seconds(), 1e-9)), "manifest", a.mkey)...)
}

// afterLostRace handles a manifest that appeared at mkey although this
// export held the unit's lock when it checked: a process that exports
// without the lock, or one whose lock was lost in the instant between its
// check and its commit. This export's files are at the keys now. If the
// manifest there lists other bytes it no longer matches the files, and it
// is replaced by this export's manifest, which does.
func (a *attempt) afterLostRace(ctx context.Context, m *Manifest, data []byte) (*Manifest, error) {
	r, bucket, u, mkey := a.r, a.bucket, a.u, a.mkey
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
func (a *attempt) unpublish(ctx context.Context, keys []string) {
	r, bucket, u := a.r, a.bucket, a.u
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
