package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sinks/iceberg"
	"github.com/sellersnap/sellersnap/sources"
	"golang.org/x/sync/errgroup"
)

// Planned is one unit Once would export now.
type Planned struct {
	RunID string `json:"run_id,omitempty"` // per_run jobs
	OrgID string `json:"org_id"`
	Date  string `json:"date"`
	Rows  int64  `json:"rows"`
	// Keys are every key the export writes, in order: data files,
	// _SUCCESS, the manifest, latest.json (written unless it names a
	// newer export).
	Keys []string `json:"keys"`
	// MoreParts: the job splits its output, so each format may have more
	// parts than the first, listed in Keys.
	MoreParts bool `json:"more_parts,omitempty"`
	// Table is the Iceberg commit the export makes (jobs with a table).
	Table string `json:"table,omitempty"`
}

// Plan says what Once would export now, without writing anything. It
// fails as Once would when the output schema drifted from schema.json
// under on_schema_change: fail.
func (r *Runner) Plan(ctx context.Context, job *Job) ([]Planned, error) {
	if err := r.checkSchemaDrift(ctx, job); err != nil {
		return nil, err
	}
	var units []unit
	var counts map[string]int64
	nextState := "" // per_run: the export state version the pass writes
	if job.Mode == config.ModeFull {
		bucket, err := r.Bucket(ctx, job.Destination)
		if err != nil {
			return nil, err
		}
		date, ok := r.slotDate(job)
		if !ok {
			return nil, nil
		}
		if counts, err = r.Source.CountByOrg(ctx, job.filter); err != nil {
			return nil, err
		}
		for org := range counts {
			u := newOrgUnit(job, org, date)
			key, err := u.manifestKey()
			if err != nil {
				return nil, unitError(u, err)
			}
			if done, err := r.owners.exported(ctx, bucket, job, key); err != nil && !isConflict(err) {
				return nil, err
			} else if !done {
				units = append(units, u) // a conflict included: once fails it
			}
		}
		slices.SortFunc(units, func(a, b unit) int { return strings.Compare(a.orgID, b.orgID) })
	} else {
		d, err := r.discover(ctx, job)
		if err != nil {
			return nil, err
		}
		units = d.pending
		nextState = stateKey(job, d.seq+1)
		runs := make([]sources.Run, len(units))
		for i, u := range units {
			runs[i] = *u.run
		}
		if counts, err = r.Source.CountByRun(ctx, runs, job.filter); err != nil {
			return nil, err
		}
	}
	plan, err := planned(job, units, counts)
	if err != nil {
		return nil, err
	}
	if len(plan) > 0 {
		bucket, err := r.Bucket(ctx, job.Destination)
		if err != nil {
			return nil, err
		}
		if ok, err := bucket.Exists(ctx, job.Layout.Schema()); err != nil {
			return nil, err
		} else if !ok {
			plan[0].Keys = append(plan[0].Keys, job.Layout.Schema()) // the first export records the schema
		}
		if nextState != "" {
			plan[0].Keys = append(plan[0].Keys, nextState) // the pass records what it exported
		}
	}
	return plan, nil
}

// planned describes units with their row counts (by run id, or by org).
func planned(job *Job, units []unit, counts map[string]int64) ([]Planned, error) {
	plan := make([]Planned, 0, len(units))
	for _, u := range units {
		p := Planned{OrgID: u.orgID, Date: u.date, Rows: counts[u.orgID]}
		if u.run != nil {
			p.RunID, p.Rows = u.run.ID, counts[u.run.ID]
		}
		p.MoreParts = job.Split()
		for _, f := range job.Formats {
			k, err := u.key(f, 1)
			if err != nil {
				return nil, unitError(u, err)
			}
			p.Keys = append(p.Keys, k)
		}
		mk, _ := u.manifestKey()
		if u.run != nil {
			p.Keys = append(p.Keys, runIndexKey(job, u.run.ID)) // where the run is held (held.go)
		}
		p.Keys = append(p.Keys, job.Layout.Success(mk), mk, u.latestKey(mk))
		if job.table != nil {
			p.Table = job.table.describe(u)
		}
		plan = append(plan, p)
	}
	return plan, nil
}

// Recent returns up to n recent manifests of job in its destination,
// newest first: for a per_run job those of the runs that completed last
// (among the last 4n; a few reads however long the history), for a full
// job the n the bucket stored last (one listing of the job's prefix).
func (r *Runner) Recent(ctx context.Context, job *Job, n int) ([]*Manifest, error) {
	ms, _, err := r.recent(ctx, job, n)
	return ms, err
}

