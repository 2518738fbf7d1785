package pipeline_test

import (
	"context"
	"encoding/json"
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
		if strings.Contains(k, "/_sellersnap/") {
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
// nothing new lists the state folder and reads one version (2 requests),
// and a pass with new runs checks those runs only.
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
	if n := f.requests() - before; n > 2 {
		t.Errorf("an idle pass sent %d bucket requests, want at most 2 (list the state, read it)", n)
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
	if n := f.requests() - before; n > 2 {
		t.Errorf("an idle pass after new runs sent %d bucket requests, want at most 2", n)
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
	if n := f.requests() - before; n > 2 {
		t.Errorf("an idle pass after the repair sent %d bucket requests, want at most 2", n)
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
