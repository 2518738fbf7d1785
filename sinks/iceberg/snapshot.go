package iceberg

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// partitionKey identifies a partition tuple.
func partitionKey(spec Spec, part map[string]any) string {
	var b strings.Builder
	for _, f := range spec.Fields {
		b.WriteString(valueKey(part[f.Name]))
		b.WriteByte(0)
	}
	return b.String()
}

// snapshot builds the snapshot that adds f and deletes the other files of
// its partition, writing its manifests and manifest list.
func (p *Plan) snapshot(ctx context.Context, md *Metadata, f DataFile, props map[string]string, nowMS int64, written *[]string) (*Snapshot, int, error) {
	t := p.t
	spec := p.spec
	seq := md.LastSequenceNumber + 1
	snap := &Snapshot{ID: randomID(), Sequence: seq, TimestampMS: nowMS, SchemaID: &md.CurrentSchemaID}
	part := map[string]any{}
	for i, pf := range spec.Fields {
		part[pf.Name] = f.Values[i]
	}
	var parentFiles []manifestFile
	parent := md.Current()
	if parent != nil {
		snap.ParentID = &parent.ID
		var err error
		if parentFiles, err = t.manifestList(ctx, parent.ManifestList); err != nil {
			return nil, 0, err
		}
	}
	list, kept, del, err := p.dropPartition(ctx, md, snap, parentFiles, part, written)
	if err != nil {
		return nil, 0, err
	}
	if f.Rows == 0 && del.files == 0 {
		return nil, 0, errNothingToCommit
	}
	kept, err = p.merge(ctx, md, snap, kept, written)
	if err != nil {
		return nil, 0, err
	}
	list, err = p.addFile(ctx, md, snap, f, part, list, written)
	if err != nil {
		return nil, 0, err
	}
	list = append(list, kept...)
	snap.Summary = summary(list, parent, f, del, props)

	data, err := encodeManifestList(snap, list)
	if err != nil {
		return nil, 0, err
	}
	rel := fmt.Sprintf("metadata/snap-%d-1-%s.avro", snap.ID, uuid.NewString())
	if err := t.put(ctx, rel, data, "application/octet-stream", written); err != nil {
		return nil, 0, err
	}
	snap.ManifestList = t.loc(rel)
	t.cache.put(snap.ManifestList, list)
	return snap, int(del.files), nil
}

// mayContain reports whether a manifest's partition summaries admit part.
func mayContain(spec Spec, mf manifestFile, part map[string]any) bool {
	if mf.Partitions == nil || len(*mf.Partitions) != len(spec.Fields) {
		return true
	}
	for i, f := range spec.Fields {
		if !within((*mf.Partitions)[i], part[f.Name]) {
			return false
		}
	}
	return true
}

// writeManifest writes entries as a manifest of snap and returns its
// manifest list entry.
func (p *Plan) writeManifest(ctx context.Context, md *Metadata, snap *Snapshot, entries []entry, written *[]string) (manifestFile, error) {
	t := p.t
	mf := manifestFile{SpecID: int32(p.spec.ID), Sequence: snap.Sequence, MinSequence: snap.Sequence, AddedSnapshotID: snap.ID}
	sums := make([]fieldSummary, len(p.spec.Fields))
	lows, highs := make([]Value, len(sums)), make([]Value, len(sums))
	for _, e := range entries {
		switch e.Status {
		case statusAdded:
			mf.AddedFiles++
			mf.AddedRows += e.DataFile.RecordCount
		case statusExisting:
			mf.ExistingFiles++
			mf.ExistingRows += e.DataFile.RecordCount
		case statusDeleted:
			mf.DeletedFiles++
			mf.DeletedRows += e.DataFile.RecordCount
		}
		if e.Status != statusDeleted && e.Sequence != nil {
			mf.MinSequence = min(mf.MinSequence, *e.Sequence)
		}
		for i, f := range p.spec.Fields {
			v := e.DataFile.Partition[f.Name]
			if v == nil {
				sums[i].ContainsNull = true
				continue
			}
			if lows[i] == nil || less(v, lows[i]) {
				lows[i] = v
			}
			if highs[i] == nil || less(highs[i], v) {
				highs[i] = v
			}
		}
	}
	for i := range sums {
		if lows[i] != nil {
			lo, hi := bound(lows[i]), bound(highs[i])
			sums[i].Lower, sums[i].Upper = &lo, &hi
		}
	}
	mf.Partitions = &sums
	data, err := encodeManifest(p.spec, p.ptypes, md.Schema(), entries)
	if err != nil {
		return mf, err
	}
	rel := fmt.Sprintf("metadata/%s-m0.avro", uuid.NewString())
	if err := t.put(ctx, rel, data, "application/octet-stream", written); err != nil {
		return mf, err
	}
	mf.Path, mf.Length = t.loc(rel), int64(len(data))
	t.cache.put(mf.Path, entries)
	return mf, nil
}

