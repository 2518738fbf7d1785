package iceberg

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
)

// Retention says which snapshots a commit expires.
type Retention struct {
	// MaxAge: snapshots older than this expire, but for the newest Keep.
	// Default 24h. Each snapshot kept is a line of every metadata file:
	// with a run a minute, a day of snapshots is ~1 MB of metadata.
	MaxAge time.Duration
	// Keep is how many of the newest snapshots never expire. Default 10.
	Keep int
	// Batch: expiry waits until this many snapshots may expire, so that
	// its reads (the expired snapshots' manifest lists and manifests) are
	// shared by many commits. Default 10.
	Batch int
	// Off keeps every snapshot (and every file).
	Off bool
}

func (r Retention) withDefaults() Retention {
	if r.MaxAge <= 0 {
		r.MaxAge = 24 * time.Hour
	}
	if r.Keep <= 0 {
		r.Keep = 10
	}
	if r.Batch <= 0 {
		r.Batch = 10
	}
	return r
}

// expiry is what a commit expires: snapshots dropped from the metadata,
// and the files only they referenced, deleted once the commit is made.
type expiry struct {
	snapshots []int64
	files     []string // locations
}

// expire drops from md (whose current snapshot is the new one) the
// ancestors of the current snapshot that the retention lets go, when at
// least Batch of them may, and lists the files only they referenced.
//
// History is linear here (only the main branch; a table with other refs
// expires nothing), so a data file that any kept snapshot reads is live
// in the oldest kept one, and a manifest that any kept snapshot lists is
// in the oldest kept one's list: the expired snapshots' lists and the
// manifests they added are read, never the kept snapshots' but the
// oldest's.
func (t *Table) expire(ctx context.Context, md *Metadata, nowMS int64) (*expiry, error) {
	r := t.o.Retention.withDefaults()
	if r.Off || len(md.Refs) != 1 || md.Refs["main"] == nil {
		return nil, nil
	}
	var chain []*Snapshot // newest first
	for s := md.Current(); s != nil; {
		chain = append(chain, s)
		if s.ParentID == nil {
			break
		}
		s = md.snapshot(*s.ParentID)
	}
	cutoff := nowMS - r.MaxAge.Milliseconds()
	keep := r.Keep
	for keep < len(chain) && chain[keep].TimestampMS >= cutoff {
		keep++
	}
	if len(chain)-keep < r.Batch {
		return nil, nil
	}
	oldest, expired := chain[keep-1], chain[keep:]
	keptList, err := t.manifestList(ctx, oldest.ManifestList)
	if err != nil {
		return nil, err
	}
	keptManifests := map[string]bool{}
	live := map[string]bool{}
	for _, mf := range keptList {
		keptManifests[mf.Path] = true
		entries, err := t.manifest(ctx, mf)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if e.Status != statusDeleted {
				live[e.DataFile.FilePath] = true
			}
		}
	}
	ex := &expiry{}
	seen := map[string]bool{}
	drop := func(loc string) {
		if !seen[loc] {
			seen[loc] = true
			ex.files = append(ex.files, loc)
		}
	}
	for _, s := range expired {
		ex.snapshots = append(ex.snapshots, s.ID)
		list, err := t.manifestList(ctx, s.ManifestList)
		if err != nil {
			return nil, err
		}
		for _, mf := range list {
			if keptManifests[mf.Path] || seen[mf.Path] || mf.Content != 0 {
				continue
			}
			entries, err := t.manifest(ctx, mf)
			if err != nil {
				return nil, err
			}
			for _, e := range entries {
				if !live[e.DataFile.FilePath] {
					drop(e.DataFile.FilePath)
				}
			}
			drop(mf.Path)
		}
		drop(s.ManifestList)
	}
	gone := map[int64]bool{}
	for _, id := range ex.snapshots {
		gone[id] = true
	}
	md.Snapshots = slices.DeleteFunc(md.Snapshots, func(s *Snapshot) bool { return gone[s.ID] })
	md.SnapshotLog = slices.DeleteFunc(md.SnapshotLog, func(e snapshotLogEntry) bool { return gone[e.SnapshotID] })
	// The oldest kept snapshot's parent is gone: readers that walk the
	// history stop there.
	return ex, nil
}

// remove deletes the files of an expiry and the metadata files the
// metadata log no longer lists (with their v<N>.metadata.json copies),
// after the commit that dropped them. Only files of the table's location
// are deleted; a failure leaves an unreferenced file, logged.
func (t *Table) remove(ctx context.Context, ex *expiry, oldMetadata []string) {
	ctx = context.WithoutCancel(ctx)
	var locs []string
	if ex != nil {
		locs = ex.files
	}
	for _, m := range oldMetadata {
		locs = append(locs, m)
		if v := metadataVersion(m); v > 0 && !strings.HasSuffix(m, fmt.Sprintf("/v%d.metadata.json", v)) {
			locs = append(locs, t.loc(path.Join("metadata", fmt.Sprintf("v%d.metadata.json", v))))
		}
	}
	for _, loc := range locs {
		key, err := t.key(loc)
		if err == nil {
			err = t.o.Bucket.Delete(ctx, key)
		}
		if err != nil {
			t.o.Logger.Warn("iceberg: could not remove a file no snapshot references", "table", t.o.Ident.String(), "file", loc, "err", err)
		}
	}
}
