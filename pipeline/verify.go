package pipeline

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// RowMismatch is a published export of a run whose row count differs from
// what the database holds for it now: sellers added to (or removed from)
// the run after it was exported, a breach of the source contract (a run's
// sellers are committed before it is marked completed; README "Source
// contract"). sellersnap never rewrites published files on its own: a
// rerun of the run repairs it.
type RowMismatch struct {
	Job, RunID, OrgID string
	Manifest          string
	Published, Now    int64
}

func (m RowMismatch) String() string {
	return fmt.Sprintf("job %s, run %s (org %s): the manifest says %d rows, the database has %d now", m.Job, m.RunID, m.OrgID, m.Published, m.Now)
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