func less(a, b Value) bool {
	switch a := a.(type) {
	case time.Time:
		if b, ok := b.(time.Time); ok {
			return a.Before(b)
		}
	case string:
		if b, ok := b.(string); ok {
			return a < b
		}
	}
	return valueKey(a) < valueKey(b)
}

// merge merges the manifests that cover the same dates (or all, without a
// date partition field) once MergeMin of them do, so that the manifest
// list grows with the dates, not with the commits.
func (p *Plan) merge(ctx context.Context, md *Metadata, snap *Snapshot, files []manifestFile, written *[]string) ([]manifestFile, error) {
	dateField := -1
	for i, t := range p.ptypes {
		if strings.Contains(t, `"date"`) {
			dateField = i
			break
		}
	}
	binOf := func(mf manifestFile) string {
		if dateField < 0 || mf.Partitions == nil || len(*mf.Partitions) <= dateField {
			return ""
		}
		s := (*mf.Partitions)[dateField]
		if s.Lower == nil || s.Upper == nil {
			return "null"
		}
		return string(*s.Lower) + string(*s.Upper)
	}
	bins := map[string][]int{}
	var order []string
	for i, mf := range files {
		b := binOf(mf)
		if _, ok := bins[b]; !ok {
			order = append(order, b)
		}
		bins[b] = append(bins[b], i)
	}
	merged := map[int]bool{}
	var out []manifestFile
	for _, b := range order {
		idx := bins[b]
		if len(idx) < p.t.o.MergeMin {
			continue
		}
		var all []entry
		for _, i := range idx {
			entries, err := p.t.manifest(ctx, files[i])
			if err != nil {
				return nil, err
			}
			for _, e := range entries {
				if e.Status == statusDeleted {
					continue
				}
				e.Status = statusExisting
				all = append(all, e)
			}
			merged[i] = true
		}
		mf, err := p.writeManifest(ctx, md, snap, all, written)
		if err != nil {
			return nil, err
		}
		out = append(out, mf)
	}
	for i, mf := range files {
		if !merged[i] {
			out = append(out, mf)
		}
	}
	return out, nil
}

// manifestList reads a manifest list.
func (t *Table) manifestList(ctx context.Context, loc string) ([]manifestFile, error) {
	return readCached(ctx, t, loc, "manifest list", decodeManifestList)
}

// manifest reads a manifest's entries, with the sequence numbers and
// snapshot ids they inherit made explicit.
func (t *Table) manifest(ctx context.Context, mf manifestFile) ([]entry, error) {
	entries, err := readCached(ctx, t, mf.Path, "manifest", func(b []byte) ([]entry, error) {
		if int64(len(b)) != mf.Length {
			return nil, fmt.Errorf("%d bytes, its list says %d", len(b), mf.Length)
		}
		return decodeManifest(b)
	})
	if err != nil {
		return nil, err
	}
	out := slices.Clone(entries)
	for i := range out {
		e := &out[i]
		if e.SnapshotID == nil {
			id := mf.AddedSnapshotID
			e.SnapshotID = &id
		}
		if e.Sequence == nil && e.Status == statusAdded {
			s := mf.Sequence
			e.Sequence = &s
		}
		if e.FileSequence == nil && e.Status == statusAdded {
			s := mf.Sequence
			e.FileSequence = &s
		}
		if e.DataFile.Partition == nil {
			e.DataFile.Partition = map[string]any{}
		}
	}
	return out, nil
}

// deletion sums up the data files a snapshot removes.
type deletion struct{ files, rows, bytes int64 }

