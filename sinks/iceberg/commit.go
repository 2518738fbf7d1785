package iceberg

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/sellersnap/sellersnap/internal/failpoint"
	"github.com/sellersnap/sellersnap/sinks"
)

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
	TableUUID string
	// HeadAhead is how far the head the commit was made on was dated
	// after the catalog's clock (0 when it was not).
	HeadAhead time.Duration
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
	base, version, now, err := p.rebase(ctx, tx)
	if err != nil {
		return nil, err
	}
	nowMS := tx.nowMS
	if t.o.Now != nil {
		nowMS = t.o.Now().UnixMilli()
	}
	var ahead time.Duration
	if base != nil {
		if ahead = time.Duration(base.LastUpdatedMS-nowMS) * time.Millisecond; ahead > skewTolerance {
			t.o.Logger.Warn("the table's head is dated in the future (a writer's or a catalog's clock is ahead): this commit is dated by the catalog's clock and takes the future entries out of the snapshot and metadata logs, their snapshots and files kept",
				"table", t.o.Ident.String(), "head", time.UnixMilli(base.LastUpdatedMS).UTC(), "now", time.UnixMilli(nowMS).UTC(), "ahead", ahead.Round(time.Second))
		} else {
			// Within the skew every reader tolerates, never before the
			// head: the logs stay in order.
			nowMS = max(nowMS, base.LastUpdatedMS+1)
		}
	}
	var md *Metadata
	if base == nil {
		last, err := t.freshVersion(ctx)
		if err != nil {
			return nil, err
		}
		version = max(last, 0) // a table's first commit is v1, as ever

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
		if base != nil {
			c.TableUUID = base.TableUUID
		}
		if cur := md.Current(); cur != nil {
			c.SnapshotID, c.Sequence = cur.ID, cur.Sequence
		}
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	dropped := md.addSnapshot(base, tx.base, snap, nowMS)
	md.dropFutureLog(nowMS)
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
		// Only an unanswered COMMIT leaves the outcome unknown: its files
		// may be the table's now, and are left alone. A statement that
		// failed inside the transaction committed nothing.
		ok = !errors.Is(err, ErrConflict) && errors.Is(err, ErrOutcomeUnknown)
		return nil, err
	}
	ok = true
	failpoint.Hit("iceberg-after-swap")
	t.cache.put(t.loc(rel), md)
	t.writeHint(ctx, version, data)
	c := &Commit{SnapshotID: snap.ID, Sequence: snap.Sequence, Operation: snap.Summary["operation"],
		Replaced: replaced, Metadata: t.loc(rel), HeadAhead: max(ahead, 0), TableUUID: md.TableUUID}
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

// rebase reads the head the transaction holds (nil for a table without
// metadata yet) and plans the commit against it: the head may have moved
// since Prepare, and the data file's field ids and the spec must still be
// the table's.
func (p *Plan) rebase(ctx context.Context, tx *commitTx) (base *Metadata, version int, now *Plan, err error) {
	t := p.t
	if tx.base != "" {
		if base, err = t.readMetadata(ctx, tx.base); err != nil {
			return nil, 0, nil, err
		}
		version = metadataVersion(tx.base)
	}
	if now, err = t.plan(base, p.layout); err != nil {
		return nil, 0, nil, err
	}
	if !slices.EqualFunc(now.schema.Fields, p.schema.Fields, func(a, b Field) bool { return a.ID == b.ID && a.Name == b.Name }) {
		return nil, 0, nil, fmt.Errorf("iceberg table %s: its schema changed while the file was written; the export is retried", t.o.Ident)
	}
	return base, version, now, nil
}

// addSnapshot makes snap the current snapshot of md, the metadata that
// replaces base (at baseLoc; nil for a new table), and returns the
// metadata files the log no longer lists.
func (md *Metadata) addSnapshot(base *Metadata, baseLoc string, snap *Snapshot, nowMS int64) (dropped []string) {
	if base != nil {
		md.MetadataLog = append(md.MetadataLog, metadataLogEntry{TimestampMS: base.LastUpdatedMS, MetadataFile: baseLoc})
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
	return dropped
}

// skewTolerance is the clock skew between writers that every reader
// accepts in the logs (Java refuses a snapshot or metadata log entry
// more than a minute before the one it follows).
const skewTolerance = time.Minute

// dropFutureLog takes out of md's snapshot and metadata logs the entries
// dated after nowMS + skewTolerance: a head dated in the future (a
// writer's clock ahead) would otherwise date every later commit after it,
// never expire, and lock out the writers whose clocks are right (the logs
// must stay in order). The snapshots and files those entries name stay.
func (md *Metadata) dropFutureLog(nowMS int64) {
	limit := nowMS + skewTolerance.Milliseconds()
	md.SnapshotLog = slices.DeleteFunc(md.SnapshotLog, func(e snapshotLogEntry) bool { return e.TimestampMS > limit })
	md.MetadataLog = slices.DeleteFunc(md.MetadataLog, func(e metadataLogEntry) bool { return e.TimestampMS > limit })
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

// freshVersion is the version a new table's first metadata follows (-1:
// none): the highest of the metadata files already at the table's location (a table
// dropped from the catalog, its files kept), so that none of them, nor
// their v<N>.metadata.json copies, is written over.
func (t *Table) freshVersion(ctx context.Context) (int, error) {
	objs, err := t.o.Bucket.List(ctx, path.Join(t.o.KeyPrefix, "metadata")+"/", ".metadata.json")
	if err != nil {
		return 0, fmt.Errorf("iceberg table %s: list its metadata: %w", t.o.Ident, err)
	}
	v := -1
	for _, o := range objs {
		if strings.Count(strings.TrimPrefix(o.Key, path.Join(t.o.KeyPrefix, "metadata")+"/"), "/") == 0 {
			v = max(v, metadataVersion(o.Key))
		}
	}
	return v, nil
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
