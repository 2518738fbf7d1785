package pipeline_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sources"
)

// manifestsByRun reads every manifest of the per_run job new-sellers.
func (f *fixture) manifestsByRun() map[string]pipeline.Manifest {
	out := map[string]pipeline.Manifest{}
	for k, data := range f.Files() {
		if !strings.HasSuffix(k, "/"+pipeline.ManifestName) {
			continue
		}
		var m pipeline.Manifest
		if err := json.Unmarshal(data, &m); err != nil {
			f.T.Fatal(err)
		}
		if m.RunID != "" {
			out[m.RunID] = m
		}
	}
	return out
}

// TestRangeRerunRewritesExactlyTheSelection: a rerun of the runs completed
// on some days, limited to one org, rewrites those runs (exported_at
// moves, rerun_id set) and leaves every other manifest as it was; its
// dry run lists the same units.
func TestRangeRerunRewritesExactlyTheSelection(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	if _, err := f.Runner.Once(ctx, job); err != nil {
		t.Fatal(err)
	}
	before := f.manifestsByRun()
	runs, err := f.Src.CompletedRuns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	from := runs[2].CompletedAt.In(job.Location).Format(time.DateOnly)
	to := runs[len(runs)-3].CompletedAt.In(job.Location).Format(time.DateOnly)
	org := runs[2].OrgID
	want := map[string]bool{}
	for _, r := range runs {
		d := r.CompletedAt.In(job.Location).Format(time.DateOnly)
		if d >= from && d <= to && r.OrgID == org {
			want[r.ID] = true
		}
	}
	if len(want) < 2 || len(want) == len(runs) {
		t.Fatalf("selection of %d of %d runs: pick another range", len(want), len(runs))
	}
	sel := pipeline.Selection{From: from, To: to, Orgs: []string{strings.ToUpper(org)}}
	plan, err := f.Runner.PlanRerun(ctx, job, sel)
	if err != nil || len(plan) != len(want) {
		t.Fatalf("dry run: %d units, %v; want %d", len(plan), err, len(want))
	}
	for _, p := range plan {
		if !want[p.RunID] {
			t.Errorf("dry run lists run %s, not selected", p.RunID)
		}
	}
	// Time moves on, so a rewritten manifest shows it.
	now := f.Runner.Now()
	f.Runner.Now = func() time.Time { return now.Add(time.Hour) }
	res, err := f.Runner.RerunSelection(ctx, job, sel, pipeline.RerunOptions{ID: "fix-2026-03"})
	if err != nil || len(res.Exported) != len(want) || !res.Complete() {
		t.Fatalf("rerun: %+v, %v", res, err)
	}
	after := f.manifestsByRun()
	for id, m := range after {
		changed := !m.ExportedAt.Equal(before[id].ExportedAt)
		if changed != want[id] {
			t.Errorf("run %s: rewritten %v, selected %v", id, changed, want[id])
		}
		if want[id] && (m.RerunID != "fix-2026-03" || !m.Rerun) {
			t.Errorf("run %s: rerun %v, rerun_id %q", id, m.Rerun, m.RerunID)
		}
	}
	// The same id again: every unit carries it, nothing is rewritten.
	res, err = f.Runner.RerunSelection(ctx, job, sel, pipeline.RerunOptions{ID: "fix-2026-03"})
	if err != nil || len(res.Exported) != 0 || res.Resumed != len(want) {
		t.Errorf("the same rerun again: %+v, %v; want %d resumed, none rewritten", res, err, len(want))
	}
}

