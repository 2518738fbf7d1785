package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

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
