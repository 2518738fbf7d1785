package pipeline

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
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
//	have one too; digests sums up, day by day, the completed runs up to
//	the watermark.
//
// The state is a cache that makes a pass cheaper; it is never the reason a
// run is skipped. A pass reads the newest version and, in one snapshot of
// the database, the digest of every day's completed runs (one index-only
// scan, no statistics: sources.Snapshot.RunDigests), the runs completed
// after the watermark and the pending ones. A day whose digest differs
// from the state's (a run inserted or marked completed late, one deleted
// and another inserted, a run in a table inheriting from the runs table,
// whatever PostgreSQL's statistics say) has each of its runs checked for a
// manifest; every run after the watermark is checked too (a HEAD for those
// the state lists as exported). An idle pass therefore lists one folder,
// reads one small object and sends one HEAD per run of the last hour,
// however long the history. The watermark comes from the database's
// clock: a state whose watermark is after it (a clock that jumped) or
// that lists a run as exported without its manifest is corrected on that
// pass, with a warning and sellersnap_state_corrections_total. A lost,
// corrupt or foreign state is rebuilt from the manifests (a
// reconciliation: every completed run against one listing of the
// manifests), and so is every state older than reconcileEvery (which also
// finds a manifest deleted by hand below the watermark). Versions are
// written create-only (state/00000000000000000042.json), so replicas
// racing on it never overwrite each other: the loser's next pass reads the
// winner's version.
const (
	stateVersion = 2
	// reconcileEvery bounds how long a run whose manifest was deleted by
	// hand below the watermark waits for its export again.
	reconcileEvery = 24 * time.Hour
	// watermarkLag keeps the runs completed in the last hour above the
	// watermark (listed from the database on every pass): a run whose
	// transaction commits a little after its completed_at changes no
	// digest, so its day is not listed again.
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
	// Seed is the hash seed of the digests.
	Seed int64 `json:"seed"`
	// Digests are the completed runs up to the watermark, by day of
	// completed_at (UTC).
	Digests      map[string]sources.RunDigest `json:"digests"`
	Pending      []string                     `json:"pending"`
	Exported     []string                     `json:"exported"`
	ReconciledAt time.Time                    `json:"reconciled_at"`
	UpdatedAt    time.Time                    `json:"updated_at"`
}

