package pipeline

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// What a per_run job's bucket remembers of its exports, so that a pass
// costs what is new, not what is old (docs/scaling.md, "Finding pending
// runs"):
//
//	every completed run with completed_at ≤ watermark has a manifest,
//	except the runs in pending; the runs after it listed in exported
//	have one too; there were `below` completed runs up to the watermark.
//
// A pass reads the newest state, counts the completed runs up to the
// watermark (one row; skipped while PostgreSQL's statistics count no
// change to the runs table since the state was written), asks the database for the runs completed after the
// watermark and for the pending ones, and checks a manifest only for those
// it does not know to be exported: an idle pass lists one folder and reads
// one small object, however long the history. The state is derived from
// the manifests, never the other way round: a lost, corrupt or foreign
// state object is rebuilt from them (a reconciliation: every completed run
// against one listing of the manifests), and so is a state whose count no
// longer matches (a run marked completed, or inserted, long after its
// completed_at; a run deleted), and every state older than reconcileEvery
// (which also finds a manifest deleted by hand). Versions are written create-only (state/00000000000000000042.json),
// so replicas racing on it never overwrite each other: the loser's next
// pass reads the winner's version.
const (
	stateVersion = 1
	// reconcileEvery bounds how long a run the incremental pass cannot
	// see waits for its export.
	reconcileEvery = 24 * time.Hour
	// watermarkLag keeps the runs completed in the last hour above the
	// watermark (listed from the database on every pass), so that a run
	// whose transaction commits late, or a clock a little apart from the
	// database's, loses nothing.
	watermarkLag = time.Hour
	// stateKeep is how many versions stay in the bucket.
	stateKeep = 2
)

// runState is one version of the state.
type runState struct {
	StateVersion int       `json:"state_version"`
	Job          string    `json:"job"`
	Path         string    `json:"path"`     // the key template the manifests were looked for at
	Timezone     string    `json:"timezone"` // of {run_date} in it
	Watermark    time.Time `json:"watermark"`
	Below        int64     `json:"below"`
	Pending      []string  `json:"pending"`
	Exported     []string  `json:"exported"`
	ReconciledAt time.Time `json:"reconciled_at"`
	UpdatedAt    time.Time `json:"updated_at"`
	// RunsChanges is sources.RunsChanges read before the pass that wrote
	// this version queried the runs: while it reads the same, below is
	// still the count up to the watermark.
	RunsChanges string `json:"runs_changes,omitempty"`
}

// discovery is what a pass found: the pending units, and what it needs to
// write the next state version.
type discovery struct {
	job        *Job
	bucket     *sinks.Bucket
	prev       *runState // nil: rebuilt from the manifests
	seq        int64     // of the newest version listed (0: none)
	versions   []string  // keys of the versions listed
	runs       []sources.Run
	done       map[string]bool // run id → has a manifest
	reconciled bool
	changes    string // sources.RunsChanges before the pass's queries
	// found are the runs a manifest read showed exported that the state
	// did not list: another process exported them, or one killed before it
	// could record them (and perhaps before it updated latest.json).
	found   []sources.Run
	now     time.Time
	pending []unit // oldest first
}

// stateDir is where job's state versions live: under the job's static
// prefix, in a folder readers of the data skip (it starts with _).
func stateDir(job *Job) string {
	return path.Join(job.Layout.Prefix(), "_sellersnap", job.Name, "state") + "/"
}

