package pipeline

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"strings"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/internal/keys"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sinks/iceberg"
	"github.com/sellersnap/sellersnap/sources"
)

// A run is held once, under the date of its first export, whatever its
// completed_at does later (a run failed, then completed again days on):
// each export of a run records where its manifest is, in
// _sellersnap/<job>/runs/<run>.json, before the manifest; a run whose
// manifest is not at the key of its completed_at now but where that
// record says is exported already (a pass leaves it, with a warning), and
// a rerun of it rewrites it there. The record is a cache of where to look,
// never the reason a run is skipped: the manifest it names must exist and
// be that run's.

// runIndex is where a run's export is.
type runIndex struct {
	RunID    string `json:"run_id"`
	Manifest string `json:"manifest"`
	Date     string `json:"date"`
	// Path and Timezone are the job's when the run was exported: a job
	// whose path or time zone changed since writes its runs under its new
	// keys (the state is rebuilt), as it would without the record.
	Path     string `json:"path"`
	Timezone string `json:"timezone"`
}

func runIndexKey(job *Job, runID string) string {
	return path.Join(job.Layout.Prefix(), "_sellersnap", job.Name, "runs", keys.Escape(runID)+".json")
}

// putRunIndex records where the attempt's manifest goes (per_run units).
func (a *attempt) putRunIndex(ctx context.Context) error {
	u := a.u
	if u.run == nil {
		return nil
	}
	b, _ := json.Marshal(runIndex{RunID: u.run.ID, Manifest: a.mkey, Date: u.date, Path: u.job.Layout.String(), Timezone: u.job.Location.String()})
	if err := a.bucket.Put(ctx, runIndexKey(u.job, u.run.ID), b, "application/json", nil); err != nil {
		return fmt.Errorf("record where run %s is: %w", u.run.ID, err)
	}
	return nil
}

// heldAt returns u as it was first exported, and that export's manifest,
// when u's run is exported under another date than its completed_at's now;
// else u and nil.
func (r *Runner) heldAt(ctx context.Context, bucket *sinks.Bucket, u unit) (unit, *Manifest, error) {
	if u.run == nil {
		return u, nil, nil
	}
	b, err := bucket.ReadAll(ctx, runIndexKey(u.job, u.run.ID))
	if sinks.IsNotFound(err) {
		return u, nil, nil
	}
	if err != nil {
		return u, nil, err
	}
	var idx runIndex
	if json.Unmarshal(b, &idx) != nil || idx.RunID != u.run.ID || idx.Date == u.date ||
		idx.Path != u.job.Layout.String() || idx.Timezone != u.job.Location.String() {
		return u, nil, nil // unreadable (the next export writes it again), not moved, or the job's keys changed
	}
	moved := runUnitOn(u.job, *u.run, idx.Date)
	moved.held, moved.rerunID = u.held, u.rerunID
	if key, err := moved.manifestKey(); err != nil || key != idx.Manifest {
		return u, nil, nil // the job's path changed since: its keys are others
	}
	m, err := readManifest(ctx, bucket, idx.Manifest)
	if sinks.IsNotFound(err) {
		return u, nil, nil // killed before its manifest, or removed
	}
	if err != nil {
		return u, nil, err
	}
	if m.Job != u.job.Name || m.RunID != u.run.ID {
		return u, nil, nil
	}
	return moved, m, nil
}

// keysNameRuns reports whether job's keys carry the run id ({run_id} or
// {run_id8}): a run's exports can then be found by it in a listing.
func keysNameRuns(job *Job) bool {
	return job.Mode == config.ModePerRun && strings.Contains(job.Layout.String(), "{run_id")
}

// heldError is a run a pass finds exported under another date.
type heldError struct {
	m   *Manifest
	key string
}

func (e *heldError) Error() string {
	return fmt.Sprintf("run %s is exported under %s (%s)", e.m.RunID, e.m.Date, e.key)
}

// dropDuplicates removes, for each run of exported (just rewritten by a
// rerun -run), every other export of the run the bucket holds (written
// before runs were held once: a run exported again after its completed_at
// moved): its partition emptied in the table, then its files and
// _SUCCESS, its manifest last, under the run's lock; then latest.json
// is recomputed. One listing of the job's prefix finds them, by the run
// id in their keys. It returns the manifests removed.
func (r *Runner) dropDuplicates(ctx context.Context, bucket *sinks.Bucket, job *Job, exported []*Manifest) ([]string, error) {
	if len(exported) == 0 || !keysNameRuns(job) {
		return nil, nil
	}
	objs, err := bucket.List(ctx, job.Layout.Prefix(), "/"+ManifestName)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, m := range exported {
		keep := unitOfManifest(job, m)
		keepKey, err := keep.manifestKey()
		if err != nil {
			return removed, err
		}
		id8 := m.RunID[:min(8, len(m.RunID))]
		for _, o := range objs {
			if o.Key == keepKey || !strings.Contains(o.Key, id8) {
				continue
			}
			dup, err := readManifest(ctx, bucket, o.Key)
			if err != nil || dup.Job != job.Name || dup.RunID != m.RunID {
				continue
			}
			_, err = r.withLock(ctx, keep, func(u unit, _ *sources.Snapshot) (*Manifest, error) {
				return nil, r.dropExport(ctx, bucket, job, o.Key, dup, keep)
			})
			if err != nil {
				return removed, fmt.Errorf("remove the other export of run %s at %s: %w", m.RunID, o.Key, err)
			}
			r.logger().Warn("removed another export of the run (exported again after its completed_at moved)", "job", job.Name, "run_id", m.RunID, "removed", o.Key, "kept", keepKey)
			removed = append(removed, o.Key)
		}
	}
	if len(removed) > 0 {
		if _, _, err := r.RepairLatest(ctx, job, false); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// dropExport removes the export dup at key: its partition emptied in the
// job's table (unless it is the kept unit's), its files, _SUCCESS, then
// the manifest.
func (r *Runner) dropExport(ctx context.Context, bucket *sinks.Bucket, job *Job, key string, dup *Manifest, keep unit) error {
	du := unitOfManifest(job, dup)
	if job.table != nil && dup.Table != nil && du.date != keep.date {
		tb, err := r.table(ctx, job)
		if err != nil {
			return err
		}
		schema, err := r.outputSchemaNow(ctx, job)
		if err != nil {
			return err
		}
		layout, _, err := r.tableLayout(ctx, job, schema)
		if err != nil {
			return err
		}
		plan, err := tb.Prepare(ctx, layout)
		if err != nil {
			return tableErr(job, err)
		}
		values, err := job.table.values(du)
		if err != nil {
			return err
		}
		if _, err := plan.Commit(ctx, iceberg.DataFile{Values: values}, map[string]string{"sellersnap.job": job.Name,
			"sellersnap.unit": du.lockKey(), "sellersnap.version": cmp.Or(r.Version, "dev"), "sellersnap.removed-duplicate": key}); err != nil {
			return tableErr(job, err)
		}
	}
	for _, f := range dup.Files {
		if err := bucket.Delete(ctx, f.Key); err != nil && !sinks.IsNotFound(err) {
			return err
		}
	}
	if err := bucket.Delete(ctx, job.Layout.Success(key)); err != nil && !sinks.IsNotFound(err) {
		return err
	}
	if err := bucket.Delete(ctx, key); err != nil && !sinks.IsNotFound(err) {
		return err
	}
	return nil
}
