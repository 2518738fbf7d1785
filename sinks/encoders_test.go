package sinks_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/decimal128"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
	"go.uber.org/goleak"

	"github.com/sellersnap/sellersnap/internal/arrowmem"
	"github.com/sellersnap/sellersnap/internal/demodata"
	"github.com/sellersnap/sellersnap/sinks"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var tsUTC = &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}

func testSchema() *arrow.Schema {
	return arrow.NewSchema([]arrow.Field{
		{Name: "display_name", Type: arrow.BinaryTypes.String},
		{Name: "platform_id", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "times_seen", Type: arrow.PrimitiveTypes.Int32},
		{Name: "feedback_percent", Type: &arrow.Decimal128Type{Precision: 5, Scale: 2}, Nullable: true},
		{Name: "wide", Type: &arrow.Decimal128Type{Precision: 38, Scale: 10}, Nullable: true},
		{Name: "count64", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "flagged", Type: arrow.FixedWidthTypes.Boolean},
		{Name: "ratio", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
		{Name: "day", Type: arrow.FixedWidthTypes.Date32, Nullable: true},
		{Name: "created_at", Type: tsUTC},
	}, nil)
}

type row struct {
	name    string
	pid     *string
	times   int32
	percent *decimal128.Num
	wide    *decimal128.Num
	count   *int64
	flagged bool
	ratio   *float64
	day     *arrow.Date32
	created time.Time
}

func ptr[T any](v T) *T { return &v }

func testRows() []row {
	wide, _ := decimal128.FromString("-9999999999999999999999999999.9999999999", 38, 10)
	small, _ := decimal128.FromString("0.0000000001", 38, 10)
	rows := []row{
		{name: "plain", pid: ptr("P1"), times: 1, percent: ptr(decimal128.FromI64(9950)), wide: &wide, count: ptr(int64(math.MaxInt64)), flagged: true, ratio: ptr(0.1), day: ptr(arrow.Date32(-1)), created: time.Date(2026, 3, 1, 1, 1, 0, 1000, time.UTC)},
		{name: "", pid: ptr(""), times: math.MaxInt32, percent: ptr(decimal128.FromI64(-5)), wide: &small, count: ptr(int64(math.MinInt64)), ratio: ptr(math.NaN()), created: time.Date(1969, 12, 31, 23, 59, 59, 999999000, time.UTC)},
		{name: "x", times: math.MinInt32, ratio: ptr(math.Inf(-1)), day: ptr(arrow.Date32(2932896)), created: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{name: "=1+1", pid: ptr("@SUM(1)"), created: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	for i, h := range demodata.Hostile {
		rows = append(rows, row{name: h, pid: ptr(h), times: int32(i), created: time.Date(2262, 4, 12, 0, 0, 0, 1000, time.UTC)})
	}
	return rows
}

func buildRecord(t testing.TB, mem memory.Allocator, rows []row) arrow.Record {
	b := array.NewRecordBuilder(mem, testSchema())
	defer b.Release()
	for _, r := range rows {
		b.Field(0).(*array.StringBuilder).Append(r.name)
		appendOpt(b.Field(1).(*array.StringBuilder), r.pid)
		b.Field(2).(*array.Int32Builder).Append(r.times)
		appendOpt(b.Field(3).(*array.Decimal128Builder), r.percent)
		appendOpt(b.Field(4).(*array.Decimal128Builder), r.wide)
		appendOpt(b.Field(5).(*array.Int64Builder), r.count)
		b.Field(6).(*array.BooleanBuilder).Append(r.flagged)
		appendOpt(b.Field(7).(*array.Float64Builder), r.ratio)
		appendOpt(b.Field(8).(*array.Date32Builder), r.day)
		b.Field(9).(*array.TimestampBuilder).Append(arrow.Timestamp(r.created.UnixMicro()))
	}
	return b.NewRecord()
}

func appendOpt[T any](b interface {
	Append(T)
	AppendNull()
}, v *T) {
	if v == nil {
		b.AppendNull()
		return
	}
	b.Append(*v)
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from golden file:\n got: %q\nwant: %q", name, got, want)
	}
}

type encoder interface {
	Write(arrow.Record) error
	Close() error
}

func encode(t testing.TB, enc encoder, rec arrow.Record) {
	t.Helper()
	// Two writes of slices: state carried across records must not matter.
	half := rec.NumRows() / 2
	for _, s := range []arrow.Record{rec.NewSlice(0, half), rec.NewSlice(half, rec.NumRows())} {
		if err := enc.Write(s); err != nil {
			t.Fatal(err)
		}
		s.Release()
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestCSVGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts sinks.CSVOptions
	}{
		{"guarded.csv", sinks.CSVOptions{FormulaGuard: true}},
		{"unguarded.csv", sinks.CSVOptions{}},
		{"semicolon.csv", sinks.CSVOptions{FormulaGuard: true, Delimiter: ';'}},
		{"quoteall.csv", sinks.CSVOptions{QuoteAll: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
			defer mem.AssertSize(t, 0)
			rec := buildRecord(t, mem, testRows())
			defer rec.Release()
			var buf bytes.Buffer
			enc, err := sinks.NewCSV(&buf, rec.Schema(), tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			encode(t, enc, rec)
			golden(t, tc.name, buf.Bytes())

			// An independent parser reads back every text value exactly
			// (less the guard's quote).
			r := csv.NewReader(bytes.NewReader(buf.Bytes()))
			if tc.opts.Delimiter != 0 {
				r.Comma = rune(tc.opts.Delimiter)
			}
			records, err := r.ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			rows := testRows()
			if len(records) != len(rows)+1 {
				t.Fatalf("%d records, want %d", len(records), len(rows)+1)
			}
			for i, rw := range rows {
				got := records[i+1][0]
				want := rw.name
				if tc.opts.FormulaGuard && want != "" && (strings.ContainsRune("=+-@\t\r", rune(want[0])) || strings.ContainsAny(want[:min(3, len(want))], "＝＋－＠")) {
					want = "'" + want
				}
				if got != want && !(strings.Contains(want, "\r") && strings.ReplaceAll(want, "\r\n", "\n") == got) {
					// encoding/csv turns \r\n into \n inside quotes; anything else is a bug.
					t.Errorf("row %d: got %q, want %q", i, got, want)
				}
			}
		})
	}
}

func TestNDJSONGolden(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rec := buildRecord(t, mem, testRows())
	defer rec.Release()
	var buf bytes.Buffer
	enc, err := sinks.NewNDJSON(&buf, rec.Schema())
	if err != nil {
		t.Fatal(err)
	}
	encode(t, enc, rec)
	golden(t, "rows.ndjson", buf.Bytes())

	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	rows := testRows()
	if len(lines) != len(rows) {
		t.Fatalf("%d lines, want %d", len(lines), len(rows))
	}
	for i, line := range lines {
		d := json.NewDecoder(strings.NewReader(line))
		d.UseNumber()
		var obj map[string]any
		if err := d.Decode(&obj); err != nil {
			t.Fatalf("line %d: %v: %s", i, err, line)
		}
		if obj["display_name"] != rows[i].name {
			t.Errorf("line %d: display_name %q, want %q", i, obj["display_name"], rows[i].name)
		}
		if !strings.HasPrefix(line, `{"display_name":`) {
			t.Errorf("line %d: keys out of column order: %s", i, line)
		}
	}
	if !strings.Contains(lines[0], `"feedback_percent":99.50,`) || !strings.Contains(lines[0], `"wide":-9999999999999999999999999999.9999999999,`) {
		t.Errorf("decimals lost their scale: %s", lines[0])
	}
	if !strings.Contains(lines[0], `"created_at":"2026-03-01T01:01:00.000001Z"`) {
		t.Errorf("timestamp form: %s", lines[0])
	}
}

func TestParquetTypesAndRoundTrip(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rec := buildRecord(t, mem, testRows())
	defer rec.Release()
	var buf bytes.Buffer
	enc, err := sinks.NewParquet(&buf, rec.Schema(), sinks.ParquetOptions{RowGroupRows: 10})
	if err != nil {
		t.Fatal(err)
	}
	encode(t, enc, rec)

	pf, err := file.NewParquetReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	md := pf.MetaData()
	if md.GetCreatedBy() != sinks.CreatedBy {
		t.Errorf("created_by %q", md.GetCreatedBy())
	}
	// The Parquet spec gives the root no repetition or REQUIRED; Arrow Go
	// writes REPEATED by default, which strict readers (hyparquet) reject.
	if rep := md.Schema.Root().RepetitionType(); rep != parquet.Repetitions.Required {
		t.Errorf("root schema element is %s, want REQUIRED", rep)
	}
	if pf.NumRowGroups() != (len(testRows())+9)/10 {
		t.Errorf("%d row groups for %d rows at 10 per group", pf.NumRowGroups(), len(testRows()))
	}
	want := map[string]string{
		"display_name":     "String",
		"times_seen":       "Int(bitWidth=32, isSigned=true)",
		"feedback_percent": "Decimal(precision=5, scale=2)",
		"wide":             "Decimal(precision=38, scale=10)",
		"flagged":          "None",
		"created_at":       "Timestamp(isAdjustedToUTC=true, timeUnit=microseconds, is_from_converted_type=false, force_set_converted_type=false)",
		"day":              "Date",
	}
	phys := map[string]string{"feedback_percent": "INT32", "times_seen": "INT32", "created_at": "INT64", "flagged": "BOOLEAN", "display_name": "BYTE_ARRAY"}
	sc := md.Schema
	for i := 0; i < sc.NumColumns(); i++ {
		col := sc.Column(i)
		if w, ok := want[col.Name()]; ok && col.LogicalType().String() != w {
			t.Errorf("%s: logical type %s, want %s", col.Name(), col.LogicalType(), w)
		}
		if w, ok := phys[col.Name()]; ok && col.PhysicalType().String() != w {
			t.Errorf("%s: physical type %s, want %s", col.Name(), col.PhysicalType(), w)
		}
		if col.Name() == "display_name" && col.SchemaNode().RepetitionType() != 0 /* REQUIRED */ {
			t.Errorf("non-nullable column is not REQUIRED")
		}
	}

	tbl := readTable(t, pf, mem)
	defer tbl.Release()
	got := array.NewTableReader(tbl, -1)
	defer got.Release()
	var n int64
	for got.Next() {
		r := got.Record()
		for c := 0; c < int(r.NumCols()); c++ {
			exp := rec.Column(c)
			slice := array.NewSlice(exp, n, n+r.NumRows())
			if !array.ApproxEqual(slice, r.Column(c), array.WithNaNsEqual(true), array.WithAbsTolerance(0)) {
				t.Errorf("column %s differs after round trip", rec.ColumnName(c))
			}
			slice.Release()
		}
		n += r.NumRows()
	}
	if n != rec.NumRows() {
		t.Errorf("read %d rows, want %d", n, rec.NumRows())
	}
}

func TestDeterministicOutput(t *testing.T) {
	mem := memory.NewGoAllocator()
	rec := buildRecord(t, mem, testRows())
	defer rec.Release()
	run := func() [][]byte {
		var outs [][]byte
		for _, comp := range []string{"gzip", "zstd"} {
			var buf bytes.Buffer
			zw, err := sinks.NewCompressor(&buf, comp)
			if err != nil {
				t.Fatal(err)
			}
			enc, _ := sinks.NewCSV(zw, rec.Schema(), sinks.CSVOptions{})
			encode(t, enc, rec)
			if err := zw.Close(); err != nil {
				t.Fatal(err)
			}
			outs = append(outs, buf.Bytes())
		}
		var pq bytes.Buffer
		enc, _ := sinks.NewParquet(&pq, rec.Schema(), sinks.ParquetOptions{})
		encode(t, enc, rec)
		return append(outs, pq.Bytes())
	}
	a, b := run(), run()
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			t.Errorf("output %d differs between identical runs", i)
		}
	}
	if a[0][4] != 0 || a[0][5] != 0 || a[0][6] != 0 || a[0][7] != 0 {
		t.Errorf("gzip header carries an mtime: % x", a[0][:10])
	}
}

func TestEncoderErrorsAreSticky(t *testing.T) {
	rec := buildRecord(t, memory.NewGoAllocator(), testRows())
	defer rec.Release()
	enc, _ := sinks.NewCSV(failingWriter{}, rec.Schema(), sinks.CSVOptions{})
	for i := 0; i < 20000; i++ {
		if err := enc.Write(rec); err != nil {
			break
		}
	}
	if err := enc.Close(); err == nil {
		t.Fatal("Close after a failed write returned nil")
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, io.ErrShortWrite }

func stringRecord(mem memory.Allocator, vals ...string) arrow.Record {
	sc := arrow.NewSchema([]arrow.Field{{Name: "a", Type: arrow.BinaryTypes.String}, {Name: "b", Type: arrow.BinaryTypes.String, Nullable: true}}, nil)
	b := array.NewRecordBuilder(mem, sc)
	defer b.Release()
	for _, v := range vals {
		b.Field(0).(*array.StringBuilder).Append(v)
		b.Field(1).(*array.StringBuilder).Append(v + ",")
	}
	return b.NewRecord()
}

func FuzzCSV(f *testing.F) {
	for _, h := range demodata.Hostile {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			t.Skip() // the source rejects invalid UTF-8
		}
		rec := stringRecord(memory.NewGoAllocator(), s)
		defer rec.Release()
		var buf bytes.Buffer
		enc, _ := sinks.NewCSV(&buf, rec.Schema(), sinks.CSVOptions{})
		if err := enc.Write(rec); err != nil {
			t.Fatal(err)
		}
		enc.Close()
		recs, err := csv.NewReader(&buf).ReadAll()
		if err != nil {
			t.Fatalf("unparsable CSV for %q: %v", s, err)
		}
		norm := strings.ReplaceAll(s, "\r\n", "\n") // encoding/csv's own normalisation
		if len(recs) != 2 || (recs[1][0] != s && recs[1][0] != norm) || (recs[1][1] != s+"," && recs[1][1] != norm+",") {
			t.Fatalf("round trip of %q gave %q", s, recs)
		}
	})
}

func FuzzNDJSON(f *testing.F) {
	for _, h := range demodata.Hostile {
		f.Add(h)
	}
	f.Add("\xff\xfe invalid")
	f.Fuzz(func(t *testing.T, s string) {
		rec := stringRecord(memory.NewGoAllocator(), s)
		defer rec.Release()
		var buf bytes.Buffer
		enc, _ := sinks.NewNDJSON(&buf, rec.Schema())
		if err := enc.Write(rec); err != nil {
			t.Fatal(err)
		}
		enc.Close()
		line := buf.Bytes()
		if bytes.Count(line, []byte("\n")) != 1 || !json.Valid(line) {
			t.Fatalf("invalid NDJSON line for %q: %q", s, line)
		}
		var obj struct{ A, B string }
		if err := json.Unmarshal(line, &obj); err != nil {
			t.Fatal(err)
		}
		if utf8.ValidString(s) && (obj.A != s || obj.B != s+",") {
			t.Fatalf("round trip of %q gave %q", s, obj.A)
		}
	})
}

// TestParquetDoesNotReadReleasedRecords writes many small records into
// shared row groups, releasing each as soon as it is written, with the
// records on a buffer pool (which poisons what it takes back and hands it
// out again) and Arrow's default allocator set to one, as the binary does;
// and again with Go's allocator everywhere, which never reuses memory that
// is still referenced. The files must be the same bytes: a page, statistic
// or dictionary that kept pointing into a released record would differ.
// (Arrow Go v17 keeps byte-array and fixed-length statistics as slices of
// the values written, apache/arrow-go#917: string statistics are off and
// the writer's own buffers stay on Go's allocator for that reason.)
func TestParquetDoesNotReadReleasedRecords(t *testing.T) {
	write := func(mem memory.Allocator) []byte {
		var buf bytes.Buffer
		enc, err := sinks.NewParquet(&buf, testSchema(), sinks.ParquetOptions{RowGroupRows: 500})
		if err != nil {
			t.Fatal(err)
		}
		for batch := range 40 {
			rows := testRows()
			for i := range rows {
				// Values unique per batch, the smallest and largest in the
				// first batches, so statistics point into old records.
				prefix := map[int]string{0: "a", 1: "z"}[batch]
				rows[i].name = fmt.Sprintf("%sm-%04d-%s", prefix, batch, rows[i].name)
				rows[i].times += int32(batch)
				wide := decimal128.FromI64(int64(batch*1000 + i))
				if batch == 0 && i == 0 {
					wide = decimal128.FromI64(-1)
				}
				rows[i].wide = &wide
			}
			rec := buildRecord(t, mem, rows)
			if err := enc.Write(rec); err != nil {
				t.Fatal(err)
			}
			rec.Release()
		}
		if err := enc.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	def := memory.DefaultAllocator
	memory.DefaultAllocator = memory.NewGoAllocator()
	want := write(memory.DefaultAllocator)
	memory.DefaultAllocator = arrowmem.New(arrowmem.MaxKept)
	pool := memory.NewCheckedAllocator(arrowmem.New(arrowmem.MaxKept))
	got := write(pool)
	memory.DefaultAllocator = def
	pool.AssertSize(t, 0)
	if !bytes.Equal(got, want) {
		t.Fatalf("Parquet written from pooled records differs from Go's allocator (%d vs %d bytes): something read a released buffer", len(got), len(want))
	}
}

// readTable reads a whole Parquet file through pqarrow.
func readTable(t *testing.T, pf *file.Reader, mem memory.Allocator) arrow.Table {
	t.Helper()
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{}, mem)
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := fr.ReadTable(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}
