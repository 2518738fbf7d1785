package iceberg

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/sellersnap/sellersnap/internal/failpoint"
	"github.com/sellersnap/sellersnap/internal/keys"
	"github.com/sellersnap/sellersnap/sinks"
)

// Options describe a table and where its files go.
type Options struct {
	Catalog *Catalog
	Ident   Ident
	// Bucket holds the table's files under KeyPrefix.
	Bucket    *sinks.Bucket
	KeyPrefix string
	// Location is KeyPrefix as readers name it (s3://bucket/iceberg/ns/t).
	Location string
	// Properties of a new table.
	Properties map[string]string
	// MergeMin: when this many manifests cover the same dates, the next
	// commit merges them into one. Default 16.
	MergeMin int
	// Retries of a commit that lost a race with another writer. Default 20.
	Retries int
	// Retention of snapshots; expiry is part of a commit.
	Retention Retention
	Logger    *slog.Logger
	// Now is the clock of snapshot timestamps and of expiry. Default: the
	// catalog database's clock, one for every replica, so that the
	// snapshot log stays in order (Java refuses metadata whose entries go
	// back more than a minute) whatever the replicas' clocks say.
	Now func() time.Time
}

// Table commits data files to one Iceberg table.
type Table struct {
	o     Options
	cache *fileCache
}

// Open returns the table described by o; nothing is read or written until
// Prepare or Commit.
func Open(o Options) (*Table, error) {
	if o.Catalog == nil || o.Bucket == nil || o.Location == "" || o.Ident.Namespace == "" || o.Ident.Table == "" {
		return nil, errors.New("iceberg: catalog, bucket, location, namespace and table are required")
	}
	o.KeyPrefix = strings.Trim(o.KeyPrefix, "/")
	o.Location = strings.TrimRight(o.Location, "/")
	o.MergeMin = cmp.Or(o.MergeMin, 16)
	o.Retries = cmp.Or(o.Retries, 20)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Properties = maps.Clone(o.Properties)
	if o.Properties == nil {
		o.Properties = map[string]string{}
	}
	return &Table{o: o, cache: newFileCache(64 << 20)}, nil
}

// Ident is the table's name in its catalog.
func (t *Table) Ident() Ident { return t.o.Ident }

// Location is the table's location.
func (t *Table) Location() string { return t.o.Location }

// key is the bucket key of a file of the table at loc; files outside the
// table's location are refused, whatever metadata names them.
func (t *Table) key(loc string) (string, error) {
	rest, ok := strings.CutPrefix(loc, t.o.Location+"/")
	if !ok || rest == "" || slices.Contains(strings.Split(rest, "/"), "..") {
		return "", fmt.Errorf("%s is not a file of the table at %s", loc, t.o.Location)
	}
	return path.Join(t.o.KeyPrefix, rest), nil
}

func (t *Table) loc(rel string) string { return t.o.Location + "/" + rel }

// dataFileLoc is the location of the table's file at bucket key key.
func (t *Table) dataFileLoc(key string) string {
	return t.loc(strings.TrimPrefix(strings.TrimPrefix(key, t.o.KeyPrefix), "/"))
}

// Layout is what the data files of a commit hold: the exported columns,
// then the partition columns, whose value is the same in a whole file.
type Layout struct {
	Columns   []Column
	Partition []Column // string or date32 columns, in the spec's order
	// Evolve accepts a table schema that differs from Columns (the job's
	// on_schema_change: evolve); otherwise a difference fails Prepare.
	Evolve bool
}

// Plan is a prepared commit: the table schema and field ids the data
// file is written with.
type Plan struct {
	t      *Table
	layout Layout
	cols   []Column
	schema *Schema
	spec   Spec
	ptypes []string // Avro types of the spec's fields
}

// SchemaChangeError is a table schema that differs from the export's
// while the job does not accept schema changes.
type SchemaChangeError struct {
	Table  Ident
	Change string
}

func (e *SchemaChangeError) Error() string {
	return fmt.Sprintf("iceberg table %s: its schema differs from the export's (%s); on_schema_change: fail", e.Table, e.Change)
}

