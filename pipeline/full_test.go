package pipeline_test

import (
	"context"
	"sync"
	"testing"

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
