package pipeline_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/sources"
)

// TestFullSnapshotSplitsOrgsAcrossReplicas: three replicas exporting one
// date's full snapshot side by side export every org exactly once, and
// each exports some (one lock per org, not one per date).
func TestFullSnapshotSplitsOrgsAcrossReplicas(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	// 60 more orgs of 200 sellers each.
	pgtest.Exec(t, f.DBURL, `INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, created_at)
		SELECT gen_random_uuid(), o.id, 'S ' || g, 's ' || g, 'ebay', 1, false, now() - g * interval '1 s'
		FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, 60)) o, generate_series(1, 200) g`)
	job := f.Job("full-nightly")
	var mu sync.Mutex
	byOrg := map[string]int{}
	perReplica := make([]int, 3)
	var wg sync.WaitGroup
	for i := range perReplica {
		r := f.replica()
		wg.Go(func() {
			res, err := r.Once(ctx, job)
			if err != nil {
				t.Errorf("replica %d: %v", i, err)
			}
			mu.Lock()
			defer mu.Unlock()
			perReplica[i] = len(res.Exported)
			for _, m := range res.Exported {
				byOrg[m.OrgID]++
			}
		})
	}
	wg.Wait()
	orgs, err := f.Src.CountByOrg(ctx, sources.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(orgs) < 63 {
		t.Fatalf("%d orgs in the database, want 63", len(orgs))
	}
	for org := range orgs {
		if byOrg[org] != 1 {
			t.Errorf("org %q exported %d times", org, byOrg[org])
		}
	}
	for i, n := range perReplica {
		if n == 0 {
			t.Errorf("replica %d exported no org (per replica: %v)", i, perReplica)
		}
	}
	// The date is done: another pass exports nothing.
	if res, err := f.Runner.Once(ctx, job); err != nil || len(res.Exported) != 0 {
		t.Errorf("second pass: %+v, %v", res, err)
	}
}

// TestOnceTakesTheLatestSlot: once for a full job ("0 2 * * *") writes the
// snapshot of its latest slot: at 01:00 yesterday's (if missing, with
// data_as_of saying when the rows were read), at 12:00 today's; it never
// writes a date whose slot has not come.
func TestOnceTakesTheLatestSlot(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job := f.Job("full-nightly")
	f.Runner.Now = func() time.Time { return time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC) }
	res, err := f.Runner.Once(ctx, job)
	if err != nil || len(res.Exported) == 0 {
		t.Fatalf("once at 01:00: %+v, %v", res, err)
	}
	for _, m := range res.Exported {
		if m.Date != "2026-11-21" || m.DataAsOf == "" {
			t.Errorf("at 01:00: date %s, data_as_of %q; want 2026-11-21 (yesterday's 02:00 slot), with data_as_of", m.Date, m.DataAsOf)
		}
	}
	if res, err := f.Runner.Once(ctx, job); err != nil || len(res.Exported) != 0 {
		t.Errorf("a second once at 01:00: %d exported, %v; want none", len(res.Exported), err)
	}
	f.Runner.Now = func() time.Time { return time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC) }
	res, err = f.Runner.Once(ctx, job)
	if err != nil || len(res.Exported) == 0 || res.Exported[0].Date != "2026-11-22" {
		t.Errorf("once at 12:00: %+v, %v; want today's snapshot", res, err)
	}
}
