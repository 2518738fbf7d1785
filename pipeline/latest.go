package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/sellersnap/sellersnap/sinks"
)

// SuccessName is the empty marker written beside a manifest, for tools
// that follow the Hadoop/Spark convention. It is written after the data
// files and before the manifest: it says the files are whole; the manifest
// says the export is published.
const SuccessName = "_SUCCESS"

// LatestName is the pointer to the newest complete export of a job and
// org.
const LatestName = "latest.json"

// Latest is the content of latest.json.
type Latest struct {
	LatestVersion int    `json:"latest_version"`
	Job           string `json:"job"`
	Mode          string `json:"mode"`
	OrgID         string `json:"org_id"`
	RunID         string `json:"run_id,omitempty"`
	Date          string `json:"date"`
	// Manifest is the key of the newest complete export's manifest.
	Manifest       string     `json:"manifest"`
	Rows           int64      `json:"rows"`
	RunCompletedAt *time.Time `json:"run_completed_at,omitempty"`
	ExportedAt     time.Time  `json:"exported_at"`
}

// newer reports whether l describes a newer export than old: a run that
// completed later (per_run), a later date (full); ties by run id, then by
// export time.
func (l *Latest) newer(old *Latest) bool {
	if l.RunCompletedAt != nil && old.RunCompletedAt != nil && !l.RunCompletedAt.Equal(*old.RunCompletedAt) {
		return l.RunCompletedAt.After(*old.RunCompletedAt)
	}
	if l.Date != old.Date {
		return l.Date > old.Date
	}
	if l.RunID != old.RunID {
		return l.RunID > old.RunID
	}
	return !l.ExportedAt.Before(old.ExportedAt)
}

// updateLatest points the unit's latest.json at m unless it already names
// a newer export. It runs after the manifest exists, so the pointer never
// names an incomplete export. Two processes finishing exports of the same
// org at once may leave the older of the two; the next export corrects it.
func (r *Runner) updateLatest(ctx context.Context, bucket *sinks.Bucket, u unit, mkey string, m *Manifest) error {
	key := u.latestKey(mkey)
	l := &Latest{LatestVersion: 1, Job: m.Job, Mode: m.Mode, OrgID: m.OrgID, RunID: m.RunID, Date: m.Date,
		Manifest: mkey, Rows: m.Rows, RunCompletedAt: m.Snapshot.RunCompletedAt, ExportedAt: m.ExportedAt}
	data, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	// Put clears what a killed writer left, but this may not write.
	_ = bucket.RemoveAbandonedTemp(ctx, key)
	old, err := bucket.ReadAll(ctx, key)
	switch {
	case sinks.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("read %s: %w", key, err)
	case bytes.Equal(bytes.TrimSpace(old), data):
		return nil // says so already
	default:
		var prev Latest
		if json.Unmarshal(old, &prev) == nil && prev.Manifest != mkey && !l.newer(&prev) {
			return nil
		}
	}
	if err := bucket.Put(ctx, key, append(data, '\n'), "application/json", nil); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

// LatestRepair is one latest.json RepairLatest rewrote (or would have).
type LatestRepair struct {
	Key  string // of latest.json
	Was  string // the manifest it named ("" when missing or unreadable)
	Now  string // the manifest it names
	Date string // of that manifest
}

// RepairLatest recomputes every latest.json of job from its manifests and
// rewrites those that name anything else: a manifest dated after today (a
// rerun of a future date by an older version), one that is gone, or an
// older export. It reads every manifest of the job once (one listing, then
// the reads, 8 at a time). With dryRun it only reports.
func (r *Runner) RepairLatest(ctx context.Context, job *Job, dryRun bool) ([]LatestRepair, error) {
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return nil, err
	}
	objs, err := bucket.List(ctx, job.Layout.Prefix(), "/"+ManifestName)
	if err != nil {
		return nil, err
	}
	ms := make([]*Manifest, len(objs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(existsConcurrency)
	for i, o := range objs {
		g.Go(func() error {
			m, err := readManifest(gctx, bucket, o.Key)
			if sinks.IsNotFound(err) {
				return nil
			}
			if err != nil {
				return err
			}
			if m.Job == job.Name {
				ms[i] = m
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	today := r.now().In(job.Location).Format(time.DateOnly)
	newest := map[string]*Latest{} // latest.json key → what it should say
	var keys []string
	for i, m := range ms {
		if m == nil || m.Date > today {
			continue
		}
		mkey := objs[i].Key
		l := &Latest{LatestVersion: 1, Job: m.Job, Mode: m.Mode, OrgID: m.OrgID, RunID: m.RunID, Date: m.Date,
			Manifest: mkey, Rows: m.Rows, RunCompletedAt: m.Snapshot.RunCompletedAt, ExportedAt: m.ExportedAt}
		key := job.Layout.Latest(mkey, m.OrgID)
		if old, ok := newest[key]; !ok || l.newer(old) {
			if !ok {
				keys = append(keys, key)
			}
			newest[key] = l
		}
	}
	slices.Sort(keys)
	var repairs []LatestRepair
	for _, key := range keys {
		l := newest[key]
		data, err := json.MarshalIndent(l, "", "  ")
		if err != nil {
			return repairs, err
		}
		rep := LatestRepair{Key: key, Now: l.Manifest, Date: l.Date}
		old, err := bucket.ReadAll(ctx, key)
		switch {
		case sinks.IsNotFound(err):
		case err != nil:
			return repairs, fmt.Errorf("read %s: %w", key, err)
		default:
			var prev Latest
			if json.Unmarshal(old, &prev) == nil {
				rep.Was = prev.Manifest
			}
			if bytes.Equal(bytes.TrimSpace(old), data) {
				continue
			}
		}
		if !dryRun {
			if err := bucket.Put(ctx, key, append(data, '\n'), "application/json", nil); err != nil {
				return repairs, fmt.Errorf("write %s: %w", key, err)
			}
		}
		repairs = append(repairs, rep)
	}
	return repairs, nil
}
