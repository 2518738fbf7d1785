package pipeline

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/sinks"
)

// Audit is what an audit of a job's outputs found: each published export's
// files against its manifest, the manifests against the job's Iceberg
// table, and latest.json against the manifests.
type Audit struct {
	Manifests int   // the job's manifests
	Files     int   // files they list, checked
	Hashed    int64 // bytes read to check sha256 (0 with quick)
	Live      int   // data files live in the table
	Foreign   int   // of them, other writers' (not the job's to account for)
	Requests  int64 // bucket requests the audit made
	Diffs     []AuditDiff
}

// AuditDiff is one difference between two outputs, with the command that
// repairs it (<pipeline.yaml> for the config's path).
type AuditDiff struct {
	Unit string // the unit, as people name it
	What string
	Fix  string
}

// unitName names the unit of m for people.
func unitName(job *Job, m *Manifest) string {
	if job.Mode == config.ModePerRun {
		return fmt.Sprintf("run %s (org %s, %s)", m.RunID, cmp.Or(m.OrgID, noOrg), m.Date)
	}
	return fmt.Sprintf("org %s, %s", cmp.Or(m.OrgID, noOrg), m.Date)
}

// Audit checks every output of job (one listing of its prefix, every
// manifest read, and, unless quick, every file read for its sha256):
//
//   - manifest ↔ files: each file it lists is there, with its size and
//     (unless quick) its sha256, and _SUCCESS beside it; one manifest per
//     unit;
//   - manifests ↔ table: each export with rows has its data file live in
//     the table once, with its rows; no live file of the job's is without
//     a manifest; the table is the one the job committed to;
//   - latest.json ↔ the newest manifest of its org (as repair-latest
//     computes it).
//
// The rows against the database are Verify's.
func (r *Runner) Audit(ctx context.Context, job *Job, quick bool) (*Audit, error) {
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return nil, err
	}
	before := bucket.Requests()
	objs, err := bucket.List(ctx, job.Layout.Prefix(), "")
	if err != nil {
		return nil, err
	}
	sizes := map[string]int64{}
	var keys []string
	for _, o := range objs {
		sizes[o.Key] = o.Size
		if path.Base(o.Key) == ManifestName && !strings.Contains(o.Key, "/_sellersnap/") && !strings.HasPrefix(o.Key, "_sellersnap/") {
			keys = append(keys, o.Key)
		}
	}
	slices.Sort(keys)
	a := &Audit{}
	var mu sync.Mutex
	diff := func(unit, what, fix string) {
		mu.Lock()
		a.Diffs = append(a.Diffs, AuditDiff{Unit: unit, What: what, Fix: fix})
		mu.Unlock()
	}
	ms := make([]*Manifest, len(keys))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(existsConcurrency)
	for i, key := range keys {
		g.Go(func() error {
			m, err := readManifest(gctx, bucket, key)
			if err != nil {
				diff(key, fmt.Sprintf("manifest cannot be read: %v", err), "")
				return nil
			}
			if m.Job != job.Name {
				return nil
			}
			ms[i] = m
			return r.auditFiles(gctx, bucket, job, key, m, sizes, quick, a, &mu, diff)
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	byUnit := map[string][]string{}
	for i, m := range ms {
		if m == nil {
			continue
		}
		a.Manifests++
		id := unitOfManifest(job, m).lockKey()
		if job.Mode == config.ModePerRun {
			id = m.RunID
		}
		byUnit[id] = append(byUnit[id], keys[i])
	}
	for id, ks := range byUnit {
		if len(ks) > 1 {
			fix := "remove all but one of these exports (each folder whole), then sellersnap repair-table -config <pipeline.yaml> -job " + job.Name
			if keysNameRuns(job) {
				fix = fmt.Sprintf("sellersnap rerun -config <pipeline.yaml> -job %s -run %s (rewrites the run where it is held and removes its other exports, files and table partitions alike)", job.Name, id)
			}
			diff("unit "+id, fmt.Sprintf("exported %d times: %s (a run whose completed_at moved to another day)", len(ks), strings.Join(ks, ", ")), fix)
		}
	}
	if job.table != nil {
		if err := r.auditTable(ctx, job, keys, ms, a, diff); err != nil {
			return nil, err
		}
	}
	repairs, _, err := r.RepairLatest(ctx, job, true)
	if err != nil {
		return nil, err
	}
	for _, rp := range repairs {
		diff(rp.Key, fmt.Sprintf("names %s; the newest export is %s (%s)", cmp.Or(rp.Was, "nothing"), rp.Now, rp.Date),
			"sellersnap repair-latest -config <pipeline.yaml> -job "+job.Name)
	}
	slices.SortFunc(a.Diffs, func(x, y AuditDiff) int { return cmp.Compare(x.Unit+x.What, y.Unit+y.What) })
	a.Requests = bucket.Requests() - before
	return a, nil
}

// auditFiles checks the files manifest m (at key) lists.
func (r *Runner) auditFiles(ctx context.Context, bucket *sinks.Bucket, job *Job, key string, m *Manifest, sizes map[string]int64, quick bool,
	a *Audit, mu *sync.Mutex, diff func(unit, what, fix string)) error {
	unit, fix := unitName(job, m), rerunCommand(job, m)
	if _, ok := sizes[path.Join(path.Dir(key), "_SUCCESS")]; !ok {
		diff(unit, "no _SUCCESS beside "+key, fix)
	}
	for _, f := range m.Files {
		mu.Lock()
		a.Files++
		mu.Unlock()
		size, ok := sizes[f.Key]
		switch {
		case !ok:
			diff(unit, fmt.Sprintf("%s is missing (its manifest lists %d bytes)", f.Key, f.Bytes), fix)
			continue
		case size != f.Bytes:
			diff(unit, fmt.Sprintf("%s is %d bytes, its manifest says %d", f.Key, size, f.Bytes), fix)
			continue
		case quick:
			continue
		}
		sum, n, err := hashObject(ctx, bucket, f.Key)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			diff(unit, fmt.Sprintf("%s cannot be read: %v", f.Key, err), fix)
			continue
		}
		mu.Lock()
		a.Hashed += n
		mu.Unlock()
		if sum != f.SHA256 {
			diff(unit, fmt.Sprintf("%s has sha256 %s, its manifest says %s", f.Key, sum, f.SHA256), fix)
		}
	}
	return nil
}

func hashObject(ctx context.Context, bucket *sinks.Bucket, key string) (string, int64, error) {
	rd, err := bucket.NewReader(ctx, key)
	if err != nil {
		return "", 0, err
	}
	defer rd.Close()
	h := sha256.New()
	n, err := io.Copy(h, rd)
	if err != nil {
		return "", n, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// auditTable checks the manifests against the job's table.
func (r *Runner) auditTable(ctx context.Context, job *Job, keys []string, ms []*Manifest, a *Audit, diff func(unit, what, fix string)) error {
	repair := "sellersnap repair-table -config <pipeline.yaml> -job " + job.Name
	tb, err := r.table(ctx, job)
	if err != nil {
		return err
	}
	exp, _, err := r.expectTable(ctx, job)
	if err != nil {
		diff("table "+tb.Ident().String(), err.Error(), repair)
		return nil
	}
	md, c, err := tb.Live(ctx)
	if err != nil {
		return err
	}
	if md == nil {
		if exp != nil {
			diff("table "+tb.Ident().String(), "is not in the catalog; the job committed to it", repair)
		}
		return nil
	}
	if exp != nil && exp.UUID != "" && md.TableUUID != exp.UUID {
		diff("table "+tb.Ident().String(), fmt.Sprintf("has table-uuid %s, the job committed to %s", md.TableUUID, exp.UUID), repair)
	}
	a.Live = len(c.Live)
	claimed := map[string]bool{}
	for i, m := range ms {
		if m == nil {
			continue
		}
		unit := unitName(job, m)
		t := m.Table
		switch {
		case t == nil:
			diff(unit, keys[i]+" names no table commit", repair)
		case m.Rows == 0:
		case t.DataFile == "":
			diff(unit, fmt.Sprintf("%s names no data file for %d rows", keys[i], m.Rows), repair)
		case !isLive(c.Live, t.DataFile):
			diff(unit, fmt.Sprintf("its data file %s is not live in the table", t.DataFile), repair)
		case c.Live[t.DataFile] != m.Rows:
			diff(unit, fmt.Sprintf("its data file %s has %d rows live in the table, its manifest says %d", t.DataFile, c.Live[t.DataFile], m.Rows), repair)
		}
		if t != nil && t.DataFile != "" {
			claimed[t.DataFile] = true
		}
	}
	for _, loc := range c.Twice {
		diff("table "+tb.Ident().String(), fmt.Sprintf("data file %s is live twice", loc), repair)
	}
	for loc := range c.Live {
		if claimed[loc] {
			continue
		}
		s := md.SnapshotOf(c.AddedBy[loc])
		if s != nil && s.Summary["sellersnap.job"] == "" {
			a.Foreign++ // another writer's: not the job's to account for
			continue
		}
		by := "an expired snapshot"
		if s != nil {
			by = fmt.Sprintf("snapshot %d (%s)", s.ID, s.Summary["sellersnap.unit"])
		}
		diff("table "+tb.Ident().String(), fmt.Sprintf("data file %s is live without a manifest naming it (added by %s; a unit exported into the table, then killed before its manifest)", loc, by),
			fmt.Sprintf("sellersnap once -config <pipeline.yaml> -job %s (exports its unit again, replacing it), or %s", job.Name, repair))
	}
	return nil
}

func isLive(files map[string]int64, loc string) bool { _, ok := files[loc]; return ok }
