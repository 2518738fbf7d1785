package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sellersnap/sellersnap/internal/failpoint"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// publisher publishes one exported unit, the step after exporting it:
// it commits the unit's files, writes _SUCCESS and the manifest (create-
// only unless a rerun), or takes back what it committed; then it runs the
// after-publish steps (afterSteps). It checks the unit's lock before every
// change it makes to the bucket.
type publisher struct {
	r      *Runner // logger, Observer, clock
	bucket *sinks.Bucket
	u      unit
	mkey   string      // the unit's manifest key
	force  bool        // a rerun: the manifest replaces the unit's
	table  *tableWrite // the job's Iceberg table's data file, nil without a table
}

// publish commits every data file of outs (adding each to m), writes
// _SUCCESS, then the manifest at mkey, last; it returns the manifest's
// bytes. Before each change it checks that the unit's lock is still held.
// On failure it removes what it committed (for a rerun, the old manifest
// too, which no longer matches the files). An error wrapping
// sinks.ErrExists says another process's manifest is at mkey.
func (p *publisher) publish(ctx context.Context, outs []*output, m *Manifest) ([]byte, error) {
	r, bucket, u, mkey, force := p.r, p.bucket, p.u, p.mkey, p.force
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
					p.unpublish(ctx, stale())
					return nil, err
				}
				part.committed = true
				committed = append(committed, part.obj.Key())
			}
			m.Files = append(m.Files, o.manifestFile(part, k))
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
		p.unpublish(ctx, stale())
		return nil, err
	}
	// The table commit is the last step before the manifest: the unit is
	// in the table before it is exported, never after without it. A kill
	// between the two leaves no manifest; the unit's next export replaces
	// this commit's partition, so the table holds it once.
	if p.table != nil {
		if err := p.table.commit(ctx, p, m); err != nil {
			p.unpublish(ctx, stale())
			return nil, err
		}
		if data, err = m.encode(); err != nil {
			return nil, fmt.Errorf("encode manifest: %w", err)
		}
	}
	failpoint.Hit("before-manifest")
	if err := u.stillHeld(ctx); err != nil {
		p.unpublish(ctx, stale())
		return nil, err
	}
	if err := bucket.Put(ctx, mkey, data, "application/json", &sinks.PutOptions{IfNotExist: !force}); err != nil {
		if !errors.Is(err, sinks.ErrExists) {
			// An older manifest (a rerun) would now describe files that
			// were replaced: remove it, so the unit shows as pending.
			p.unpublish(ctx, []string{skey, mkey})
		}
		return data, err
	}
	return data, nil
}

// afterStep is one thing done after a unit is published, in order. A
// step's failure leaves the export published: failed reports it, and the
// next export of the job (or the next pass) does it again.
type afterStep struct {
	name   string
	run    func(ctx context.Context, p *publisher, m *Manifest, current *JobSchema) error
	failed func(p *publisher, err error)
}

// afterSteps are what follows every published export, before the
// Observer and the log hear of it: the job's schema.json, then the org's
// latest.json. (The table commit is not one: it must come before the
// manifest; see publish and the package doc.)
var afterSteps = []afterStep{
	{
		name: "schema.json",
		run: func(ctx context.Context, p *publisher, m *Manifest, current *JobSchema) error {
			return recordSchema(ctx, p.bucket, p.u.job, current, m, p.mkey)
		},
		failed: func(p *publisher, err error) {
			p.r.logger().Error("could not write schema.json; the next export retries", append(p.u.logAttrs(), "err", err)...)
		},
	},
	{
		name: "latest.json",
		run: func(ctx context.Context, p *publisher, m *Manifest, _ *JobSchema) error {
			return p.r.updateLatest(ctx, p.bucket, p.u, p.mkey, m)
		},
		failed: func(p *publisher, err error) {
			p.r.observer().LatestFailed(p.u.job.Name)
			p.r.logger().Error("could not update latest.json", append(p.u.logAttrs(), "err", err)...)
		},
	},
}

// after runs the after-publish steps of the published manifest m, then
// tells the Observer and the log.
func (p *publisher) after(ctx context.Context, m *Manifest, current *JobSchema, took time.Duration) {
	for _, step := range afterSteps {
		if err := step.run(ctx, p, m, current); err != nil {
			step.failed(p, err)
		}
	}
	r, u := p.r, p.u
	e := ExportOf(m, p.mkey)
	e.Duration, e.At = took, r.now()
	r.observer().Exported(e, m)
	r.logger().Info("exported", append(u.logAttrs(),
		"rows", m.Rows, "files", len(m.Files), "duration", took.Round(time.Millisecond),
		"rows_per_sec", int64(float64(m.Rows)/max(took.Seconds(), 1e-9)), "manifest", p.mkey)...)
}

// afterLostRace handles a manifest that appeared at mkey although this
// export held the unit's lock when it checked: a process that exports
// without the lock, or one whose lock was lost in the instant between its
// check and its commit. This export's files are at the keys now. If the
// manifest there lists other bytes it no longer matches the files, and it
// is replaced by this export's manifest, which does.
func (p *publisher) afterLostRace(ctx context.Context, m *Manifest, data []byte) (*Manifest, error) {
	r, bucket, u, mkey := p.r, p.bucket, p.u, p.mkey
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
func (p *publisher) unpublish(ctx context.Context, keys []string) {
	r, bucket, u := p.r, p.bucket, p.u
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
