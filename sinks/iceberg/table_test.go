package iceberg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
	"go.uber.org/goleak"
	_ "gocloud.dev/blob/fileblob"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/sinks"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

type fixture struct {
	dir    string
	bucket *sinks.Bucket
	cat    *Catalog
	opts   Options
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	b, err := sinks.OpenBucket(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	cat, err := OpenCatalog(ctx, pgtest.NewEmptyDatabase(t), "sellersnap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cat.Close)
	if err := cat.Ensure(ctx, "ns"); err != nil {
		t.Fatal(err)
	}
	return &fixture{dir: dir, bucket: b, cat: cat, opts: Options{Catalog: cat, Ident: Ident{"ns", "sellers"}, Bucket: b,
		KeyPrefix: "iceberg/ns/sellers", Location: "file://" + dir + "/iceberg/ns/sellers"}}
}

func (f *fixture) table(t *testing.T, mod func(*Options)) *Table {
	t.Helper()
	o := f.opts
	if mod != nil {
		mod(&o)
	}
	tb, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

var layout = Layout{
	Columns:   []Column{{"name", arrow.BinaryTypes.String}, {"seen", arrow.PrimitiveTypes.Int16}},
	Partition: []Column{{"org", arrow.BinaryTypes.String}, {"date", arrow.FixedWidthTypes.Date32}, {"run", arrow.BinaryTypes.String}},
}

func day(s string) time.Time {
	d, _ := time.Parse(time.DateOnly, s)
	return d
}

// write writes a data file of rows rows for the partition and commits it.
func write(t *testing.T, tb *Table, l Layout, values []Value, rows int, props map[string]string) *Commit {
	t.Helper()
	ctx := context.Background()
	p, err := tb.Prepare(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc, err := p.NewEncoder(&buf, values, sinks.ParquetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mem := memory.NewGoAllocator()
	nb, sb := array.NewStringBuilder(mem), array.NewInt16Builder(mem)
	for i := 0; i < rows; i++ {
		nb.Append(fmt.Sprintf("seller %d", i))
		sb.Append(int16(i))
	}
	na, sa := nb.NewArray(), sb.NewArray()
	rec := array.NewRecord(arrow.NewSchema([]arrow.Field{{Name: "name", Type: arrow.BinaryTypes.String, Nullable: true}, {Name: "seen", Type: arrow.PrimitiveTypes.Int16, Nullable: true}}, nil),
		[]arrow.Array{na, sa}, int64(rows))
	if err := enc.Write(rec); err != nil {
		t.Fatal(err)
	}
	rec.Release()
	na.Release()
	sa.Release()
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	key := p.DataKey(values)
	if err := tb.o.Bucket.Put(ctx, key, buf.Bytes(), "application/vnd.apache.parquet", nil); err != nil {
		t.Fatal(err)
	}
	c, err := p.Commit(ctx, DataFile{Key: key, Bytes: int64(buf.Len()), Rows: int64(rows), Values: values}, props)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// live lists the current snapshot's data files by partition.
func live(t *testing.T, tb *Table) (map[string][]entry, *Metadata) {
	t.Helper()
	ctx := context.Background()
	md, _, err := tb.head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]entry{}
	cur := md.Current()
	if cur == nil {
		return out, md
	}
	list, err := tb.manifestList(ctx, cur.ManifestList)
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range list {
		es, err := tb.manifest(ctx, mf)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Status != statusDeleted {
				k := partitionKey(*md.Spec(), e.DataFile.Partition)
				out[k] = append(out[k], e)
			}
		}
	}
	return out, md
}

func TestACommitReplacesItsPartitionOnly(t *testing.T) {
	f := newFixture(t)
	tb := f.table(t, nil)
	a := []Value{"org-a", day("2026-12-01"), "run-1"}
	b := []Value{"org-a", day("2026-12-01"), "run-2"}
	c1 := write(t, tb, layout, a, 10, map[string]string{"sellersnap.unit": "run-1"})
	c2 := write(t, tb, layout, b, 20, nil)
	c3 := write(t, tb, layout, a, 5, map[string]string{"sellersnap.rerun-id": "r1"})
	if c1.Operation != "append" || c2.Operation != "append" || c3.Operation != "overwrite" || c3.Replaced != 1 {
		t.Fatalf("operations %s %s %s (replaced %d), want append append overwrite (1)", c1.Operation, c2.Operation, c3.Operation, c3.Replaced)
	}
	files, md := live(t, tb)
	if len(files) != 2 {
		t.Fatalf("%d partitions live, want 2", len(files))
	}
	var rows int64
	for k, es := range files {
		if len(es) != 1 {
			t.Errorf("partition %q has %d files", k, len(es))
		}
		rows += es[0].DataFile.RecordCount
	}
	cur := md.Current()
	if rows != 25 || cur.Summary["total-records"] != "25" || cur.Summary["deleted-records"] != "10" || cur.Summary["sellersnap.rerun-id"] != "r1" {
		t.Errorf("rows %d, summary %v", rows, cur.Summary)
	}
	if len(md.Snapshots) != 3 || *md.Snapshots[2].ParentID != md.Snapshots[1].ID || md.LastSequenceNumber != 3 {
		t.Errorf("snapshots are not a chain: %+v", md.Snapshots)
	}
	// Bucket-only readers: version-hint.text names the catalog's version.
	hint, err := os.ReadFile(filepath.Join(f.dir, "iceberg/ns/sellers/metadata/version-hint.text"))
	if err != nil || string(hint) != "3" {
		t.Fatalf("version-hint.text %q, %v", hint, err)
	}
	v3, err := os.ReadFile(filepath.Join(f.dir, "iceberg/ns/sellers/metadata/v3.metadata.json"))
	if err != nil {
		t.Fatal(err)
	}
	loc, _ := f.cat.Location(context.Background(), tb.Ident())
	head, _ := os.ReadFile(strings.TrimPrefix(loc, "file://"))
	if !bytes.Equal(v3, head) {
		t.Error("v3.metadata.json differs from the catalog's metadata")
	}
	// The data file holds every column with its field id, the partition
	// columns included, and int16 widened to int32.
	for _, es := range files {
		b, err := os.ReadFile(strings.TrimPrefix(es[0].DataFile.FilePath, "file://"))
		if err != nil {
			t.Fatal(err)
		}
		rd, err := file.NewParquetReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		sc := rd.MetaData().Schema
		var got []string
		for i := 0; i < sc.NumColumns(); i++ {
			c := sc.Column(i)
			got = append(got, fmt.Sprintf("%s:%d:%s", c.Name(), c.SchemaNode().FieldID(), c.PhysicalType()))
		}
		want := "name:1:BYTE_ARRAY seen:2:INT32 org:3:BYTE_ARRAY date:4:INT32 run:5:BYTE_ARRAY"
		if strings.Join(got, " ") != want {
			t.Errorf("columns %v, want %s", got, want)
		}
		fr, err := pqarrow.NewFileReader(rd, pqarrow.ArrowReadProperties{}, memory.DefaultAllocator)
		if err != nil {
			t.Fatal(err)
		}
		tbl, err := fr.ReadTable(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if tbl.NumRows() != es[0].DataFile.RecordCount {
			t.Errorf("file has %d rows, manifest says %d", tbl.NumRows(), es[0].DataFile.RecordCount)
		}
		tbl.Release()
		rd.Close()
	}
}

func TestConcurrentCommitsAreAllKept(t *testing.T) {
	f := newFixture(t)
	var wg sync.WaitGroup
	const writers, each = 3, 8
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tb := f.table(t, func(o *Options) { o.MergeMin = 4 }) // a replica each
			for i := 0; i < each; i++ {
				// Writer 0 and 1 also commit the same partitions: a repeat
				// replaces, never doubles.
				run := fmt.Sprintf("w%d-%d", w, i)
				if w == 1 && i%2 == 0 {
					run = fmt.Sprintf("w0-%d", i)
				}
				write(t, tb, layout, []Value{"org", day("2026-12-0" + fmt.Sprint(1+i%3)), run}, 3, nil)
			}
		}()
	}
	wg.Wait()
	tb := f.table(t, nil)
	files, md := live(t, tb)
	wantParts := writers*each - each/2
	if len(files) != wantParts {
		t.Errorf("%d partitions live, want %d", len(files), wantParts)
	}
	for k, es := range files {
		if len(es) != 1 {
			t.Errorf("partition %q has %d live files", k, len(es))
		}
	}
	if len(md.Snapshots) != writers*each {
		t.Errorf("%d snapshots, want %d: a commit was lost", len(md.Snapshots), writers*each)
	}
	list, _ := tb.manifestList(context.Background(), md.Current().ManifestList)
	if len(list) > 3*4+1 {
		t.Errorf("%d manifests after %d commits over 3 dates with MergeMin 4: not merged", len(list), writers*each)
	}
}

func TestCatalogPointingOutsideTheTableIsRefused(t *testing.T) {
	f := newFixture(t)
	tb := f.table(t, nil)
	write(t, tb, layout, []Value{"o", day("2026-12-01"), "r"}, 1, nil)
	planted := filepath.Join(f.dir, "elsewhere.metadata.json")
	loc, _ := f.cat.Location(context.Background(), tb.Ident())
	b, _ := os.ReadFile(strings.TrimPrefix(loc, "file://"))
	os.WriteFile(planted, b, 0o644)
	if _, err := f.cat.pool.Exec(context.Background(), `UPDATE iceberg_tables SET metadata_location = $1`, "file://"+planted); err != nil {
		t.Fatal(err)
	}
	_, err := f.table(t, nil).Prepare(context.Background(), layout)
	if err == nil || !strings.Contains(err.Error(), "is not a file of the table") {
		t.Fatalf("err %v, want a refusal", err)
	}
}

func TestSchemaChange(t *testing.T) {
	f := newFixture(t)
	tb := f.table(t, nil)
	write(t, tb, layout, []Value{"o", day("2026-12-01"), "r"}, 1, nil)
	wider := layout
	wider.Columns = []Column{{"name", arrow.BinaryTypes.String}, {"seen", arrow.PrimitiveTypes.Int64}, {"flag", arrow.FixedWidthTypes.Boolean}}
	_, err := tb.Prepare(context.Background(), wider)
	var sce *SchemaChangeError
	if !errors.As(err, &sce) || !strings.Contains(sce.Change, "+ flag boolean") || !strings.Contains(sce.Change, "~ seen: int → long") {
		t.Fatalf("err %v, want a SchemaChangeError naming the change", err)
	}
	wider.Evolve = true
	p, err := tb.Prepare(context.Background(), wider)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for _, fl := range p.schema.Fields {
		ids[fl.Name] = fl.ID
	}
	// seen keeps its id (int → long is a promotion); flag is new (6).
	if ids["name"] != 1 || ids["seen"] != 2 || ids["org"] != 3 || ids["flag"] != 6 {
		t.Errorf("field ids %v", ids)
	}
}

// TestHostileCatalogRows: a view of the table's name, or a row without a
// metadata location, fails the commit naming it; nothing is committed
// over it.
func TestHostileCatalogRows(t *testing.T) {
	for _, tc := range []struct{ name, row, want string }{
		{"view", `INSERT INTO iceberg_tables VALUES ('sellersnap', 'ns', 'sellers', 'file:///x/v.metadata.json', NULL, 'VIEW')`, "is a view, not a table"},
		{"no location", `INSERT INTO iceberg_tables VALUES ('sellersnap', 'ns', 'sellers', NULL, NULL, 'TABLE')`, "has no metadata_location"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if _, err := f.cat.pool.Exec(context.Background(), tc.row); err != nil {
				t.Fatal(err)
			}
			tb := f.table(t, nil)
			p, err := tb.Prepare(context.Background(), layout)
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.Commit(context.Background(), DataFile{Key: "iceberg/ns/sellers/data/x.parquet", Bytes: 1, Rows: 1, Values: []Value{"o", day("2026-12-01"), "r"}}, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

// TestSnapshotLogStaysInOrderWhateverTheClocks: replicas whose clocks
// disagree by hours commit in turn; the snapshot log and the metadata log
// never go back by more than Java tolerates (it refuses metadata whose
// logs do): within a minute a commit is dated after the head; a replica
// further behind takes the later entries out of the logs and dates its
// commit by its own clock, never by the head's (TestOtherWritersNeverStopTheJob).
// Without a clock of its own the table takes the catalog database's.
func TestSnapshotLogStaysInOrderWhateverTheClocks(t *testing.T) {
	f := newFixture(t)
	real := time.Now()
	ahead := f.table(t, func(o *Options) { o.Now = func() time.Time { return real.Add(3 * time.Hour) } })
	behind := f.table(t, func(o *Options) { o.Now = func() time.Time { return real.Add(-3 * time.Hour) } })
	skewed := f.table(t, func(o *Options) { o.Now = func() time.Time { return time.Now().Add(-30 * time.Second) } })
	dbClock := f.table(t, nil)
	for i, tb := range []*Table{behind, ahead, behind, dbClock, skewed, dbClock, ahead, behind} {
		write(t, tb, layout, []Value{"o", day("2026-12-01"), fmt.Sprint("r", i)}, 1, nil)
		md, _, err := dbClock.head(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		checkLogs(t, md)
		if got := md.Current().TimestampMS; i == 4 && got <= md.SnapshotLog[len(md.SnapshotLog)-2].TimestampMS {
			t.Errorf("a commit 30 s behind the head is dated %d, not after it", got)
		}
	}
}

// TestTwoSpecsInOneProcess: a daemon with a per_run and a full job writes
// manifests of two partition specs whose Avro records share their names
// (r102); each table's manifests keep their own partition fields.
func TestTwoSpecsInOneProcess(t *testing.T) {
	f := newFixture(t)
	runs := f.table(t, nil)
	full := f.table(t, func(o *Options) {
		o.Ident.Table, o.KeyPrefix, o.Location = "full", "iceberg/ns/full", "file://"+f.dir+"/iceberg/ns/full"
	})
	byOrg := Layout{Columns: layout.Columns, Partition: layout.Partition[:2]}
	for i := 0; i < 2; i++ {
		write(t, runs, layout, []Value{"o", day("2026-12-01"), fmt.Sprint("r", i)}, 2, nil)
		write(t, full, byOrg, []Value{fmt.Sprint("o", i), day("2026-12-01")}, 3, nil)
	}
	for _, tc := range []struct {
		tb     *Table
		fields int
	}{{runs, 3}, {full, 2}} {
		fresh := f.table(t, func(o *Options) {
			o.Ident, o.KeyPrefix, o.Location = tc.tb.o.Ident, tc.tb.o.KeyPrefix, tc.tb.o.Location
		})
		files, md := live(t, fresh)
		if len(files) != 2 || len(md.Spec().Fields) != tc.fields {
			t.Errorf("%s: %d partitions, spec %v", tc.tb.Ident(), len(files), md.Spec())
		}
		for k, es := range files {
			if len(es[0].DataFile.Partition) != tc.fields {
				t.Errorf("%s: partition %q read as %v", tc.tb.Ident(), k, es[0].DataFile.Partition)
			}
		}
	}
}

// TestReplicasCreateTheCatalogAtOnce: replicas starting together (and a
// daemon's dependency check beside its first export) create the catalog's
// tables at the same moment: none fails.
func TestReplicasCreateTheCatalogAtOnce(t *testing.T) {
	for round := 0; round < 5; round++ {
		dsn := pgtest.NewEmptyDatabase(t)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cat, err := OpenCatalog(context.Background(), dsn, "sellersnap")
				if err == nil {
					err = cat.Ensure(context.Background(), "ns")
					cat.Close()
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
}