// TestDeclaredRerunAppliedOnceAcrossReplicasAndRestarts: three replicas
// apply one reruns: entry at once; it is recorded applied, every selected
// unit is rewritten exactly once, and neither they nor a restarted process
// apply it again.
func TestDeclaredRerunAppliedOnceAcrossReplicasAndRestarts(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	if _, err := f.Runner.Once(ctx, job); err != nil {
		t.Fatal(err)
	}
	runs, err := f.Src.CompletedRuns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sel := pipeline.Selection{Runs: []string{runs[0].ID, runs[1].ID, runs[2].ID}}
	d := pipeline.DeclaredRerun{ID: "collector-fix-1", Reason: "collector bug #12 fixed", Selection: sel, Selectors: "sel-v1"}
	now := f.Runner.Now()
	var wg sync.WaitGroup
	for range 3 {
		r := f.replica()
		r.Now = func() time.Time { return now.Add(time.Hour) }
		j := f.Job("new-sellers")
		j.Reruns = []pipeline.DeclaredRerun{d}
		wg.Go(func() {
			if err := r.ApplyReruns(ctx, j); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	job.Reruns = []pipeline.DeclaredRerun{d}
	rec, err := f.Runner.ReadRerunRecord(ctx, job, d)
	if err != nil || rec == nil || rec.Status != pipeline.RerunApplied || rec.Units != 3 || rec.Reason != d.Reason {
		t.Fatalf("record: %+v, %v", rec, err)
	}
	if rec.Rewritten != 3 {
		t.Errorf("record says %d rewritten, want 3", rec.Rewritten)
	}
	stamp := map[string]time.Time{}
	for id, m := range f.manifestsByRun() {
		stamp[id] = m.ExportedAt
		if slices.Contains(sel.Runs, id) != (m.RerunID == d.ID) {
			t.Errorf("run %s: rerun_id %q", id, m.RerunID)
		}
	}
	// A restart: a new process with the same config applies nothing.
	r := f.replica()
	r.Now = func() time.Time { return now.Add(2 * time.Hour) }
	if err := r.ApplyReruns(ctx, job); err != nil {
		t.Fatal(err)
	}
	for id, m := range f.manifestsByRun() {
		if !m.ExportedAt.Equal(stamp[id]) {
			t.Errorf("run %s rewritten again after a restart", id)
		}
	}
	// The entry changed under the same id: refused.
	changed := d
	changed.Selectors = "sel-v2"
	var ce *pipeline.RerunChangedError
	if _, err := f.Runner.ReadRerunRecord(ctx, job, changed); !errors.As(err, &ce) {
		t.Errorf("changed entry: %v, want a RerunChangedError", err)
	}
}

// TestDeclaredRerunResumesWhereItStopped: a rerun stopped after some units
// (the context cancelled, as on SIGTERM) is recorded incomplete, saying it
// was stopped, and nobody holds it; the next attempt rewrites only the
// units the first did not.
func TestDeclaredRerunResumesWhereItStopped(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	if _, err := f.Runner.Once(ctx, job); err != nil {
		t.Fatal(err)
	}
	runs, err := f.Src.CompletedRuns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range runs {
		ids = append(ids, r.ID)
	}
	d := pipeline.DeclaredRerun{ID: "backfill", Reason: "backfill", Selection: pipeline.Selection{Runs: ids}, Selectors: "all"}
	job.Reruns = []pipeline.DeclaredRerun{d}
	now := f.Runner.Now()
	f.Runner.Now = func() time.Time { return now.Add(time.Hour) }
	stopped, stop := context.WithCancel(ctx)
	obs := &stopAfter{n: 4, stop: stop}
	f.Runner.Observer = obs
	_ = f.Runner.ApplyReruns(stopped, job)
	f.Runner.Observer = nil
	first := obs.runs
	if len(first) != 4 {
		t.Fatalf("the first attempt rewrote %d runs before the stop, want 4", len(first))
	}
	rec, err := f.Runner.ReadRerunRecord(ctx, job, d)
	if err != nil || rec == nil || rec.Status != pipeline.RerunIncomplete || !strings.Contains(rec.LastError, "stopped before it finished") {
		t.Fatalf("record after the stop: %+v, %v; want incomplete, saying it was stopped", rec, err)
	}
	if held, err := f.Runner.RerunHeld(ctx, job, d); err != nil || held {
		t.Errorf("after the stop the entry is held by someone: %v, %v", held, err)
	}
	stamp := map[string]time.Time{}
	for id, m := range f.manifestsByRun() {
		stamp[id] = m.ExportedAt
	}
	f.Runner.Now = func() time.Time { return now.Add(2 * time.Hour) }
	if err := f.Runner.ApplyReruns(ctx, job); err != nil {
		t.Fatal(err)
	}
	rec, _ = f.Runner.ReadRerunRecord(ctx, job, d)
	if rec.Status != pipeline.RerunApplied || rec.Attempts != 2 || rec.Rewritten != len(ids) {
		t.Errorf("record: %+v; want applied after 2 attempts, %d rewritten", rec, len(ids))
	}
	for id, m := range f.manifestsByRun() {
		again := !m.ExportedAt.Equal(stamp[id])
		if slices.Contains(first, id) == again {
			t.Errorf("run %s: rewritten by the first attempt %v, by the second %v", id, slices.Contains(first, id), again)
		}
		if m.RerunID != d.ID {
			t.Errorf("run %s not rewritten by the rerun", id)
		}
	}
}

// stopAfter cancels the export after n published exports, as a SIGTERM
// between two units would.
type stopAfter struct {
	n    int
	stop func()
	runs []string
}

func (o *stopAfter) ExportStarted(string) func()          { return func() {} }
func (o *stopAfter) StateCorrected(string, string)        {}
func (o *stopAfter) TableHeadAhead(string, time.Duration) {}
func (o *stopAfter) Exported(e pipeline.Export, m *pipeline.Manifest) {
	o.runs = append(o.runs, m.RunID)
	if len(o.runs) == o.n {
		o.stop()
	}
}
func (o *stopAfter) ExportFailed(pipeline.Export)       {}
func (o *stopAfter) Skipped(string)                     {}
func (o *stopAfter) Retried(string)                     {}
func (o *stopAfter) LatestFailed(string)                {}
func (o *stopAfter) Backlog(string, int, time.Duration) {}
func (o *stopAfter) RerunApplied(string, string)        {}
func (o *stopAfter) TableCommitted(string, string)      {}

var _ = sources.Run{}

// TestDeclaredRerunOfTodayStaysValidAfterMidnight: a full job's entry for
// today, stopped half-way (a SIGTERM), is resumed the next day and
// finishes: its date rules were judged when it was first applied, not
// every day after.
func TestDeclaredRerunOfTodayStaysValidAfterMidnight(t *testing.T) {
	f := newFixture(t, "")
	job := f.Job("full-nightly")
	today := f.Runner.Now().In(job.Location).Format(time.DateOnly)
	if _, err := f.Runner.Once(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	d := pipeline.DeclaredRerun{ID: "fix-today", Reason: "collector bug", Selection: pipeline.Selection{From: today, To: today}, Selectors: "v1"}
	job.Reruns = []pipeline.DeclaredRerun{d}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	f.Runner.Observer = &stopAfter{n: 1, stop: stop}
	_ = f.Runner.ApplyReruns(ctx, job)
	f.Runner.Observer = nil
	rec, err := f.Runner.ReadRerunRecord(context.Background(), job, d)
	if err != nil || rec == nil || rec.Status == pipeline.RerunApplied {
		t.Fatalf("after the stop: %+v, %v; want a record not applied yet", rec, err)
	}
	now := f.Runner.Now()
	f.Runner.Now = func() time.Time { return now.Add(24 * time.Hour) }
	if plan, err := f.Runner.PlanRerun(context.Background(), job, d.Judged(job, rec)); err != nil || len(plan) == 0 {
		t.Errorf("plan of the resumed entry the next day: %d units, %v", len(plan), err)
	}
	if err := f.Runner.ApplyReruns(context.Background(), job); err != nil {
		t.Fatalf("resumed the next day: %v", err)
	}
	if rec, err := f.Runner.ReadRerunRecord(context.Background(), job, d); err != nil || rec.Status != pipeline.RerunApplied {
		t.Errorf("record after the resume: %+v, %v; want applied", rec, err)
	}
}

// TestDeclaredRerunOfAnUnknownRunIsRefusedOnce: an entry naming a run the
// database does not have is refused once, recorded with the reason, and
// not tried again on later passes (no error each pass).
func TestDeclaredRerunOfAnUnknownRunIsRefusedOnce(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("new-sellers")
	d := pipeline.DeclaredRerun{ID: "typo", Reason: "r", Selection: pipeline.Selection{Runs: []string{"6f1c0000-0000-4000-8000-000000000000"}}, Selectors: "v1"}
	job.Reruns = []pipeline.DeclaredRerun{d}
	if err := f.Runner.ApplyReruns(ctx, job); err != nil {
		t.Fatalf("first attempt: %v; want the refusal recorded, not an error", err)
	}
	rec, err := f.Runner.ReadRerunRecord(ctx, job, d)
	if err != nil || rec == nil || rec.Status != pipeline.RerunRefused || !strings.Contains(rec.LastError, "6f1c0000") {
		t.Fatalf("record: %+v, %v; want refused naming the run", rec, err)
	}
	if err := f.Runner.ApplyReruns(ctx, job); err != nil {
		t.Fatal(err)
	}
	if again, _ := f.Runner.ReadRerunRecord(ctx, job, d); again.Attempts != 1 {
		t.Errorf("tried %d times, want once", again.Attempts)
	}
}