// Prepare reads the table's current metadata (if the table exists) and
// returns the plan of a commit of files laid out as l.
func (t *Table) Prepare(ctx context.Context, l Layout) (*Plan, error) {
	md, _, err := t.head(ctx)
	if err != nil {
		return nil, err
	}
	return t.plan(md, l)
}

func (t *Table) plan(md *Metadata, l Layout) (*Plan, error) {
	cols := append(slices.Clone(l.Columns), l.Partition...)
	var cur *Schema
	last := 0
	if md != nil {
		cur, last = md.Schema(), md.LastColumnID
	}
	s, _, changed, err := evolve(cur, last, cols)
	if err != nil {
		return nil, fmt.Errorf("iceberg table %s: %w", t.o.Ident, err)
	}
	if changed && cur != nil && !l.Evolve {
		return nil, &SchemaChangeError{Table: t.o.Ident, Change: describeChange(cur, s)}
	}
	p := &Plan{t: t, layout: l, cols: cols, schema: s}
	p.spec = Spec{ID: 0}
	for i, c := range l.Partition {
		f := s.Fields[len(l.Columns)+i]
		at, err := avroPartitionType(f.TypeName())
		if err != nil {
			return nil, fmt.Errorf("iceberg table %s: %w", t.o.Ident, err)
		}
		p.ptypes = append(p.ptypes, at)
		p.spec.Fields = append(p.spec.Fields, PartitionField{Name: c.Name, Transform: "identity", SourceID: f.ID, FieldID: 1000 + i})
	}
	if md != nil {
		have := md.Spec()
		if have == nil || !sameSpec(*have, p.spec) {
			return nil, fmt.Errorf("iceberg table %s is partitioned by %s, the job's files by %s", t.o.Ident, describeSpec(have, md.Schema()), describeSpec(&p.spec, s))
		}
		p.spec = *have
	}
	return p, nil
}

func sameSpec(a, b Spec) bool {
	return slices.EqualFunc(a.Fields, b.Fields, func(x, y PartitionField) bool {
		return x.Name == y.Name && x.Transform == y.Transform && x.SourceID == y.SourceID
	})
}

func describeSpec(s *Spec, schema *Schema) string {
	if s == nil || len(s.Fields) == 0 {
		return "nothing"
	}
	var parts []string
	for _, f := range s.Fields {
		src := strconv.Itoa(f.SourceID)
		if schema != nil {
			for _, c := range schema.Fields {
				if c.ID == f.SourceID {
					src = c.Name
				}
			}
		}
		parts = append(parts, fmt.Sprintf("%s(%s)", f.Transform, src))
	}
	return strings.Join(parts, ", ")
}

func describeChange(old, s *Schema) string {
	var d []string
	for _, f := range s.Fields {
		o, ok := old.field(f.Name)
		switch {
		case !ok:
			d = append(d, "+ "+f.Name+" "+f.TypeName())
		case o.ID != f.ID || o.TypeName() != f.TypeName():
			d = append(d, "~ "+f.Name+": "+o.TypeName()+" → "+f.TypeName())
		}
	}
	for _, f := range old.Fields {
		if _, ok := s.field(f.Name); !ok {
			d = append(d, "- "+f.Name)
		}
	}
	if len(d) == 0 {
		return "column order"
	}
	return strings.Join(d, "; ")
}

// head reads the table's current metadata through the catalog: nil when
// the catalog has no such table.
func (t *Table) head(ctx context.Context) (*Metadata, string, error) {
	loc, err := t.o.Catalog.Location(ctx, t.o.Ident)
	if err != nil || loc == "" {
		return nil, "", err
	}
	md, err := t.readMetadata(ctx, loc)
	return md, loc, err
}

func (t *Table) readMetadata(ctx context.Context, loc string) (*Metadata, error) {
	return readCached(ctx, t, loc, "metadata", func(b []byte) (*Metadata, error) {
		md, err := ParseMetadata(b)
		if err != nil {
			return nil, err
		}
		if strings.TrimRight(md.Location, "/") != t.o.Location {
			return nil, fmt.Errorf("the table is at %s, the job writes it at %s", md.Location, t.o.Location)
		}
		return md, nil
	})
}

