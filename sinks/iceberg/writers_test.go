package iceberg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
)

// commitAs makes a commit another writer would: change edits the head's
// metadata, which becomes the table's next version through the catalog.
func commitAs(t *testing.T, f *fixture, tb *Table, change func(md *Metadata)) {
	t.Helper()
	ctx := context.Background()
	md, loc, err := tb.head(ctx)
	if err != nil || md == nil {
		t.Fatalf("head: %v", err)
	}
	md = md.clone()
	md.MetadataLog = append(md.MetadataLog, metadataLogEntry{TimestampMS: md.LastUpdatedMS, MetadataFile: loc})
	change(md)
	b, err := md.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	next := filepath.Join(f.dir, "iceberg/ns/sellers/metadata", fmt.Sprintf("%05d-other-writer.metadata.json", metadataVersion(loc)+1))
	if err := os.WriteFile(next, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cat.pool.Exec(ctx, `UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2`, "file://"+next, loc); err != nil {
		t.Fatal(err)
	}
}

// TestTypesAreComparedByMeaning: the spellings other writers give the
// types sellersnap writes are the same types: no schema change.
func TestTypesAreComparedByMeaning(t *testing.T) {
	price := []Column{{"price", &arrow.Decimal128Type{Precision: 5, Scale: 2}}, {"at", arrow.FixedWidthTypes.Timestamp_us}}
	for _, spelled := range [][2]string{
		{`"decimal(5,2)"`, `"timestamptz"`},  // Java
		{`"decimal(5, 2)"`, `"timestamptz"`}, // pyiceberg, iceberg-go
		{`"Decimal(5 ,2)"`, `"TimestampTZ"`}, // any case, any spaces
		{`"decimal( 5, 2 )"`, `"timestamptz"`},
	} {
		cur := &Schema{Type: "struct", ID: 3, Fields: []Field{
			{ID: 1, Name: "price", Type: json.RawMessage(spelled[0]), Doc: "another writer's doc"},
			{ID: 2, Name: "at", Type: json.RawMessage(spelled[1])}}}
		s, _, changed, foreign, err := evolve(cur, 2, price)
		if err != nil || changed || len(foreign) > 0 || s != cur {
			t.Errorf("%v: changed %v, foreign %v, err %v; want the table's schema as it is", spelled, changed, foreign, err)
		}
	}
	cur := &Schema{Type: "struct", Fields: []Field{{ID: 1, Name: "price", Type: json.RawMessage(`"decimal(6, 2)"`)}}}
	if _, _, changed, _, _ := evolve(cur, 1, price[:1]); !changed {
		t.Error("decimal(6, 2) taken for decimal(5,2)")
	}
}

// TestOtherWritersNeverStopTheJob: another writer's column, properties,
// refs and snapshots are kept by the next commit (evolve), or the commit
// fails naming the column (fail); a head dated a day ahead is reported and
// the next commit is dated by the catalog's clock, with logs in order.
func TestOtherWritersNeverStopTheJob(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	tb := f.table(t, nil)
	write(t, tb, layout, []Value{"o", day("2026-12-01"), "r1"}, 3, nil)
	var otherSnap int64
	commitAs(t, f, tb, func(md *Metadata) {
		s := *md.Schema()
		s.ID = 1
		s.Fields = append(slices.Clone(s.Fields), Field{ID: md.LastColumnID + 1, Name: "note", Type: json.RawMessage(`"string"`), Doc: "the analysts'"})
		md.Schemas = append(md.Schemas, &s)
		md.CurrentSchemaID, md.LastColumnID = 1, md.LastColumnID+1
		md.Properties["owner.team"] = "analytics"
		md.Refs["audit"] = json.RawMessage(fmt.Sprintf(`{"snapshot-id":%d,"type":"tag"}`, *md.CurrentSnapshotID))
		otherSnap = *md.CurrentSnapshotID
	})

	strict := f.table(t, nil)
	_, err := strict.Prepare(ctx, layout)
	var sce *SchemaChangeError
	if !errors.As(err, &sce) || !strings.Contains(sce.Error(), "column note string") {
		t.Fatalf("on_schema_change fail: err %v, want a schema change naming the column note", err)
	}

	evolving := layout
	evolving.Evolve = true
	write(t, tb, evolving, []Value{"o", day("2026-12-02"), "r2"}, 2, nil)
	files, md := live(t, tb)
	if len(files) != 2 {
		t.Errorf("%d partitions live, want 2", len(files))
	}
	s := md.Schema()
	if n, ok := s.field("note"); !ok || n.Doc != "the analysts'" || n.ID != 6 {
		t.Errorf("schema %+v: another writer's column note dropped or changed", s.Fields)
	}
	if md.Properties["owner.team"] != "analytics" || md.Refs["audit"] == nil || md.snapshot(otherSnap) == nil {
		t.Errorf("properties %v, refs %v: another writer's property, tag or snapshot dropped", md.Properties, md.Refs)
	}

	// A head a day ahead: the other writer's clock.
	dayAhead := time.Now().Add(24 * time.Hour).UnixMilli()
	commitAs(t, f, tb, func(md *Metadata) {
		cur := *md.Current()
		cur.TimestampMS = dayAhead
		md.Snapshots[len(md.Snapshots)-1] = &cur
		md.SnapshotLog[len(md.SnapshotLog)-1].TimestampMS = dayAhead
		md.LastUpdatedMS = dayAhead
	})
	before := time.Now()
	c := write(t, tb, evolving, []Value{"o", day("2026-12-03"), "r3"}, 1, nil)
	if c.HeadAhead < 23*time.Hour {
		t.Errorf("HeadAhead %v, want about a day", c.HeadAhead)
	}
	_, md = live(t, tb)
	ours := md.Current()
	if at := time.UnixMilli(ours.TimestampMS); at.Before(before.Add(-time.Minute)) || at.After(time.Now().Add(time.Minute)) {
		t.Errorf("the commit is dated %v, not now", at)
	}
	if md.LastUpdatedMS != ours.TimestampMS {
		t.Errorf("last-updated-ms %d, the snapshot's %d", md.LastUpdatedMS, ours.TimestampMS)
	}
	checkLogs(t, md)
	if c := write(t, tb, evolving, []Value{"o", day("2026-12-04"), "r4"}, 1, nil); c.HeadAhead != 0 {
		t.Errorf("the next commit: HeadAhead %v, want 0", c.HeadAhead)
	}
	_, md = live(t, tb)
	checkLogs(t, md)
	if len(md.Snapshots) != 4 { // r1 to r4: the other writer's commits added none
		t.Errorf("%d snapshots, want all 4", len(md.Snapshots))
	}
}

// checkLogs fails t where md's logs break what Java checks: no entry more
// than a minute before the one it follows, last-updated-ms not before the
// last entry of either.
func checkLogs(t *testing.T, md *Metadata) {
	t.Helper()
	const minute = int64(60_000)
	for i := 1; i < len(md.SnapshotLog); i++ {
		if md.SnapshotLog[i].TimestampMS-md.SnapshotLog[i-1].TimestampMS < -minute {
			t.Errorf("snapshot log goes back at %d: %v", i, md.SnapshotLog)
		}
	}
	for i := 1; i < len(md.MetadataLog); i++ {
		if md.MetadataLog[i].TimestampMS-md.MetadataLog[i-1].TimestampMS < -minute {
			t.Errorf("metadata log goes back at %d", i)
		}
	}
	if n := len(md.SnapshotLog); n > 0 && md.LastUpdatedMS-md.SnapshotLog[n-1].TimestampMS < -minute {
		t.Error("last-updated-ms before the last snapshot log entry")
	}
	if n := len(md.MetadataLog); n > 0 && md.LastUpdatedMS-md.MetadataLog[n-1].TimestampMS < -minute {
		t.Error("last-updated-ms before the last metadata log entry")
	}
}