// recent is Recent with each manifest's key.
func (r *Runner) recent(ctx context.Context, job *Job, n int) ([]*Manifest, []string, error) {
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return nil, nil, err
	}
	var candidates []string
	if job.Mode == config.ModePerRun {
		// The manifests of the runs that completed last: a few reads,
		// however long the history (a run without one is pending).
		runs, err := r.Source.NewestCompletedRuns(ctx, 4*n)
		if err != nil {
			return nil, nil, err
		}
		for _, run := range runs {
			key, err := job.RunManifestKey(run)
			if err != nil {
				return nil, nil, err
			}
			candidates = append(candidates, key)
		}
	} else {
		objs, err := bucket.List(ctx, job.Layout.Prefix(), "/"+ManifestName)
		if err != nil {
			return nil, nil, err
		}
		slices.SortFunc(objs, func(a, b sinks.ObjectInfo) int { return b.ModTime.Compare(a.ModTime) })
		for _, o := range objs {
			candidates = append(candidates, o.Key)
		}
	}
	var out []*Manifest
	var keys []string
	for _, key := range candidates {
		if len(out) == n {
			break
		}
		data, err := bucket.ReadAll(ctx, key)
		if sinks.IsNotFound(err) {
			continue // not exported (yet)
		}
		if err != nil {
			return nil, nil, err
		}
		var m Manifest
		if err := json.Unmarshal(data, &m); err != nil || m.Job != job.Name {
			continue // another job's, or not ours
		}
		out = append(out, &m)
		keys = append(keys, key)
	}
	return out, keys, nil
}

// RecentExports returns up to n of job's most recent exports found in its
// bucket (from their manifests), newest first.
func (r *Runner) RecentExports(ctx context.Context, job *Job, n int) ([]Export, error) {
	ms, keys, err := r.recent(ctx, job, n)
	if err != nil {
		return nil, err
	}
	out := make([]Export, len(ms))
	for i, m := range ms {
		out[i] = ExportOf(m, keys[i])
	}
	return out, nil
}

