package pipeline_test

import (
	"context"
	"testing"
	"time"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/internal/pipelinetest"
	"github.com/sellersnap/sellersnap/pipeline"
)

// TestAMovedRunIsHeldOnce: a run whose completed_at moves to another day
// after its export (failed, then completed again three days on) stays
// where it was exported: the next passes export nothing, the bucket holds
// one manifest of it and the table one copy; a rerun rewrites it in
// place, recording its new completed_at; the recount of its exports
// reports the database's count, whatever the exports list twice.
func TestAMovedRunIsHeldOnce(t *testing.T) {
	ctx := context.Background()
	dbURL := pgtest.NewDatabase(t)
	dir := t.TempDir()
	f := &fixture{pipelinetest.NewOn(t, dbURL, "file://"+dir, dir, icebergYAML(dbURL))}
	res, files := f.Once("new-sellers")
	var run *pipeline.Manifest
	for _, m := range res.Exported {
		if m.Rows > 0 && (run == nil || m.Rows > run.Rows) {
			run = m
		}
	}
	before := len(pipelinetest.ManifestsIn(t, files))
	conn := pgtest.Connect(t, dbURL)
	if _, err := conn.Exec(ctx, `UPDATE collection_runs SET status = 'failed' WHERE id = $1`, run.RunID); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `UPDATE collection_runs SET status = 'completed', completed_at = completed_at + interval '3 days' WHERE id = $1`, run.RunID); err != nil {
		t.Fatal(err)
	}
	job := f.Job("new-sellers")
	check := func(stage string) []*pipeline.Manifest {
		t.Helper()
		ms := pipelinetest.ManifestsIn(t, f.Files())
		n := 0
		for _, m := range ms {
			if m.RunID == run.RunID {
				n++
				if m.Date != run.Date {
					t.Errorf("%s: the run's export is under %s, it was first exported under %s", stage, m.Date, run.Date)
				}
			}
		}
		if n != 1 || len(ms) != before {
			t.Errorf("%s: %d manifests of the run (%d in all, %d before)", stage, n, len(ms), before)
		}
		pipelinetest.CheckTableHolds(t, pipelinetest.ReadTable(t, dbURL, "snap", "new_sellers", nil), ms)
		return ms
	}
	for i := range 2 {
		res, err := f.Runner.Once(ctx, job)
		if err != nil || len(res.Exported) != 0 {
			t.Fatalf("pass %d after the move: %v, exported %d", i, err, len(res.Exported))
		}
		check("after a pass")
	}
	res, err := f.Runner.RerunRun(ctx, job, run.RunID)
	if err != nil || len(res.Exported) != 1 {
		t.Fatalf("rerun: %v, %d exported", err, len(res.Exported))
	}
	if m := res.Exported[0]; m.Date != run.Date || m.Snapshot.RunCompletedAt == nil || !m.Snapshot.RunCompletedAt.After(run.Snapshot.RunCompletedAt.Add(71*time.Hour)) {
		t.Errorf("the rerun wrote date %s, completed_at %v; want %s and the new completed_at", m.Date, m.Snapshot.RunCompletedAt, run.Date)
	}
	check("after a rerun")

	e := pipeline.ExportOf(run, "")
	mm, err := f.Runner.Recount(ctx, job, []pipeline.Export{e, e})
	if err != nil || len(mm) != 0 {
		t.Errorf("a recount of the run listed twice: %v, %v; want the database's count, equal", err, mm)
	}
}