// readCached reads the table's file at loc (metadata, manifest list or
// manifest: files never rewritten) through the table's cache, decoding it
// with decode; what names the file in errors. Files outside the table's
// location are refused, whatever names them.
func readCached[T any](ctx context.Context, t *Table, loc, what string, decode func([]byte) (T, error)) (T, error) {
	var zero T
	if v, ok := t.cache.get(loc); ok {
		return v.(T), nil
	}
	key, err := t.key(loc)
	if err != nil {
		return zero, fmt.Errorf("iceberg table %s: %w", t.o.Ident, err)
	}
	b, err := t.o.Bucket.ReadAll(ctx, key)
	if err != nil {
		return zero, fmt.Errorf("iceberg table %s: read %s: %w", t.o.Ident, what, err)
	}
	v, err := decode(b)
	if err != nil {
		return zero, fmt.Errorf("iceberg table %s: %s %s: %w", t.o.Ident, what, loc, err)
	}
	t.cache.putSized(loc, v, len(b))
	return v, nil
}

// DataKey is a new, unique key for a data file with partition values
// (in the layout's order): data/<col>=<value>/…/<uuid>.parquet.
func (p *Plan) DataKey(values []Value) string {
	segs := []string{p.t.o.KeyPrefix, "data"}
	for i, c := range p.layout.Partition {
		segs = append(segs, c.Name+"="+keys.Escape(partitionText(values[i])))
	}
	return path.Join(append(segs, uuid.NewString()+".parquet")...)
}

func partitionText(v Value) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case time.Time:
		return v.UTC().Format(time.DateOnly)
	}
	return fmt.Sprint(v)
}

// DataFile is a data file written for a commit.
type DataFile struct {
	Key    string
	Bytes  int64
	Rows   int64
	Values []Value // partition values, in the layout's order
}

// Commit is what one commit did.
type Commit struct {
	SnapshotID int64
	Sequence   int64
	// Operation is append, overwrite, delete (an empty file replacing
	// its partition's: no file is added) or none (an empty file for a
	// partition the table does not hold: no snapshot; SnapshotID is the
	// current one).
	Operation string
	DataFile  string // the added data file's location; "" when none was added
	Replaced  int    // data files of the partition it replaced
	Metadata  string // the new metadata file
	Attempts  int
	// Expired is how many snapshots this commit expired; Removed how many
	// files it then deleted (data files, manifests, lists, metadata).
	Expired, Removed int
}

// errNothingToCommit: an empty file for a partition the table does not
// hold changes nothing.
var errNothingToCommit = errors.New("nothing to commit")

// Commit makes f the only data file of its partition in a new snapshot,
// with summary properties props. A commit that loses a race with another
// writer is retried against the new head.
func (p *Plan) Commit(ctx context.Context, f DataFile, props map[string]string) (*Commit, error) {
	t := p.t
	for attempt := 1; ; attempt++ {
		c, err := p.commitOnce(ctx, f, props)
		if err == nil {
			c.Attempts = attempt
			return c, nil
		}
		if !errors.Is(err, ErrConflict) || attempt > t.o.Retries {
			return nil, err
		}
		t.o.Logger.Info("iceberg commit raced another writer; retrying against the new head", "table", t.o.Ident.String(), "attempt", attempt)
	}
}