// discovery is what a pass found: the pending units, and what it needs to
// write the next state version.
type discovery struct {
	r          *Runner // logger, Observer, clock, source
	job        *Job
	bucket     *sinks.Bucket
	prev       *runState // nil: rebuilt from the manifests
	seq        int64     // of the newest version listed (0: none)
	versions   []string  // keys of the versions listed
	runs       []sources.Run
	done       map[string]bool // run id → has a manifest
	reconciled bool
	// watermark, seed and digests are the next state's: the database's
	// clock less watermarkLag, and the runs up to it.
	watermark time.Time
	seed      int64
	digests   map[string]sources.RunDigest
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

// contradiction says why st cannot describe the runs up to watermark (the
// database's clock less watermarkLag) at wall-clock time now, or "".
func (st *runState) contradiction(watermark, now time.Time) string {
	switch {
	case st.Watermark.After(watermark):
		return fmt.Sprintf("its watermark %s is after the database's clock less %s (%s)", st.Watermark.Format(time.RFC3339), watermarkLag, watermark.Format(time.RFC3339))
	case st.ReconciledAt.After(now):
		return fmt.Sprintf("it was reconciled at %s, after now (%s)", st.ReconciledAt.Format(time.RFC3339), now.Format(time.RFC3339))
	case st.UpdatedAt.After(now.Add(watermarkLag)):
		return fmt.Sprintf("it was updated at %s, after now (%s)", st.UpdatedAt.Format(time.RFC3339), now.Format(time.RFC3339))
	}
	return ""
}

// corrected logs a state the pass did not believe, and counts it.
func (d *discovery) corrected(reason, msg string, attrs ...any) {
	d.r.logger().Warn(msg, append([]any{"job", d.job.Name, "reason", reason}, attrs...)...)
	d.r.observer().StateCorrected(d.job.Name, reason)
}

// readState sets d.prev to the newest valid version (nil for none).
func (d *discovery) readState(ctx context.Context) error {
	r := d.r
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
		if err != nil && !errors.Is(err, sinks.ErrTooLarge) {
			return err
		}
		var st runState
		if err == nil {
			err = json.Unmarshal(data, &st)
		}
		switch {
		case err != nil:
		case st.StateVersion != stateVersion || st.Job != d.job.Name:
			err = fmt.Errorf("state version %d of job %q", st.StateVersion, st.Job)
		case st.Seed == 0 || st.Digests == nil:
			err = errors.New("no digests of the runs up to its watermark")
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
func (d *discovery) reconcile(ctx context.Context, snap *sources.Snapshot) error {
	r := d.r
	runs, err := snap.CompletedRuns(ctx)
	if err != nil {
		return err
	}
	d.seed = cmp.Or(rand.Int64N(1<<40), 1)
	if d.digests, err = snap.DayDigests(ctx, d.seed, time.Time{}, d.watermark); err != nil {
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
				done[i], err = r.owners.owned(gctx, d.bucket, d.job, key, false)
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
// after its watermark, its pending ones, and those of every day whose
// digest changed, each checked for a manifest (a HEAD for those the state
// lists as exported, which must still have one).
func (d *discovery) incremental(ctx context.Context, snap *sources.Snapshot) error {
	r := d.r
	d.seed = d.prev.Seed
	// One pass over the runs up to the watermark; grouped by day only
	// when they changed, to find the days.
	total, err := snap.RunsDigest(ctx, d.seed, d.prev.Watermark)
	if err != nil {
		return err
	}
	below := d.prev.Digests
	var changed []string
	if total != sumDigests(d.prev.Digests) {
		if below, err = snap.DayDigests(ctx, d.seed, time.Time{}, d.prev.Watermark); err != nil {
			return err
		}
		changed = changedDays(d.prev.Digests, below)
		r.logger().Info("completed runs changed below the export watermark; checking those days' runs",
			"job", d.job.Name, "watermark", d.prev.Watermark, "days", changed)
	}
	recent, err := snap.DayDigests(ctx, d.seed, d.prev.Watermark, d.watermark)
	if err != nil {
		return err
	}
	d.digests = maps.Clone(below)
	for day, dg := range recent {
		d.digests[day] = d.digests[day].Add(dg)
	}
	onDays, err := snap.CompletedRunsOnDays(ctx, changed, d.prev.Watermark)
	if err != nil {
		return err
	}
	above, err := snap.CompletedRunsAfter(ctx, d.prev.Watermark)
	if err != nil {
		return err
	}
	pending, err := snap.CompletedRunsByID(ctx, d.prev.Pending)
	if err != nil {
		return err
	}
	known := make(map[string]bool, len(d.prev.Exported))
	for _, id := range d.prev.Exported {
		known[id] = true
	}
	d.runs = slices.Concat(onDays, pending, above)
	slices.SortFunc(d.runs, func(a, b sources.Run) int {
		return cmp.Or(a.CompletedAt.Compare(b.CompletedAt), strings.Compare(a.ID, b.ID))
	})
	d.runs = slices.CompactFunc(d.runs, func(a, b sources.Run) bool { return a.ID == b.ID })
	done := make([]bool, len(d.runs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(existsConcurrency)
	for i, run := range d.runs {
		g.Go(func() error {
			u := newRunUnit(d.job, run)
			key, err := u.manifestKey()
			if err != nil {
				return unitError(u, err)
			}
			if known[run.ID] {
				// Listed as exported: one HEAD says whether it still is.
				done[i], err = d.bucket.Exists(gctx, key)
				if err == nil && !done[i] {
					d.corrected("missing_manifest", "the export state lists a run as exported but its manifest is missing; exporting it again",
						"run_id", run.ID, "key", key)
				}
				return err
			}
			done[i], err = r.owners.exported(gctx, d.bucket, d.job, key)
			if isConflict(err) {
				return nil // pending: the export fails it under its lock, alone
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, run := range d.runs {
		d.done[run.ID] = done[i]
		if done[i] && !known[run.ID] {
			d.found = append(d.found, run)
		}
	}
	return nil
}

// sumDigests is the digest of every day's runs together.
func sumDigests(days map[string]sources.RunDigest) sources.RunDigest {
	total := sources.RunDigest{Sum: "0"}
	for _, dg := range days {
		total = total.Add(dg)
	}
	return total
}

// changedDays lists, sorted, the days whose digest in now differs from
// the one in then.
func changedDays(then, now map[string]sources.RunDigest) []string {
	var days []string
	for day, dg := range now {
		if then[day] != dg {
			days = append(days, day)
		}
	}
	for day := range then {
		if _, ok := now[day]; !ok {
			days = append(days, day) // every run of it is gone: nothing to list, but say so
		}
	}
	slices.Sort(days)
	return days
}

// next is the state after a pass that exported the runs in res.
func (d *discovery) next(res Result) *runState {
	for _, m := range append(slices.Clone(res.Exported), res.Held...) {
		d.done[m.RunID] = true
	}
	st := &runState{StateVersion: stateVersion, Job: d.job.Name, Path: d.job.Layout.String(), Timezone: d.job.Location.String(),
		Watermark: d.watermark, Seed: d.seed, Digests: d.digests,
		Pending: []string{}, Exported: []string{}, ReconciledAt: d.now.UTC(), UpdatedAt: d.now.UTC()}
	if st.Digests == nil {
		st.Digests = map[string]sources.RunDigest{} // no runs yet: still a digest
	}
	if d.prev != nil && !d.reconciled {
		st.ReconciledAt = d.prev.ReconciledAt
	}
	for _, run := range d.runs {
		below := !run.CompletedAt.After(st.Watermark)
		switch {
		case below && !d.done[run.ID]:
			st.Pending = append(st.Pending, run.ID)
		case !below && d.done[run.ID]:
			st.Exported = append(st.Exported, run.ID)
		}
	}
	return st
}

// save writes the state after a pass, unless it says what the last
// version said. Another replica that wrote the same version first wins: its
// state is as true as this one, and the next pass reads it.
func (d *discovery) save(ctx context.Context, res Result) error {
	r := d.r
	st := d.next(res)
	if p := d.prev; p != nil && !d.reconciled && maps.Equal(p.Digests, st.Digests) && slices.Equal(p.Pending, st.Pending) && slices.Equal(p.Exported, st.Exported) {
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

// repairLatest points each org's latest.json at the newest of the runs the
// pass found exported without the state saying so, where it names an older
// export: a process killed between a manifest and latest.json leaves the
// pointer behind, and no later export of that org may come to move it. It
// reads one manifest and one latest.json per org with such runs (none on a
// pass that only finds what the state lists).
func (d *discovery) repairLatest(ctx context.Context, res Result) {
	r := d.r
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
				// Found, not written by this process: followed only if true.
				var why string
				why, err = r.latest().rejected(ctx, d.bucket, d.job, mkey, m, map[string]sources.Run{run.ID: run}, nil, d.watermark.Add(watermarkLag+clockSlack))
				switch {
				case err != nil:
				case why != "":
					r.logger().Warn("not pointing latest.json at a manifest found in the bucket", append(u.logAttrs(), "manifest", mkey, "why", why)...)
				default:
					err = r.latest().updateLatest(ctx, d.bucket, u, mkey, m)
				}
			}
		}
		if err != nil {
			r.logger().Warn("could not check latest.json", append(u.logAttrs(), "err", err)...)
		}
	}
}
