package pipeline_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/internal/pipelinetest"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sources"
)

// stateKeys lists the export state versions in the bucket.
func (f *fixture) stateKeys() []string {
	var out []string
	for k := range f.AllFiles() {
		if strings.Contains(k, "/_sellersnap/") && strings.Contains(k, "/state/") {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// replica is another process's Runner on f's database and bucket: its
// own connections, PostgreSQL locks, f's clock.
func (f *fixture) replica() *pipeline.Runner {
	src, err := sources.Open(context.Background(), sources.Config{DSN: f.DBURL})
	if err != nil {
		f.T.Fatal(err)
	}
	r := &pipeline.Runner{Source: src, Version: "test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Locker: pipeline.PostgresLocker(src), Now: f.Runner.Now}
	f.T.Cleanup(func() { r.Close(); src.Close() })
	return r
}

// requests returns what the bucket has been sent so far.
func (f *fixture) requests() int64 {
	b, err := f.Runner.Bucket(context.Background(), f.Dest)
	if err != nil {
		f.T.Fatal(err)
	}
	return b.Requests()
}

// insertOldRun adds a completed run whose completed_at is long past (as a
// collector that inserts late would), with n sellers.
func insertOldRun(t *testing.T, dbURL, org string, completed time.Time, n int) string {
	t.Helper()
	id := pipelinetest.InsertRun(t, dbURL, org, n, false)
	pgtest.Exec(t, dbURL, `UPDATE collection_runs SET started_at = $2, completed_at = $2 WHERE id = $1`, id, completed)
	return id
}

// TestIdlePassCostsWhatIsNew: after the history is exported, a pass with
// nothing new lists the state folder and reads one version (2 requests)
// and sends a HEAD for each run completed in the last hour, and a pass
// with new runs checks those runs only.
func TestIdlePassCostsWhatIsNew(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	first, err := f.Runner.Once(ctx, job)
	if err != nil || len(first.Exported) == 0 {
		t.Fatalf("first pass: %+v, %v", first, err)
	}
	if keys := f.stateKeys(); len(keys) != 1 {
		t.Fatalf("state versions after the first pass: %v", keys)
	}
	before := f.requests()
	res, err := f.Runner.Once(ctx, job)
	if err != nil || len(res.Exported) != 0 {
		t.Fatalf("idle pass: %+v, %v", res, err)
	}
	if n := f.requests() - before; n > 3 {
		t.Errorf("an idle pass sent %d bucket requests, want at most 3 (list the intents, list the state, read it)", n)
	}

	// New runs: checked, exported, recorded; the old ones are not looked at.
	org := f.AnyOrg()
	ids := []string{pipelinetest.InsertRun(t, f.DBURL, org, 5, false), pipelinetest.InsertRun(t, f.DBURL, org, 5, false)}
	res, err = f.Runner.Once(ctx, job)
	if err != nil || len(res.Exported) != 2 {
		t.Fatalf("pass with 2 new runs: %+v, %v", res, err)
	}
	for i, m := range res.Exported {
		if m.RunID != ids[i] {
			t.Errorf("exported %s, want %s", m.RunID, ids[i])
		}
	}
	before = f.requests()
	if res, err := f.Runner.Once(ctx, job); err != nil || len(res.Exported) != 0 {
		t.Fatalf("idle pass after the new runs: %+v, %v", res, err)
	}
	if n := f.requests() - before; n > 3+int64(len(ids)) {
		t.Errorf("an idle pass after new runs sent %d bucket requests, want at most %d (list the intents, list and read the state, a HEAD for each run of the last hour)", n, 3+len(ids))
	}

	// The status page's and `sellersnap status`'s recent exports: the
	// newest runs' manifests, not a listing of the history.
	before = f.requests()
	recent, err := f.Runner.RecentExports(ctx, job, 3)
	if err != nil || len(recent) != 3 || recent[0].RunID != ids[1] || recent[1].RunID != ids[0] {
		t.Errorf("recent exports: %+v, %v; want the 2 new runs first", recent, err)
	}
	if n := f.requests() - before; n > 3 {
		t.Errorf("3 recent exports cost %d bucket requests, want 3", n)
	}
}

// TestLateRunsBelowTheWatermarkAreFound: a run inserted long after its
// completed_at, and one marked completed long after it, change the count
// of runs below the watermark: the next pass reconciles and exports them.
// A manifest deleted by hand is found by the daily reconciliation.
func TestLateRunsBelowTheWatermarkAreFound(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	if _, err := f.Runner.Once(ctx, job); err != nil {
		t.Fatal(err)
	}
	exportedNext := func(what, id string) {
		t.Helper()
		res, err := f.Runner.Once(ctx, job)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Exported) != 1 || res.Exported[0].RunID != id {
			t.Errorf("%s: the next pass exported %d runs, want run %s", what, len(res.Exported), id)
		}
	}
	late := insertOldRun(t, f.DBURL, f.AnyOrg(), time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC), 7)
	exportedNext("inserted late", late)

	flipped := insertOldRun(t, f.DBURL, f.AnyOrg(), time.Date(2026, 3, 3, 12, 0, 0, 0, time.UTC), 4)
	pgtest.Exec(t, f.DBURL, `UPDATE collection_runs SET status = 'running' WHERE id = $1`, flipped)
	if res, err := f.Runner.Once(ctx, job); err != nil || len(res.Exported) != 0 {
		t.Fatalf("a running run: %+v, %v", res, err)
	}
	pgtest.Exec(t, f.DBURL, `UPDATE collection_runs SET status = 'completed' WHERE id = $1`, flipped)
	exportedNext("marked completed late", flipped)

	// A manifest deleted by hand: the count is unchanged, the daily
	// reconciliation finds it.
	key, err := job.RunManifestKey(f.lastRun())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(f.Dir, key)); err != nil {
		t.Fatal(err)
	}
	now := f.Runner.Now()
	f.Runner.Now = func() time.Time { return now.Add(25 * time.Hour) }
	exportedNext("manifest deleted", f.lastRun().ID)
}

// TestLostOrCorruptStateIsRebuilt: without the state, or with a version
// that is not a state, a pass rebuilds it from the manifests and exports
// nothing twice.
func TestLostOrCorruptStateIsRebuilt(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	if _, err := f.Runner.Once(ctx, job); err != nil {
		t.Fatal(err)
	}
	keys := f.stateKeys()
	if len(keys) != 1 {
		t.Fatalf("state versions: %v", keys)
	}
	dir := filepath.Dir(filepath.Join(f.Dir, keys[0]))

	// Lost.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if res, err := f.Runner.Once(ctx, job); err != nil || len(res.Exported) != 0 {
		t.Fatalf("pass without a state: %+v, %v; want nothing exported again", res, err)
	}
	if keys := f.stateKeys(); len(keys) != 1 {
		t.Errorf("state versions after a rebuild: %v", keys)
	}
	// Corrupt, as the newest version, and another job's.
	for i, bad := range []string{`{"state_version": 1, "job": "new-sellers", "watermark": `, `{"state_version": 1, "job": "someone-else", "watermark": "2030-01-01T00:00:00Z"}`} {
		key := filepath.Join(dir, "0000000000000000009"+string(rune('0'+i))+".json")
		if err := os.WriteFile(key, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		id := pipelinetest.InsertRun(t, f.DBURL, f.AnyOrg(), 3, false)
		res, err := f.Runner.Once(ctx, job)
		if err != nil || len(res.Exported) != 1 || res.Exported[0].RunID != id {
			t.Fatalf("pass over a bad state %q: %+v, %v; want the new run only", bad, res, err)
		}
	}
	if keys := f.stateKeys(); len(keys) != 2 || !strings.HasSuffix(keys[len(keys)-1], "00000000000000000092.json") {
		t.Errorf("versions after two rebuilds: %v, want the last two (…91 and …92)", keys)
	}
}

// TestLatestIsRepairedAfterAKillBeforeIt: a process killed after a run's
// manifest and before latest.json (and its state) leaves the pointer at
// the org's previous export; the next pass, which finds the manifest, moves
// it, whether it finds it incrementally or by rebuilding the state. An
// idle pass after that reads no latest.json.
func TestLatestIsRepairedAfterAKillBeforeIt(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	if _, err := f.Runner.Once(ctx, job); err != nil {
		t.Fatal(err)
	}
	org := f.AnyOrg()
	for _, lostState := range []bool{false, true} {
		id := pipelinetest.InsertRun(t, f.DBURL, org, 3, false)
		run, err := f.Src.RunByID(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		mkey, err := job.RunManifestKey(run)
		if err != nil {
			t.Fatal(err)
		}
		latestKey := job.Layout.Latest(mkey, org)
		before, err := os.ReadFile(filepath.Join(f.Dir, latestKey))
		if err != nil {
			t.Fatal(err)
		}
		// Exported without the state (as the daemon's LISTEN path does),
		// then latest.json put back: a kill between the two.
		if res, err := f.Runner.ExportPending(ctx, job, id); err != nil || len(res.Exported) != 1 {
			t.Fatalf("export %s: %+v, %v", id, res, err)
		}
		if err := os.WriteFile(filepath.Join(f.Dir, latestKey), before, 0o644); err != nil {
			t.Fatal(err)
		}
		if lostState {
			if err := os.RemoveAll(filepath.Join(f.Dir, filepath.Dir(f.stateKeys()[0]))); err != nil {
				t.Fatal(err)
			}
		}
		if res, err := f.Runner.Once(ctx, job); err != nil || len(res.Exported) != 0 {
			t.Fatalf("pass after the kill: %+v, %v; want nothing exported", res, err)
		}
		var l pipeline.Latest
		if err := json.Unmarshal(f.AllFiles()[latestKey], &l); err != nil {
			t.Fatal(err)
		}
		if l.RunID != id {
			t.Errorf("lost state %v: %s names run %s, want %s", lostState, latestKey, l.RunID, id)
		}
	}
	before := f.requests()
	if _, err := f.Runner.Once(ctx, job); err != nil {
		t.Fatal(err)
	}
	if n := f.requests() - before; n > 3+2 {
		t.Errorf("an idle pass after the repair sent %d bucket requests, want at most 5 (list the intents, list and read the state, a HEAD for each run of the last hour)", n)
	}
}

// TestReplicasRacingOnTheStateLoseNothing: replicas exporting side by side
// write state versions over each other's shoulders; whichever wins, every
// run ends up exported once and a later pass finds nothing pending.
func TestReplicasRacingOnTheStateLoseNothing(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	replicas := []*pipeline.Runner{f.replica(), f.replica(), f.replica()}
	org := f.AnyOrg()
	exported := map[string]int{}
	var mu sync.Mutex
	for round := 0; round < 4; round++ {
		for i := 0; i < 3; i++ {
			pipelinetest.InsertRun(t, f.DBURL, org, 20, false)
		}
		var wg sync.WaitGroup
		for _, r := range replicas {
			wg.Go(func() {
				res, err := r.Once(ctx, job)
				if err != nil {
					t.Errorf("round %d: %v", round, err)
				}
				mu.Lock()
				for _, m := range res.Exported {
					exported[m.RunID]++
				}
				mu.Unlock()
			})
		}
		wg.Wait()
	}
	runs, err := f.Src.CompletedRuns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, run := range runs {
		if exported[run.ID] != 1 {
			t.Errorf("run %s exported %d times", run.ID, exported[run.ID])
		}
	}
	// A fresh replica, reading whichever versions won, finds nothing
	// pending, without a reconciliation.
	fresh := f.replica()
	plan, err := fresh.Plan(ctx, job)
	if err != nil || len(plan) != 0 {
		t.Errorf("after the race: %d units pending (%v), want none", len(plan), err)
	}
}

// TestChangedPathRebuildsTheState: after the job's path (or the time zone
// of its {run_date}) changes, the runs have no manifest at the new keys; the state of the old path must not
// count them as exported.
func TestChangedPathRebuildsTheState(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	if first, err := f.Runner.Once(ctx, f.Job("new-sellers")); err != nil || len(first.Exported) == 0 {
		t.Fatalf("first pass: %+v, %v", first, err)
	}
	for _, change := range []string{
		"    path: sellers/new/org={org_id}/date={run_date}/r={run_id}/sellers_{run_date}_run-{run_id8}.{ext}",
		"    path: sellers/new/org={org_id}/date={run_date}/r={run_id}/sellers_{run_date}_run-{run_id8}.{ext}\n    timezone: Pacific/Kiritimati",
	} {
		f.Load(change)
		job := f.Job("new-sellers")
		if _, err := f.Runner.Once(ctx, job); err != nil {
			t.Fatal(err)
		}
		runs, err := f.Src.CompletedRuns(ctx)
		if err != nil {
			t.Fatal(err)
		}
		files := f.Files()
		for _, run := range runs {
			if key, _ := job.RunManifestKey(run); files[key] == nil {
				t.Errorf("after %q: run %s has no manifest at %s", change, run.ID, key)
			}
		}
	}
}

// lateRun inserts a completed run whose completed_at is 3 hours before the
// database's clock (below the export watermark), with n sellers; table is
// where the row goes (the runs table or one inheriting from it).
func lateRun(t *testing.T, dbURL, table, org string, n int) string {
	t.Helper()
	id := insertOldRun(t, dbURL, org, time.Now().Add(-3*time.Hour), n)
	if table != "collection_runs" {
		pgtest.Exec(t, dbURL, `WITH r AS (DELETE FROM ONLY collection_runs WHERE id = $1 RETURNING *) INSERT INTO `+table+` SELECT * FROM r`, id)
	}
	return id
}

// lateRunUncounted is lateRun (one seller) by a session with track_counts
// off, as a collector's role may have it: PostgreSQL's statistics never
// see the run.
func lateRunUncounted(t *testing.T, dbURL, org string) string {
	t.Helper()
	ctx := context.Background()
	conn := pgtest.Connect(t, dbURL)
	if _, err := conn.Exec(ctx, `SET track_counts = off`); err != nil {
		t.Fatal(err)
	}
	// The run and its seller in one statement: committed together.
	var id string
	err := conn.QueryRow(ctx, `WITH r AS (INSERT INTO collection_runs VALUES (gen_random_uuid(), $1, 'completed', now() - interval '3 hours', now() - interval '3 hours') RETURNING id),
		s AS (INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
			SELECT gen_random_uuid(), $1, 'Late', 'late', 'ebay', 1, false, r.id, now() FROM r)
		SELECT id::text FROM r`, org).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// corrections records the export states a pass corrected.
type corrections struct {
	*stopAfter
	mu      sync.Mutex
	reasons []string
}

func (c *corrections) StateCorrected(_, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reasons = append(c.reasons, reason)
}

// TestEveryPassFindsEveryRunWithoutAManifest: a late run (completed 3 h
// ago, below the watermark) is found by the very next pass and by plan,
// whatever PostgreSQL's statistics say: a deletion paired with its
// insertion (the count stays), the table's counters reset, the
// collector's session not counting, the run in a table inheriting from
// the runs table (whose counters the parent never sees).
func TestEveryPassFindsEveryRunWithoutAManifest(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	if _, err := f.Runner.Once(ctx, job); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, f.DBURL, `CREATE TABLE collection_runs_legacy () INHERITS (collection_runs)`)
	org := f.AnyOrg()
	reset := func() {
		pgtest.Exec(t, f.DBURL, `SELECT pg_stat_reset_single_table_counters('collection_runs'::regclass)`)
	}
	insert := func(table string) func() string {
		return func() string { return lateRun(t, f.DBURL, table, org, 3) }
	}
	for _, tc := range []struct {
		name   string
		before func()        // before the pass that writes the state
		insert func() string // the late run
		after  func()
	}{
		{"count-neutral: an old run deleted, a late one inserted", func() {}, insert("collection_runs"), func() {
			pgtest.Exec(t, f.DBURL, `DELETE FROM collection_runs WHERE id = (SELECT id FROM collection_runs WHERE status = 'completed' ORDER BY completed_at LIMIT 1)`)
		}},
		// The state records counters at 0; the insertion moves them, a
		// second reset (or a crash restart) puts them back at 0.
		{"the table's statistics reset, counters back at the recorded value", reset, insert("collection_runs"), reset},
		{"the collector's session with track_counts off", func() {}, func() string { return lateRunUncounted(t, f.DBURL, org) }, func() {}},
		{"a table inheriting from the runs table", func() {}, insert("collection_runs_legacy"), func() {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.before()
			// A pass first, so that the state is as fresh as it gets.
			if _, err := f.Runner.Once(ctx, job); err != nil {
				t.Fatal(err)
			}
			id := tc.insert()
			tc.after()
			plan, err := f.Runner.Plan(ctx, job)
			if err != nil {
				t.Fatal(err)
			}
			if len(plan) != 1 || plan[0].RunID != id {
				t.Errorf("plan: %+v; want run %s pending", plan, id)
			}
			res, err := f.Runner.Once(ctx, job)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Exported) != 1 || res.Exported[0].RunID != id {
				t.Fatalf("the next pass exported %d runs, want run %s", len(res.Exported), id)
			}
			if plan, err := f.Runner.Plan(ctx, job); err != nil || len(plan) != 0 {
				t.Errorf("plan after: %+v, %v; want nothing pending", plan, err)
			}
		})
	}
}

// TestAStateThatContradictsTheDatabaseOrTheBucketIsCorrected: a version
// whose watermark is years ahead of the database's clock, or whose
// exported list names a run without its manifest, is corrected on the
// next pass (a warning and a count), never believed.
func TestAStateThatContradictsTheDatabaseOrTheBucketIsCorrected(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	obs := &corrections{stopAfter: &stopAfter{n: -1}}
	f.Runner.Observer = obs
	job := f.Job("new-sellers")
	if _, err := f.Runner.Once(ctx, job); err != nil {
		t.Fatal(err)
	}
	newest := func() (string, map[string]any) {
		keys := f.stateKeys()
		key := keys[len(keys)-1]
		var st map[string]any
		if err := json.Unmarshal(f.AllFiles()[key], &st); err != nil {
			t.Fatal(err)
		}
		return key, st
	}
	plant := func(st map[string]any) {
		key, _ := newest()
		data, _ := json.Marshal(st)
		next := filepath.Join(f.Dir, filepath.Dir(key), fmt.Sprintf("%020d.json", len(f.stateKeys())+100))
		if err := os.WriteFile(next, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// A watermark in 2030 (a forward clock jump wrote it).
	_, st := newest()
	st["watermark"] = "2030-01-01T00:00:00Z"
	plant(st)
	id := lateRun(t, f.DBURL, "collection_runs", f.AnyOrg(), 2)
	res, err := f.Runner.Once(ctx, job)
	if err != nil || len(res.Exported) != 1 || res.Exported[0].RunID != id {
		t.Fatalf("pass after a future watermark: %+v, %v; want run %s exported", res, err, id)
	}
	if _, st := newest(); st["watermark"].(string) >= "2030" {
		t.Errorf("the watermark stayed in the future: %v", st["watermark"])
	}
	if !slices.Equal(obs.reasons, []string{"clock"}) {
		t.Errorf("corrections counted: %v, want [clock]", obs.reasons)
	}

	// A run listed as exported whose manifest is gone.
	recent := pipelinetest.InsertRun(t, f.DBURL, f.AnyOrg(), 2, false)
	if res, err := f.Runner.Once(ctx, job); err != nil || len(res.Exported) != 1 {
		t.Fatalf("export %s: %+v, %v", recent, res, err)
	}
	if _, st := newest(); !slices.Contains(st["exported"].([]any), any(recent)) {
		t.Fatalf("the state does not list %s as exported: %v", recent, st["exported"])
	}
	run, err := f.Src.RunByID(ctx, recent)
	if err != nil {
		t.Fatal(err)
	}
	mkey, err := job.RunManifestKey(run)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(f.Dir, mkey)); err != nil {
		t.Fatal(err)
	}
	res, err = f.Runner.Once(ctx, job)
	if err != nil || len(res.Exported) != 1 || res.Exported[0].RunID != recent {
		t.Fatalf("pass after the manifest went: %+v, %v; want run %s exported", res, err, recent)
	}
	if !slices.Equal(obs.reasons, []string{"clock", "missing_manifest"}) {
		t.Errorf("corrections counted: %v, want [clock missing_manifest]", obs.reasons)
	}
}

// readLatest returns what the latest.json of run's org says.
func (f *fixture) readLatest(job *pipeline.Job, runID string) (string, pipeline.Latest) {
	f.T.Helper()
	run, err := f.Src.RunByID(context.Background(), runID)
	if err != nil {
		f.T.Fatal(err)
	}
	mkey, err := job.RunManifestKey(run)
	if err != nil {
		f.T.Fatal(err)
	}
	key := job.Layout.Latest(mkey, run.OrgID)
	var l pipeline.Latest
	if err := json.Unmarshal(f.AllFiles()[key], &l); err != nil {
		f.T.Fatalf("%s: %v", key, err)
	}
	return key, l
}

// TestLatestNeverFollowsTheFutureOrAPlantedManifest: a run completed three
// years ahead of the database's clock is exported (the data says so) but
// latest.json stays on the newest real run, and a pointer an older version
// left on it is moved off by the next export. repair-latest rejects a
// planted manifest (a run the database does not have, keys outside its
// folder, files that do not exist) and says why.
func TestLatestNeverFollowsTheFutureOrAPlantedManifest(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	org := f.AnyOrg()
	real := pipelinetest.InsertRun(t, f.DBURL, org, 2, false)
	if _, err := f.Runner.Once(ctx, job); err != nil {
		t.Fatal(err)
	}
	ahead := pipelinetest.InsertRun(t, f.DBURL, org, 2, false)
	pgtest.Exec(t, f.DBURL, `UPDATE collection_runs SET completed_at = now() + interval '3 years' WHERE id = $1`, ahead)
	res, err := f.Runner.Once(ctx, job)
	if err != nil || len(res.Exported) != 1 || res.Exported[0].RunID != ahead {
		t.Fatalf("export of the run ahead: %+v, %v", res, err)
	}
	key, l := f.readLatest(job, real)
	if l.RunID != real {
		t.Fatalf("%s names run %s (%s), want %s: it moved to the future", key, l.RunID, l.Date, real)
	}

	// A pointer left on the future export by an older version moves off
	// with the next export.
	aheadRun, _ := f.Src.RunByID(ctx, ahead)
	aheadKey, _ := job.RunManifestKey(aheadRun)
	var aheadM pipeline.Manifest
	if err := json.Unmarshal(f.AllFiles()[aheadKey], &aheadM); err != nil {
		t.Fatal(err)
	}
	pin, _ := json.Marshal(pipeline.Latest{LatestVersion: 1, Job: job.Name, Mode: "per_run", OrgID: org, RunID: ahead, Date: aheadM.Date,
		Manifest: aheadKey, RunCompletedAt: aheadM.Snapshot.RunCompletedAt})
	if err := os.WriteFile(filepath.Join(f.Dir, key), pin, 0o644); err != nil {
		t.Fatal(err)
	}
	next := pipelinetest.InsertRun(t, f.DBURL, org, 2, false)
	if res, err := f.Runner.Once(ctx, job); err != nil || len(res.Exported) != 1 {
		t.Fatalf("export of the next run: %+v, %v", res, err)
	}
	if _, l := f.readLatest(job, next); l.RunID != next {
		t.Errorf("%s names run %s after the next export, want %s", key, l.RunID, next)
	}

	// A planted manifest, for a run the database does not have.
	nextRun, _ := f.Src.RunByID(ctx, next)
	nextKey, _ := job.RunManifestKey(nextRun)
	plantedKey := strings.Replace(nextKey, next, "6f1c0000-0000-4000-8000-000000000000", 1)
	if plantedKey == nextKey {
		t.Fatalf("no run id in %s", nextKey)
	}
	when := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	planted := pipeline.Manifest{ManifestVersion: 1, Job: job.Name, Mode: "per_run", RunID: "6f1c0000-0000-4000-8000-000000000000", OrgID: org,
		Date: "2099-01-01", Rows: 999999, Snapshot: pipeline.ManifestSnapshot{RunCompletedAt: &when, ReadAt: when},
		Files: []pipeline.ManifestFile{{Format: "csv", Key: "../../../../etc/passwd", Rows: 999999, Bytes: 10, SHA256: strings.Repeat("0", 64)}}}
	data, _ := json.Marshal(planted)
	p := filepath.Join(f.Dir, filepath.FromSlash(plantedKey))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	// The same, for a real run, with files that are not there.
	var nextM pipeline.Manifest
	if err := json.Unmarshal(f.AllFiles()[nextKey], &nextM); err != nil {
		t.Fatal(err)
	}
	nextM.Files[0].Bytes++
	data, _ = json.Marshal(nextM)
	if err := os.WriteFile(filepath.Join(f.Dir, nextKey), data, 0o644); err != nil {
		t.Fatal(err)
	}
	repairs, rejections, err := f.Runner.RepairLatest(ctx, job, false)
	if err != nil {
		t.Fatal(err)
	}
	why := map[string]string{}
	for _, r := range rejections {
		why[r.Manifest] = r.Why
	}
	if !strings.Contains(why[plantedKey], "not a completed run in the database") {
		t.Errorf("planted manifest: rejected %q, want 'not a completed run in the database' (rejections %v)", why[plantedKey], rejections)
	}
	if !strings.Contains(why[nextKey], "bytes, the manifest says") {
		t.Errorf("manifest with a wrong size: rejected %q (rejections %v)", why[nextKey], rejections)
	}
	if _, ok := why[aheadKey]; !ok {
		t.Errorf("the run ahead of the clock was not rejected: %v", rejections)
	}
	if _, l := f.readLatest(job, next); l.RunID != real {
		t.Errorf("after repair-latest the pointer names %s, want the newest true export %s (repairs %+v)", l.RunID, real, repairs)
	}
}
