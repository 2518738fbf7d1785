package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path"
	"slices"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
	"golang.org/x/sync/errgroup"
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

// latestWriter writes and checks latest.json pointers against the
// database.
type latestWriter struct {
	src    *sources.Postgres
	logger *slog.Logger
}

// updateLatest points the unit's latest.json at m unless it already names
// a newer export that is still true. It runs after the manifest exists, so
// the pointer never names an incomplete export. An export dated in the
// future (a run whose completed_at is after the database's clock when it
// was read) does not move the pointer; a pointer that names one, or a run
// the database does not have as it says, or a manifest that is gone, is
// replaced. Two processes finishing exports of the same org at once may
// leave the older of the two; the next export corrects it.
func (p latestWriter) updateLatest(ctx context.Context, bucket *sinks.Bucket, u unit, mkey string, m *Manifest) error {
	key := u.latestKey(mkey)
	// The database's clock when the rows were read, give or take a
	// collector whose clock is a little ahead of it.
	now := m.Snapshot.ReadAt.Add(clockSlack)
	if why := future(u.job, m.Date, m.Snapshot.RunCompletedAt, now); why != "" {
		p.logger.Info("latest.json stays where it is: the export is dated in the future", append(u.logAttrs(), "why", why)...)
		return nil
	}
	l := latestOf(m, mkey)
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
			// Judged by the clock as it is now: the pointer may name a run
			// that completed after this export's snapshot began.
			dbNow, err := p.src.Now(ctx)
			if err != nil {
				return err
			}
			why, err := p.untrue(ctx, bucket, u.job, &prev, dbNow.Add(clockSlack))
			if err != nil {
				return fmt.Errorf("check %s: %w", key, err)
			}
			if why == "" {
				return nil
			}
			p.logger.Warn("latest.json named an export that is not true; moving it", append(u.logAttrs(), "key", key, "was", prev.Manifest, "why", why)...)
		}
	}
	if err := bucket.Put(ctx, key, append(data, '\n'), "application/json", nil); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

// clockSlack is how far ahead of the database's clock a run's
// completed_at may be without counting as in the future: a collector that
// sets it from its own clock.
const clockSlack = time.Minute

// latestOf is the latest.json that names manifest m at mkey.
func latestOf(m *Manifest, mkey string) *Latest {
	return &Latest{LatestVersion: 1, Job: m.Job, Mode: m.Mode, OrgID: m.OrgID, RunID: m.RunID, Date: m.Date,
		Manifest: mkey, Rows: m.Rows, RunCompletedAt: m.Snapshot.RunCompletedAt, ExportedAt: m.ExportedAt}
}

// future says why an export dated date, of a run completed at completed
// (nil for a full snapshot), is after now (the database's clock), or "".
func future(job *Job, date string, completed *time.Time, now time.Time) string {
	if completed != nil && completed.After(now) {
		return fmt.Sprintf("run completed at %s, after the database's clock (%s)", completed.Format(time.RFC3339), now.Format(time.RFC3339))
	}
	if today := now.In(job.Location).Format(time.DateOnly); date > today {
		return fmt.Sprintf("date %s is after today (%s in %s)", date, today, job.Location)
	}
	return ""
}

// untrue says why the export a latest.json names cannot stay there, or "":
// it is dated in the future, its run is not in the database as the
// pointer says, or its manifest is gone.
func (p latestWriter) untrue(ctx context.Context, bucket *sinks.Bucket, job *Job, l *Latest, now time.Time) (string, error) {
	if why := future(job, l.Date, l.RunCompletedAt, now); why != "" {
		return why, nil
	}
	if l.Manifest == "" {
		return "it names no manifest", nil
	}
	if job.Mode == config.ModePerRun {
		run, err := p.src.RunByID(ctx, l.RunID)
		if errors.Is(err, sources.ErrRunNotFound) || errors.As(err, new(*sources.RunNotCompletedError)) {
			return fmt.Sprintf("run %q: %v", l.RunID, err), nil
		}
		if err != nil {
			return "", err
		}
		if l.RunCompletedAt == nil || !run.CompletedAt.Equal(*l.RunCompletedAt) || run.OrgID != l.OrgID {
			return fmt.Sprintf("run %s is not in the database as it says (org %q, completed at %s)", run.ID, run.OrgID, run.CompletedAt.Format(time.RFC3339Nano)), nil
		}
	}
	ok, err := bucket.Exists(ctx, l.Manifest)
	if err != nil || ok {
		return "", err
	}
	return fmt.Sprintf("its manifest %s is gone", l.Manifest), nil
}

