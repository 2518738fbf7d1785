package pipeline_test

import (
	"context"
	"testing"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/internal/pipelinetest"
)

// BenchmarkAudit1000Units: status -verify's audit of a per_run job with a
// table and 1,000 exported runs (5 sellers each, three formats): full
// (every file read for its sha256) and quick (sizes from the listing).
// Reports bucket requests per audit. Setup (1,000 exports) takes about a
// minute: go test -run '^$' -bench BenchmarkAudit1000Units ./pipeline
func BenchmarkAudit1000Units(b *testing.B) {
	ctx := context.Background()
	dbURL := pgtest.NewDatabase(b)
	dir := b.TempDir()
	f := pipelinetest.NewOn(b, dbURL, "file://"+dir, dir, icebergYAML(dbURL))
	conn := pgtest.Connect(b, dbURL)
	if _, err := conn.Exec(ctx, `WITH r AS (
			INSERT INTO collection_runs SELECT gen_random_uuid(), (SELECT org_id FROM collection_runs WHERE org_id IS NOT NULL LIMIT 1), 'completed',
				now() - g * interval '1 hour' - interval '1 minute', now() - g * interval '1 hour' FROM generate_series(1, 990) g RETURNING id, org_id)
		INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
		SELECT gen_random_uuid(), r.org_id, 'Audit ' || g, 'audit ' || g, 'ebay', 1, false, r.id, now() FROM r, generate_series(1, 5) g`); err != nil {
		b.Fatal(err)
	}
	job := f.Job("new-sellers")
	if res, err := f.Runner.Once(ctx, job); err != nil || len(res.Exported) < 1000 {
		b.Fatalf("setup: %v, %d exported", err, len(res.Exported))
	}
	for _, quick := range []bool{false, true} {
		name := "full"
		if quick {
			name = "quick"
		}
		b.Run(name, func(b *testing.B) {
			var reqs int64
			for b.Loop() {
				a, err := f.Runner.Audit(ctx, job, quick)
				if err != nil || len(a.Diffs) > 0 || a.Manifests < 1000 {
					b.Fatalf("%v, %+v", err, a)
				}
				reqs = a.Requests
			}
			b.ReportMetric(float64(reqs), "requests/op")
		})
	}
}