// dropPartition marks the live files of partition part deleted in snap,
// rewriting the manifests of the parent's (parentFiles) that hold any:
// list are the manifests written or kept as they are (delete manifests,
// other specs'), kept those of this spec that hold none of it, which
// merge may combine.
func (p *Plan) dropPartition(ctx context.Context, md *Metadata, snap *Snapshot, parentFiles []manifestFile, part map[string]any, written *[]string) (list, kept []manifestFile, del deletion, err error) {
	t, spec := p.t, p.spec
	want := partitionKey(spec, part)
	for _, mf := range parentFiles {
		if mf.Content != 0 || int(mf.SpecID) != spec.ID {
			list = append(list, mf) // delete manifests, other specs: not ours to change
			continue
		}
		if mf.AddedFiles+mf.ExistingFiles == 0 {
			continue // deletions recorded by an earlier snapshot
		}
		if !mayContain(spec, mf, part) {
			kept = append(kept, mf)
			continue
		}
		entries, err := t.manifest(ctx, mf)
		if err != nil {
			return nil, nil, del, err
		}
		hit := false
		for _, e := range entries {
			if e.Status != statusDeleted && partitionKey(spec, e.DataFile.Partition) == want {
				hit = true
			}
		}
		if !hit {
			kept = append(kept, mf)
			continue
		}
		var out []entry
		for _, e := range entries {
			switch {
			case e.Status == statusDeleted:
				continue
			case partitionKey(spec, e.DataFile.Partition) == want:
				e.Status, e.SnapshotID = statusDeleted, &snap.ID
				del.files++
				del.rows += e.DataFile.RecordCount
				del.bytes += e.DataFile.FileSize
			default:
				e.Status = statusExisting
			}
			out = append(out, e)
		}
		nmf, err := p.writeManifest(ctx, md, snap, out, written)
		if err != nil {
			return nil, nil, del, err
		}
		list = append(list, nmf)
	}
	return list, kept, del, nil
}

// addFile puts the manifest adding f (none for an empty unit) first in list.
func (p *Plan) addFile(ctx context.Context, md *Metadata, snap *Snapshot, f DataFile, part map[string]any, list []manifestFile, written *[]string) ([]manifestFile, error) {
	if f.Rows == 0 {
		return list, nil
	}
	added := entry{Status: statusAdded, SnapshotID: &snap.ID, DataFile: dataFile{
		FilePath: p.t.dataFileLoc(f.Key), FileFormat: "PARQUET", Partition: part, RecordCount: f.Rows, FileSize: f.Bytes}}
	amf, err := p.writeManifest(ctx, md, snap, []entry{added}, written)
	if err != nil {
		return nil, err
	}
	return append([]manifestFile{amf}, list...), nil
}

// summary is the snapshot summary of a commit adding f (none when empty)
// and removing del, whose manifests are list.
func summary(list []manifestFile, parent *Snapshot, f DataFile, del deletion, props map[string]string) map[string]string {
	op := "delete" // an empty unit: no file is added, its partition's go
	sum := map[string]string{"changed-partition-count": "1"}
	if f.Rows > 0 {
		op = "append"
		if del.files > 0 {
			op = "overwrite"
		}
		sum["added-data-files"] = "1"
		sum["added-records"] = strconv.FormatInt(f.Rows, 10)
		sum["added-files-size"] = strconv.FormatInt(f.Bytes, 10)
	}
	sum["operation"] = op
	if del.files > 0 {
		sum["deleted-data-files"] = strconv.FormatInt(del.files, 10)
		sum["deleted-records"] = strconv.FormatInt(del.rows, 10)
		sum["removed-files-size"] = strconv.FormatInt(del.bytes, 10)
	}
	var files, rows int64
	for _, mf := range list {
		if mf.Content == 0 {
			files += int64(mf.AddedFiles + mf.ExistingFiles)
			rows += mf.AddedRows + mf.ExistingRows
		}
	}
	sum["total-data-files"] = strconv.FormatInt(files, 10)
	sum["total-records"] = strconv.FormatInt(rows, 10)
	sum["total-delete-files"], sum["total-position-deletes"], sum["total-equality-deletes"] = "0", "0", "0"
	if parent != nil {
		if n, err := strconv.ParseInt(parent.Summary["total-files-size"], 10, 64); err == nil {
			sum["total-files-size"] = strconv.FormatInt(n+f.Bytes-del.bytes, 10)
		}
	} else {
		sum["total-files-size"] = strconv.FormatInt(f.Bytes, 10)
	}
	maps.Copy(sum, props)
	return sum
}