// rejected says why manifest m, found at mkey, may not be named by a
// latest.json, or "": only a manifest of the job whose run (or org and
// date) is in the database as it says, at the key that unit's export
// writes, whose files lie in its own folder and exist with the listed
// sizes. runs holds the completed runs by id (per_run jobs), orgs the orgs
// with sellers (full jobs); now is the database's clock.
func (p latestWriter) rejected(ctx context.Context, bucket *sinks.Bucket, job *Job, mkey string, m *Manifest, runs map[string]sources.Run, orgs map[string]bool, now time.Time) (string, error) {
	if m.Job != job.Name || m.Mode != string(job.Mode) {
		return fmt.Sprintf("it is job %q's (%s), not this %s job's", m.Job, m.Mode, job.Mode), nil
	}
	var u unit
	if job.Mode == config.ModePerRun {
		run, ok := runs[m.RunID]
		if !ok {
			return fmt.Sprintf("run %q is not a completed run in the database", m.RunID), nil
		}
		if run.OrgID != m.OrgID || m.Snapshot.RunCompletedAt == nil || !m.Snapshot.RunCompletedAt.Equal(run.CompletedAt) {
			return fmt.Sprintf("run %s is in org %q, completed at %s in the database, not as the manifest says", run.ID, run.OrgID, run.CompletedAt.Format(time.RFC3339Nano)), nil
		}
		u = newRunUnit(job, run)
	} else {
		if !orgs[m.OrgID] {
			return fmt.Sprintf("org %q has no sellers in the database", m.OrgID), nil
		}
		if _, err := time.Parse(time.DateOnly, m.Date); err != nil {
			return fmt.Sprintf("date %q is not a date", m.Date), nil
		}
		u = newOrgUnit(job, m.OrgID, m.Date)
	}
	if why := future(job, m.Date, m.Snapshot.RunCompletedAt, now); why != "" {
		return why, nil
	}
	want, err := u.manifestKey()
	if err != nil {
		return err.Error(), nil
	}
	if want != mkey {
		return fmt.Sprintf("its unit's manifest is %s", want), nil
	}
	if len(m.Files) == 0 {
		return "it lists no files", nil
	}
	folder := path.Dir(mkey)
	for _, f := range m.Files {
		if path.Clean(f.Key) != f.Key || path.Dir(f.Key) != folder || path.Base(f.Key) == ManifestName {
			return fmt.Sprintf("file %q is not in the unit's folder %s", f.Key, folder), nil
		}
	}
	for _, f := range m.Files {
		size, err := bucket.Size(ctx, f.Key)
		if sinks.IsNotFound(err) {
			return fmt.Sprintf("file %s is missing", f.Key), nil
		}
		if err != nil {
			return "", err
		}
		if size != f.Bytes {
			return fmt.Sprintf("file %s has %d bytes, the manifest says %d", f.Key, size, f.Bytes), nil
		}
	}
	return "", nil
}

// LatestRepair is one latest.json RepairLatest rewrote (or would have).
type LatestRepair struct {
	Key  string // of latest.json
	Was  string // the manifest it named ("" when missing or unreadable)
	Now  string // the manifest it names
	Date string // of that manifest
}

// LatestRejection is a manifest RepairLatest would not point a latest.json
// at, and why.
type LatestRejection struct {
	Manifest string
	Why      string
}