// Verify compares the row count of the manifest of every run of a per_run
// job completed in [from, to) with the database now (one count query, one
// manifest read per exported run). checked is how many manifests it
// compared; runs without a manifest are pending, not mismatched.
func (r *Runner) Verify(ctx context.Context, job *Job, from, to time.Time) (mismatches []RowMismatch, checked int, err error) {
	if job.Mode != config.ModePerRun {
		return nil, 0, fmt.Errorf("job %s is a %s job: its snapshots hold the rows as they were when taken; only per_run jobs are verified", job.Name, job.Mode)
	}
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return nil, 0, err
	}
	runs, err := r.Source.CompletedRunsBetween(ctx, from, to)
	if err != nil {
		return nil, 0, err
	}
	counts, err := r.Source.CountByRun(ctx, runs, job.filter)
	if err != nil {
		return nil, 0, err
	}
	found := make([]*RowMismatch, len(runs))
	seen := make([]bool, len(runs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(existsConcurrency)
	for i, run := range runs {
		g.Go(func() error {
			key, err := job.RunManifestKey(run)
			if err != nil {
				return err
			}
			m, err := readManifest(gctx, bucket, key)
			if sinks.IsNotFound(err) {
				return nil // pending
			}
			if err != nil {
				return err
			}
			if m.Job != job.Name {
				return nil
			}
			seen[i] = true
			if n := counts[run.ID]; n != m.Rows {
				found[i] = &RowMismatch{Job: job.Name, RunID: run.ID, OrgID: run.OrgID, Manifest: key, Published: m.Rows, Now: n}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, 0, err
	}
	for i := range runs {
		if seen[i] {
			checked++
		}
		if found[i] != nil {
			mismatches = append(mismatches, *found[i])
		}
	}
	return mismatches, checked, nil
}

// Recount compares the rows that exports of job published (per_run runs,
// as the Observer saw them) with the database now, without a bucket
// request: the daemon's check of its recent exports.
func (r *Runner) Recount(ctx context.Context, job *Job, exports []Export) ([]RowMismatch, error) {
	var runs []sources.Run
	for _, e := range exports {
		if e.RunID != "" && e.Outcome == "success" {
			runs = append(runs, sources.Run{ID: e.RunID, OrgID: e.OrgID})
		}
	}
	if len(runs) == 0 {
		return nil, nil
	}
	counts, err := r.Source.CountByRun(ctx, runs, job.filter)
	if err != nil {
		return nil, fmt.Errorf("recount job %s: %w", job.Name, err)
	}
	var out []RowMismatch
	for _, e := range exports {
		if n, ok := counts[e.RunID]; ok && e.Outcome == "success" && n != e.Rows {
			out = append(out, RowMismatch{Job: job.Name, RunID: e.RunID, OrgID: e.OrgID, Manifest: e.Manifest, Published: e.Rows, Now: n})
		}
	}
	return out, nil
}

// TableStatus is a job's Iceberg table as status and validate show it.
type TableStatus struct {
	Name      string // catalog.namespace.table
	Location  string
	Metadata  string // "" before the first commit (or validate) created it
	Created   bool   // validate created it just now
	Snapshots int
	Retention string
	// Current is the current snapshot: its id, time and summary.
	Current *iceberg.Snapshot
}

// TableStatus reads the job's table through its catalog; nil for a job
// without one.
func (r *Runner) TableStatus(ctx context.Context, job *Job) (*TableStatus, error) {
	if job.table == nil {
		return nil, nil
	}
	tb, err := r.table(ctx, job)
	if err != nil {
		return nil, err
	}
	st, err := tb.Status(ctx)
	if err != nil {
		return nil, err
	}
	return tableStatus(job, st), nil
}

func tableStatus(job *Job, st *iceberg.Status) *TableStatus {
	cfg := job.table.cfg
	ts := &TableStatus{Name: cfg.Name + "." + cfg.Namespace + "." + cfg.Table, Location: st.Location, Metadata: st.Metadata,
		Snapshots: st.Snapshots, Current: st.Snapshot, Retention: "forever"}
	if cfg.Retention > 0 {
		ts.Retention = fmt.Sprintf("%s, keeping at least %d snapshots", cfg.Retention, cfg.KeepSnapshots)
	}
	return ts
}

// CheckTable connects to the job's catalog, creates its tables, the
// namespace and the table where missing, and checks that the table's
// schema and partitioning are the job's (reading the output schema from
// the database as an export does). It writes no snapshot.
func (r *Runner) CheckTable(ctx context.Context, job *Job) (*TableStatus, error) {
	if job.table == nil {
		return nil, nil
	}
	tb, err := r.table(ctx, job)
	if err != nil {
		return nil, err
	}
	schema, err := r.outputSchemaNow(ctx, job)
	if err != nil {
		return nil, err
	}
	layout, _, err := r.tableLayout(ctx, job, schema)
	if err != nil {
		return nil, err
	}
	plan, err := tb.Prepare(ctx, layout)
	if err != nil {
		return nil, tableErr(job, err)
	}
	created, err := plan.Create(ctx)
	if err != nil {
		return nil, err
	}
	ts, err := r.TableStatus(ctx, job)
	if err != nil {
		return nil, err
	}
	ts.Created = created
	return ts, nil
}

// checkSchemaDrift returns the *SchemaChangeError an export of job would
// fail with now, reading the output schema from the database as an export
// does (types with their modifiers, nullability) and writing nothing.
func (r *Runner) checkSchemaDrift(ctx context.Context, job *Job) error {
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return err
	}
	current, err := readSchema(ctx, bucket, job)
	if err != nil || current == nil {
		return err
	}
	schema, err := r.outputSchemaNow(ctx, job)
	if err != nil {
		return err
	}
	cols := schemaColumns(manifestColumns(job, schema))
	_, err = checkSchema(job, current, cols, job.Layout.Schema())
	return err
}

// outputSchemaNow is the output schema an export of job would have now,
// read from the database as an export reads it (types with their
// modifiers, nullability), reading no rows.
func (r *Runner) outputSchemaNow(ctx context.Context, job *Job) (*arrow.Schema, error) {
	snap, err := r.Source.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	defer snap.Close(context.WithoutCancel(ctx))
	rd, err := snap.Sellers(ctx, sources.Query{Columns: job.SourceColumns(), RunID: noRun}, sources.ReadOptions{Allocator: r.allocator()})
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	return outputSchema(job, rd.Schema()), nil
}

// RepairLatest recomputes every latest.json of job from its manifests and
// rewrites those that name anything else: a manifest dated after today (a
// rerun of a future date by an older version), one that is gone, one that
// is not true, or an older export. A manifest is a candidate only if the
// database has its run (or org) as it says and its files are where and as
// large as it says (see rejected); the newest candidate of each pointer
// that passes is chosen, and the newer ones that did not are returned as
// rejected. It reads every manifest of the job once (one listing, then the
// reads, 8 at a time), and checks the files of the candidates it tries.
// With dryRun it only reports.
func (r *Runner) RepairLatest(ctx context.Context, job *Job, dryRun bool) ([]LatestRepair, []LatestRejection, error) {
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return nil, nil, err
	}
	return r.latest().repair(ctx, bucket, job, dryRun)
}

// Unsettled is a unit a replacing attempt (a rerun) left between its two
// exports: killed, or stopped after its table commit. The next pass (or
// export of the unit) settles it: forward if the table holds the
// attempt's commit (or the job has no table), else back to the published
// export.
type Unsettled struct {
	RunID   string    `json:"run_id,omitempty"`
	OrgID   string    `json:"org_id"`
	Date    string    `json:"date"`
	State   string    `json:"state"` // staging (goes back), staged (goes forward if the table holds it)
	Attempt string    `json:"attempt"`
	Intent  string    `json:"intent"` // the intent record's key
	Since   time.Time `json:"since"`
}

// Unsettled lists job's units between two exports (intent.go).
func (r *Runner) Unsettled(ctx context.Context, job *Job) ([]Unsettled, error) {
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return nil, err
	}
	ins, err := pendingIntents(ctx, bucket, job)
	var out []Unsettled
	for _, in := range ins {
		u := Unsettled{OrgID: in.OrgID, Date: in.Date, State: in.State, Attempt: in.Attempt, Intent: intentKey(in.unit(job)), Since: in.At}
		if in.Run != nil {
			u.RunID = in.Run.ID
		}
		out = append(out, u)
	}
	return out, err
}