// discover finds the pending runs of a per_run job: from the state when
// there is a recent one, else from every completed run and every manifest.
func (r *Runner) discover(ctx context.Context, job *Job) (*discovery, error) {
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return nil, err
	}
	d := &discovery{job: job, bucket: bucket, now: r.now(), done: map[string]bool{}}
	if err := r.readState(ctx, d); err != nil {
		return nil, err
	}
	if d.changes, err = r.Source.RunsChanges(ctx); err != nil {
		return nil, err
	}
	reconcile := d.prev == nil || d.now.Sub(d.prev.ReconciledAt) >= reconcileEvery || d.now.Before(d.prev.ReconciledAt)
	// The count is the one query of a pass whose cost grows with the
	// history: skip it while the statistics say the runs table is as it
	// was when the state was written.
	if !reconcile && (d.changes == "" || d.changes != d.prev.RunsChanges) {
		n, err := r.Source.CountCompletedUpTo(ctx, d.prev.Watermark)
		if err != nil {
			return nil, err
		}
		if n != d.prev.Below {
			r.logger().Info("completed runs changed below the export watermark; reconciling with the manifests",
				"job", job.Name, "watermark", d.prev.Watermark, "runs_then", d.prev.Below, "runs_now", n)
			reconcile = true
		}
	}
	if reconcile {
		err = r.reconcile(ctx, d)
	} else {
		err = r.incremental(ctx, d)
	}
	if err != nil {
		return nil, err
	}
	for _, run := range d.runs {
		if !d.done[run.ID] {
			d.pending = append(d.pending, newRunUnit(job, run))
		}
	}
	return d, nil
}

// readState sets d.prev to the newest valid version (nil for none).
func (r *Runner) readState(ctx context.Context, d *discovery) error {
	for attempt := 0; ; attempt++ {
		objs, err := d.bucket.List(ctx, stateDir(d.job), ".json")
		if err != nil {
			return err
		}
		d.versions, d.seq = nil, 0
		newest := ""
		for _, o := range objs {
			seq, err := strconv.ParseInt(strings.TrimSuffix(path.Base(o.Key), ".json"), 10, 64)
			if err != nil || seq <= 0 {
				continue
			}
			d.versions = append(d.versions, o.Key)
			if seq > d.seq {
				d.seq, newest = seq, o.Key
			}
		}
		if newest == "" {
			return nil
		}
		data, err := d.bucket.ReadAll(ctx, newest)
		if sinks.IsNotFound(err) && attempt < 3 {
			continue // cleaned up by a replica meanwhile: list again
		}
		if err != nil {
			return err
		}
		var st runState
		err = json.Unmarshal(data, &st)
		switch {
		case err != nil:
		case st.StateVersion != stateVersion || st.Job != d.job.Name:
			err = fmt.Errorf("state version %d of job %q", st.StateVersion, st.Job)
		case st.Path != d.job.Layout.String() || st.Timezone != d.job.Location.String():
			// The job's path or time zone changed: its manifests are looked for elsewhere now.
			err = fmt.Errorf("state of path %q in %s, the job's is %q in %s", st.Path, st.Timezone, d.job.Layout.String(), d.job.Location)
		}
		if err != nil {
			r.logger().Warn("ignoring the export state; rebuilding it from the manifests", "job", d.job.Name, "key", newest, "err", err)
			return nil
		}
		d.prev = &st
		return nil
	}
}