func (p *Plan) commitOnce(ctx context.Context, f DataFile, props map[string]string) (*Commit, error) {
	t := p.t
	tx, err := t.o.Catalog.begin(ctx, t.o.Ident)
	if err != nil {
		return nil, err
	}
	defer tx.rollback(ctx)
	var base *Metadata
	version := 0
	if tx.base != "" {
		if base, err = t.readMetadata(ctx, tx.base); err != nil {
			return nil, err
		}
		version = metadataVersion(tx.base)
	}
	// The head may have moved since Prepare: the data file's field ids
	// and the spec must still be the table's.
	now, err := t.plan(base, p.layout)
	if err != nil {
		return nil, err
	}
	if !slices.EqualFunc(now.schema.Fields, p.schema.Fields, func(a, b Field) bool { return a.ID == b.ID && a.Name == b.Name }) {
		return nil, fmt.Errorf("iceberg table %s: its schema changed while the file was written; the export is retried", t.o.Ident)
	}
	nowMS := tx.nowMS
	if t.o.Now != nil {
		nowMS = t.o.Now().UnixMilli()
	}
	if base != nil {
		// Never before the head: the snapshot and metadata logs stay in
		// order even if the clock went back.
		nowMS = max(nowMS, base.LastUpdatedMS+1)
	}
	var md *Metadata
	if base == nil {
		md = newMetadata(uuid.NewString(), t.o.Location, now.schema, maxFieldID(now.schema), now.spec, t.o.Properties, nowMS)
	} else {
		md = base.clone()
		md.setSchema(now.schema, maxFieldID(now.schema))
	}
	var written []string
	ok := false
	defer func() {
		if !ok {
			t.removeUnreferenced(ctx, written)
		}
	}()
	snap, replaced, err := now.snapshot(ctx, md, f, props, nowMS, &written)
	if errors.Is(err, errNothingToCommit) {
		c := &Commit{Operation: "none"}
		if cur := md.Current(); cur != nil {
			c.SnapshotID, c.Sequence = cur.ID, cur.Sequence
		}
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	var dropped []string // metadata files the log no longer lists
	if base != nil {
		md.MetadataLog = append(md.MetadataLog, metadataLogEntry{TimestampMS: base.LastUpdatedMS, MetadataFile: tx.base})
		if n := previousMax(md); len(md.MetadataLog) > n {
			for _, e := range md.MetadataLog[:len(md.MetadataLog)-n] {
				dropped = append(dropped, e.MetadataFile)
			}
			md.MetadataLog = md.MetadataLog[len(md.MetadataLog)-n:]
		}
	}
	md.Snapshots = append(md.Snapshots, snap)
	md.CurrentSnapshotID = &snap.ID
	md.LastSequenceNumber = snap.Sequence
	md.LastUpdatedMS = nowMS
	md.SnapshotLog = append(md.SnapshotLog, snapshotLogEntry{TimestampMS: nowMS, SnapshotID: snap.ID})
	md.Refs["main"] = []byte(fmt.Sprintf(`{"snapshot-id":%d,"type":"branch"}`, snap.ID))
	ex, err := t.expire(ctx, md, nowMS)
	if err != nil {
		return nil, fmt.Errorf("iceberg table %s: expire snapshots: %w", t.o.Ident, err)
	}
	data, err := md.Marshal()
	if err != nil {
		return nil, err
	}
	version++
	rel := fmt.Sprintf("metadata/%05d-%s.metadata.json", version, uuid.NewString())
	if err := t.put(ctx, rel, data, "application/json", &written); err != nil {
		return nil, err
	}
	failpoint.Hit("iceberg-before-swap")
	if err := tx.swap(ctx, t.loc(rel)); err != nil {
		if errors.Is(err, ErrConflict) {
			return nil, err
		}
		// The commit's outcome is unknown: its files may be the table's
		// now, and are left alone.
		ok = true
		return nil, err
	}
	ok = true
	failpoint.Hit("iceberg-after-swap")
	t.cache.put(t.loc(rel), md)
	t.writeHint(ctx, version, data)
	c := &Commit{SnapshotID: snap.ID, Sequence: snap.Sequence, Operation: snap.Summary["operation"],
		Replaced: replaced, Metadata: t.loc(rel)}
	if f.Rows > 0 {
		c.DataFile = t.dataFileLoc(f.Key)
	}
	if ex != nil || len(dropped) > 0 {
		t.remove(ctx, ex, dropped)
		c.Removed = len(dropped)
		if ex != nil {
			c.Expired, c.Removed = len(ex.snapshots), c.Removed+len(ex.files)
		}
	}
	return c, nil
}

// writeHint writes v<N>.metadata.json and version-hint.text for readers
// given only the bucket (a Hadoop catalog, DuckDB's iceberg_scan,
// pyiceberg's StaticTable). They follow the catalog: written after its
// swap, never before, so that they only ever name committed metadata. A
// failure is logged; the next commit writes them again.
func (t *Table) writeHint(ctx context.Context, version int, data []byte) {
	err := t.o.Bucket.Put(ctx, path.Join(t.o.KeyPrefix, "metadata", fmt.Sprintf("v%d.metadata.json", version)), data, "application/json", nil)
	if err == nil {
		err = t.o.Bucket.Put(ctx, path.Join(t.o.KeyPrefix, "metadata", "version-hint.text"), []byte(strconv.Itoa(version)), "text/plain", nil)
	}
	if err != nil {
		t.o.Logger.Warn("could not write the bucket-only metadata (v<N>.metadata.json, version-hint.text); the next commit writes it", "table", t.o.Ident.String(), "err", err)
	}
}

var versionPrefix = regexp.MustCompile(`(?:^|/)v?(\d+)[-.][^/]*metadata\.json$`)

// metadataVersion is the version number of a metadata file's name
// (00003-….metadata.json, v3.metadata.json), 0 if it has none.
func metadataVersion(loc string) int {
	m := versionPrefix.FindStringSubmatch(loc)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func previousMax(md *Metadata) int {
	if n, err := strconv.Atoi(md.Properties["write.metadata.previous-versions-max"]); err == nil && n > 0 {
		return n
	}
	return 100
}

func maxFieldID(s *Schema) int {
	n := 0
	for _, f := range s.Fields {
		n = max(n, f.ID)
	}
	return n
}

// put writes a new file of the table (create-only: the names are unique)
// and records its key in written.
func (t *Table) put(ctx context.Context, rel string, data []byte, contentType string, written *[]string) error {
	key := path.Join(t.o.KeyPrefix, rel)
	if err := t.o.Bucket.Put(ctx, key, data, contentType, &sinks.PutOptions{IfNotExist: true}); err != nil {
		return fmt.Errorf("iceberg table %s: %w", t.o.Ident, err)
	}
	*written = append(*written, key)
	return nil
}

// removeUnreferenced deletes files a failed commit wrote: no metadata
// names them.
func (t *Table) removeUnreferenced(ctx context.Context, written []string) {
	ctx = context.WithoutCancel(ctx)
	for _, k := range written {
		if err := t.o.Bucket.Delete(ctx, k); err != nil {
			t.o.Logger.Warn("could not remove a file of a failed iceberg commit", "key", k, "err", err)
		}
	}
}

func randomID() int64 {
	var b [8]byte
	rand.Read(b[:])
	return int64(binary.BigEndian.Uint64(b[:]) &^ (1 << 63))
}

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
	want := partitionKey(spec, part)
	var parentFiles []manifestFile
	parent := md.Current()
	if parent != nil {
		snap.ParentID = &parent.ID
		var err error
		if parentFiles, err = t.manifestList(ctx, parent.ManifestList); err != nil {
			return nil, 0, err
		}
	}
	var list, kept []manifestFile
	var deletedFiles, deletedRows, removedBytes int64
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
			return nil, 0, err
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
				deletedFiles++
				deletedRows += e.DataFile.RecordCount
				removedBytes += e.DataFile.FileSize
			default:
				e.Status = statusExisting
			}
			out = append(out, e)
		}
		nmf, err := p.writeManifest(ctx, md, snap, out, written)
		if err != nil {
			return nil, 0, err
		}
		list = append(list, nmf)
	}
	if f.Rows == 0 && deletedFiles == 0 {
		return nil, 0, errNothingToCommit
	}
	kept, err := p.merge(ctx, md, snap, kept, written)
	if err != nil {
		return nil, 0, err
	}
	op := "delete" // an empty unit: no file is added, its partition's go
	sum := map[string]string{"changed-partition-count": "1"}
	if f.Rows > 0 {
		fileLoc := t.dataFileLoc(f.Key)
		added := entry{Status: statusAdded, SnapshotID: &snap.ID, DataFile: dataFile{
			FilePath: fileLoc, FileFormat: "PARQUET", Partition: part, RecordCount: f.Rows, FileSize: f.Bytes}}
		amf, err := p.writeManifest(ctx, md, snap, []entry{added}, written)
		if err != nil {
			return nil, 0, err
		}
		list = append([]manifestFile{amf}, list...)
		op = "append"
		if deletedFiles > 0 {
			op = "overwrite"
		}
		sum["added-data-files"] = "1"
		sum["added-records"] = strconv.FormatInt(f.Rows, 10)
		sum["added-files-size"] = strconv.FormatInt(f.Bytes, 10)
	}
	list = append(list, kept...)
	sum["operation"] = op
	if deletedFiles > 0 {
		sum["deleted-data-files"] = strconv.FormatInt(deletedFiles, 10)
		sum["deleted-records"] = strconv.FormatInt(deletedRows, 10)
		sum["removed-files-size"] = strconv.FormatInt(removedBytes, 10)
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
			sum["total-files-size"] = strconv.FormatInt(n+f.Bytes-removedBytes, 10)
		}
	} else {
		sum["total-files-size"] = strconv.FormatInt(f.Bytes, 10)
	}
	maps.Copy(sum, props)
	snap.Summary = sum

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
	return snap, int(deletedFiles), nil
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