// latestFacts reads, in one snapshot, what a candidate for latest.json is
// checked against: the completed runs by id (per_run), the orgs with
// sellers (full), and the database's clock.
func (p latestWriter) latestFacts(ctx context.Context, job *Job) (map[string]sources.Run, map[string]bool, time.Time, error) {
	snap, err := p.src.Snapshot(ctx)
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	defer snap.Close(context.WithoutCancel(ctx))
	runs, orgs := map[string]sources.Run{}, map[string]bool{}
	if job.Mode == config.ModePerRun {
		list, err := snap.CompletedRuns(ctx)
		if err != nil {
			return nil, nil, time.Time{}, err
		}
		for _, run := range list {
			runs[run.ID] = run
		}
	} else {
		list, err := snap.Orgs(ctx, job.filter)
		if err != nil {
			return nil, nil, time.Time{}, err
		}
		for _, o := range list {
			orgs[o] = true
		}
	}
	return runs, orgs, snap.Time().Add(clockSlack), nil
}

// repair is RepairLatest of job in bucket.
func (p latestWriter) repair(ctx context.Context, bucket *sinks.Bucket, job *Job, dryRun bool) ([]LatestRepair, []LatestRejection, error) {
	runs, orgs, now, err := p.latestFacts(ctx, job)
	if err != nil {
		return nil, nil, err
	}
	byKey, manifests, err := latestCandidates(ctx, bucket, job)
	if err != nil {
		return nil, nil, err
	}
	var repairs []LatestRepair
	var rejections []LatestRejection
	for _, key := range slices.Sorted(maps.Keys(byKey)) {
		cands := byKey[key]
		slices.SortFunc(cands, func(a, b *Latest) int {
			if a.newer(b) {
				return -1
			}
			return 1
		})
		var l *Latest
		for _, c := range cands {
			why, err := p.rejected(ctx, bucket, job, c.Manifest, manifests[c.Manifest], runs, orgs, now)
			if err != nil {
				return repairs, rejections, err
			}
			if why == "" {
				l = c
				break
			}
			rejections = append(rejections, LatestRejection{Manifest: c.Manifest, Why: why})
		}
		if l == nil {
			continue // nothing true to name; a pointer already there stays
		}
		rep, changed, err := pointAt(ctx, bucket, key, l, dryRun)
		if err != nil {
			return repairs, rejections, err
		}
		if changed {
			repairs = append(repairs, rep)
		}
	}
	return repairs, rejections, nil
}

// latestCandidates reads every manifest of job (one listing, then the
// reads, 8 at a time) and returns them by the latest.json that may name
// them, with the manifests by key.
func latestCandidates(ctx context.Context, bucket *sinks.Bucket, job *Job) (map[string][]*Latest, map[string]*Manifest, error) {
	objs, err := bucket.List(ctx, job.Layout.Prefix(), "/"+ManifestName)
	if err != nil {
		return nil, nil, err
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
				var se *json.SyntaxError
				var te *json.UnmarshalTypeError
				if errors.As(err, &se) || errors.As(err, &te) {
					return nil // not a manifest: never a candidate
				}
				return err
			}
			if m.Job == job.Name {
				ms[i] = m
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	byKey := map[string][]*Latest{}
	manifests := map[string]*Manifest{}
	for i, m := range ms {
		if m == nil {
			continue
		}
		mkey := objs[i].Key
		manifests[mkey] = m
		key := job.Layout.Latest(mkey, m.OrgID)
		byKey[key] = append(byKey[key], latestOf(m, mkey))
	}
	return byKey, manifests, nil
}

// pointAt writes l at key unless it says so already (changed false);
// with dryRun it only says what it would do.
func pointAt(ctx context.Context, bucket *sinks.Bucket, key string, l *Latest, dryRun bool) (rep LatestRepair, changed bool, err error) {
	data, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return rep, false, err
	}
	rep = LatestRepair{Key: key, Now: l.Manifest, Date: l.Date}
	old, err := bucket.ReadAll(ctx, key)
	switch {
	case sinks.IsNotFound(err):
	case err != nil:
		return rep, false, fmt.Errorf("read %s: %w", key, err)
	default:
		var prev Latest
		if json.Unmarshal(old, &prev) == nil {
			rep.Was = prev.Manifest
		}
		if bytes.Equal(bytes.TrimSpace(old), data) {
			return rep, false, nil
		}
	}
	if !dryRun {
		if err := bucket.Put(ctx, key, append(data, '\n'), "application/json", nil); err != nil {
			return rep, false, fmt.Errorf("write %s: %w", key, err)
		}
	}
	return rep, true, nil
}