// reconcile finds the pending runs from every completed run and every
// manifest (one listing of the job's prefix). A manifest the previous
// state does not already count as the job's is read once, as a pass reads
// every manifest it finds (see exported): building the state of a bucket
// with a long history costs one read per manifest, once.
func (r *Runner) reconcile(ctx context.Context, d *discovery) error {
	runs, err := r.Source.CompletedRuns(ctx)
	if err != nil {
		return err
	}
	objs, err := d.bucket.List(ctx, d.job.Layout.Prefix(), "/"+ManifestName)
	if err != nil {
		return err
	}
	manifests := make(map[string]bool, len(objs))
	for _, o := range objs {
		manifests[o.Key] = true
	}
	verified := d.prev.exportedSet()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(existsConcurrency)
	done, found := make([]bool, len(runs)), make([]bool, len(runs))
	for i, run := range runs {
		u := newRunUnit(d.job, run)
		key, err := u.manifestKey()
		if err != nil {
			return unitError(u, err)
		}
		switch {
		case !manifests[key]:
		case verified(run):
			done[i] = true
		default:
			g.Go(func() error {
				var err error
				done[i], err = r.owned(gctx, d.bucket, d.job, key, false)
				found[i] = done[i]
				if isConflict(err) {
					return nil // pending: the export fails it under its lock, alone
				}
				return err
			})
		}
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, run := range runs {
		d.done[run.ID] = done[i]
		if found[i] {
			d.found = append(d.found, run)
		}
	}
	d.runs, d.reconciled = runs, true
	return nil
}

// exportedSet reports whether st counts run as exported (a nil state
// counts none).
func (st *runState) exportedSet() func(sources.Run) bool {
	if st == nil {
		return func(sources.Run) bool { return false }
	}
	pending := make(map[string]bool, len(st.Pending))
	for _, id := range st.Pending {
		pending[id] = true
	}
	exported := make(map[string]bool, len(st.Exported))
	for _, id := range st.Exported {
		exported[id] = true
	}
	return func(run sources.Run) bool {
		if run.CompletedAt.After(st.Watermark) {
			return exported[run.ID]
		}
		return !pending[run.ID]
	}
}

// incremental finds the pending runs from the state: the runs completed
// after its watermark that it does not list as exported, and its pending
// ones, each checked for a manifest.
func (r *Runner) incremental(ctx context.Context, d *discovery) error {
	above, err := r.Source.CompletedRunsAfter(ctx, d.prev.Watermark)
	if err != nil {
		return err
	}
	below, err := r.Source.CompletedRunsByID(ctx, d.prev.Pending)
	if err != nil {
		return err
	}
	known := make(map[string]bool, len(d.prev.Exported))
	for _, id := range d.prev.Exported {
		known[id] = true
	}
	d.runs = append(below, above...)
	slices.SortFunc(d.runs, func(a, b sources.Run) int {
		return cmp.Or(a.CompletedAt.Compare(b.CompletedAt), strings.Compare(a.ID, b.ID))
	})
	d.runs = slices.CompactFunc(d.runs, func(a, b sources.Run) bool { return a.ID == b.ID })
	var check []sources.Run
	for _, run := range d.runs {
		if known[run.ID] {
			d.done[run.ID] = true
		} else {
			check = append(check, run)
		}
	}
	done := make([]bool, len(check))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(existsConcurrency)
	for i, run := range check {
		g.Go(func() error {
			u := newRunUnit(d.job, run)
			key, err := u.manifestKey()
			if err != nil {
				return unitError(u, err)
			}
			done[i], err = r.exported(gctx, d.bucket, d.job, key)
			if isConflict(err) {
				return nil // pending: the export fails it under its lock, alone
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, run := range check {
		d.done[run.ID] = done[i]
		if done[i] {
			d.found = append(d.found, run)
		}
	}
	return nil
}

// next is the state after a pass that exported the runs in res.
func (d *discovery) next(res Result) *runState {
	for _, m := range res.Exported {
		d.done[m.RunID] = true
	}
	st := &runState{StateVersion: stateVersion, Job: d.job.Name, Path: d.job.Layout.String(), Timezone: d.job.Location.String(), Watermark: d.now.Add(-watermarkLag).UTC(),
		Pending: []string{}, Exported: []string{}, ReconciledAt: d.now.UTC(), UpdatedAt: d.now.UTC(), RunsChanges: d.changes}
	if d.prev != nil {
		if d.prev.Watermark.After(st.Watermark) {
			st.Watermark = d.prev.Watermark // the clock went back: never below a watermark already written
		}
		if !d.reconciled {
			st.ReconciledAt = d.prev.ReconciledAt
			st.Below = d.prev.Below // the runs up to the old watermark; those above it are in d.runs
		}
	}
	for _, run := range d.runs {
		below := !run.CompletedAt.After(st.Watermark)
		if below && (d.reconciled || run.CompletedAt.After(d.prev.Watermark)) {
			st.Below++
		}
		switch {
		case below && !d.done[run.ID]:
			st.Pending = append(st.Pending, run.ID)
		case !below && d.done[run.ID]:
			st.Exported = append(st.Exported, run.ID)
		}
	}
	return st
}

// saveState writes the state after a pass, unless it says what the last
// version said. Another replica that wrote the same version first wins: its
// state is as true as this one, and the next pass reads it.
func (r *Runner) saveState(ctx context.Context, d *discovery, res Result) error {
	st := d.next(res)
	if p := d.prev; p != nil && !d.reconciled && p.Below == st.Below && slices.Equal(p.Pending, st.Pending) && slices.Equal(p.Exported, st.Exported) && p.RunsChanges == st.RunsChanges {
		return nil
	}
	if err := putVersion(ctx, d.bucket, d.job, d.seq+1, st); err != nil {
		if errors.Is(err, sinks.ErrExists) {
			return nil
		}
		return err
	}
	// Keep the newest versions: a replica that listed the one before may
	// still be reading it.
	slices.Sort(d.versions)
	for _, k := range d.versions[:max(len(d.versions)-(stateKeep-1), 0)] {
		if err := d.bucket.Delete(ctx, k); err != nil {
			r.logger().Debug("could not delete an old export state", "job", d.job.Name, "key", k, "err", err)
		}
	}
	return nil
}

// putVersion writes st as version seq of job's state, create-only: an
// error wrapping sinks.ErrExists says another replica wrote it first.
func putVersion(ctx context.Context, bucket *sinks.Bucket, job *Job, seq int64, st *runState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return bucket.Put(ctx, stateKey(job, seq), append(data, '\n'), "application/json", &sinks.PutOptions{IfNotExist: true})
}

// stateKey is the key of version seq of job's state.
func stateKey(job *Job, seq int64) string { return fmt.Sprintf("%s%020d.json", stateDir(job), seq) }

// forgetExported puts run back among the pending runs of the state: its
// manifest was removed (a failed rerun), so it must be exported again
// however far the watermark is past it.
func (r *Runner) forgetExported(ctx context.Context, job *Job, run sources.Run) error {
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return err
	}
	for attempt := 0; attempt < 5; attempt++ {
		d := &discovery{job: job, bucket: bucket, now: r.now(), done: map[string]bool{}}
		if err := r.readState(ctx, d); err != nil || d.prev == nil {
			return err // none: the next pass rebuilds it
		}
		st := *d.prev
		st.Exported = slices.DeleteFunc(slices.Clone(st.Exported), func(id string) bool { return id == run.ID })
		if !run.CompletedAt.After(st.Watermark) && !slices.Contains(st.Pending, run.ID) {
			st.Pending = append(slices.Clone(st.Pending), run.ID)
		}
		st.UpdatedAt = d.now.UTC()
		if err := putVersion(ctx, bucket, job, d.seq+1, &st); !errors.Is(err, sinks.ErrExists) {
			return err
		}
	}
	return fmt.Errorf("export state of job %s: could not record run %s as pending (other replicas kept writing)", job.Name, run.ID)
}

// repairLatest points each org's latest.json at the newest of the runs the
// pass found exported without the state saying so, where it names an older
// export: a process killed between a manifest and latest.json leaves the
// pointer behind, and no later export of that org may come to move it. It
// reads one manifest and one latest.json per org with such runs (none on a
// pass that only finds what the state lists).
func (r *Runner) repairLatest(ctx context.Context, d *discovery, res Result) {
	newest := map[string]sources.Run{}
	for _, run := range d.found {
		if n, ok := newest[run.OrgID]; !ok || run.CompletedAt.After(n.CompletedAt) || run.CompletedAt.Equal(n.CompletedAt) && run.ID > n.ID {
			newest[run.OrgID] = run
		}
	}
	for _, m := range res.Exported {
		if n, ok := newest[m.OrgID]; ok && m.Snapshot.RunCompletedAt != nil && !m.Snapshot.RunCompletedAt.Before(n.CompletedAt) {
			delete(newest, m.OrgID) // this pass moved it already
		}
	}
	for _, run := range newest {
		if ctx.Err() != nil {
			return
		}
		u := newRunUnit(d.job, run)
		mkey, err := u.manifestKey()
		if err == nil {
			var m *Manifest
			if m, err = readManifest(ctx, d.bucket, mkey); err == nil {
				err = r.updateLatest(ctx, d.bucket, u, mkey, m)
			}
		}
		if err != nil {
			r.logger().Warn("could not check latest.json", append(u.logAttrs(), "err", err)...)
		}
	}
}