// fileCache holds decoded immutable files (manifests, manifest lists,
// metadata) up to a byte budget, oldest out first.
type fileCache struct {
	mu     sync.Mutex
	budget int
	size   int
	items  map[string]cached
	order  []string
}

type cached struct {
	v    any
	size int
}

func newFileCache(budget int) *fileCache {
	return &fileCache{budget: budget, items: map[string]cached{}}
}

func (c *fileCache) get(k string) (any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.items[k]
	return v.v, ok
}

func (c *fileCache) put(k string, v any) { c.putSized(k, v, 4096) }

func (c *fileCache) putSized(k string, v any, size int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[k]; ok {
		return
	}
	c.items[k] = cached{v: v, size: size}
	c.order = append(c.order, k)
	c.size += size
	for c.size > c.budget && len(c.order) > 1 {
		old := c.order[0]
		c.order = c.order[1:]
		c.size -= c.items[old].size
		delete(c.items, old)
	}
}

// Create creates the table (a metadata file without snapshots) for p's
// layout if the catalog has no such table; it reports whether it did.
func (p *Plan) Create(ctx context.Context) (bool, error) {
	t := p.t
	tx, err := t.o.Catalog.begin(ctx, t.o.Ident)
	if err != nil {
		return false, err
	}
	defer tx.rollback(ctx)
	if tx.base != "" {
		return false, nil
	}
	nowMS := tx.nowMS
	if t.o.Now != nil {
		nowMS = t.o.Now().UnixMilli()
	}
	md := newMetadata(uuid.NewString(), t.o.Location, p.schema, maxFieldID(p.schema), p.spec, t.o.Properties, nowMS)
	data, err := md.Marshal()
	if err != nil {
		return false, err
	}
	var written []string
	rel := fmt.Sprintf("metadata/%05d-%s.metadata.json", 0, uuid.NewString())
	if err := t.put(ctx, rel, data, "application/json", &written); err != nil {
		return false, err
	}
	if err := tx.swap(ctx, t.loc(rel)); err != nil {
		if errors.Is(err, ErrConflict) {
			t.removeUnreferenced(ctx, written)
			return false, nil
		}
		return false, err
	}
	t.writeHint(ctx, 0, data)
	return true, nil
}

// Status is a table's current state.
type Status struct {
	Ident     Ident
	Location  string
	Metadata  string // the catalog's metadata_location; "" when the table does not exist
	Snapshot  *Snapshot
	Snapshots int // kept in the metadata
	Schema    *Schema
	Spec      *Spec
	Retention Retention
}

// Status reads the table's current state through the catalog.
func (t *Table) Status(ctx context.Context) (*Status, error) {
	md, loc, err := t.head(ctx)
	if err != nil {
		return nil, err
	}
	st := &Status{Ident: t.o.Ident, Location: t.o.Location, Metadata: loc, Retention: t.o.Retention.withDefaults()}
	if md != nil {
		st.Snapshot, st.Snapshots, st.Schema, st.Spec = md.Current(), len(md.Snapshots), md.Schema(), md.Spec()
	}
	return st, nil
}
