package iceberg

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"

	"github.com/sellersnap/sellersnap/sinks"
)

// Key is the bucket key of the table's file at loc (a location inside the
// table's; others are refused).
func (t *Table) Key(loc string) (string, error) { return t.key(loc) }

// Reusable reports whether the Parquet file src already is a data file of
// p: the plan's columns, in order, with its field ids and types.
func (p *Plan) Reusable(src []byte) bool {
	rd, err := file.NewParquetReader(bytes.NewReader(src))
	if err != nil {
		return false
	}
	defer rd.Close()
	fr, err := pqarrow.NewFileReader(rd, pqarrow.ArrowReadProperties{}, memory.DefaultAllocator)
	if err != nil {
		return false
	}
	got, err := fr.Schema()
	if err != nil {
		return false
	}
	want := arrowSchema(p.schema, p.cols)
	if got.NumFields() != want.NumFields() {
		return false
	}
	for i, f := range want.Fields() {
		g := got.Field(i)
		gid, _ := g.Metadata.GetValue(FieldIDKey)
		wid, _ := f.Metadata.GetValue(FieldIDKey)
		if g.Name != f.Name || gid != wid || !arrow.TypeEqual(g.Type, f.Type) {
			return false
		}
	}
	return true
}

// Rebuild writes to w p's data file for partition values from the Parquet
// files srcs, in order (a data file of an earlier table, or an export's
// Parquet parts), their columns found by name, and returns the rows it
// wrote. A column missing from a file, or of another type, fails it
// naming the column.
func (p *Plan) Rebuild(ctx context.Context, srcs [][]byte, values []Value, w io.Writer, opts sinks.ParquetOptions) (int64, error) {
	enc, err := p.NewEncoder(w, values, opts)
	if err != nil {
		return 0, err
	}
	var rows int64
	for _, src := range srcs {
		n, err := p.copyRows(ctx, src, enc)
		if err != nil {
			return 0, err
		}
		rows += n
	}
	return rows, enc.Close()
}

func (p *Plan) copyRows(ctx context.Context, src []byte, enc *Encoder) (int64, error) {
	rd, err := file.NewParquetReader(bytes.NewReader(src))
	if err != nil {
		return 0, err
	}
	defer rd.Close()
	fr, err := pqarrow.NewFileReader(rd, pqarrow.ArrowReadProperties{BatchSize: 64 << 10}, memory.DefaultAllocator)
	if err != nil {
		return 0, err
	}
	have, err := fr.Schema()
	if err != nil {
		return 0, err
	}
	var idx []int
	var fields []arrow.Field
	for _, c := range p.layout.Columns {
		i := have.FieldIndices(c.Name)
		if len(i) != 1 {
			return 0, fmt.Errorf("column %s is not in the file", c.Name)
		}
		got := have.Field(i[0]).Type
		if !arrow.TypeEqual(got, c.Type) && (c.Type.ID() != arrow.INT16 || got.ID() != arrow.INT32) {
			return 0, fmt.Errorf("column %s is %s in the file, %s in the job's export now", c.Name, got, c.Type)
		}
		idx = append(idx, i[0])
		fields = append(fields, arrow.Field{Name: c.Name, Type: got, Nullable: true})
	}
	rr, err := fr.GetRecordReader(ctx, idx, nil)
	if err != nil {
		return 0, err
	}
	defer rr.Release()
	schema := arrow.NewSchema(fields, nil)
	var rows int64
	for rr.Next() {
		rec := rr.Record()
		out := array.NewRecord(schema, rec.Columns(), rec.NumRows())
		err := enc.Write(out)
		out.Release()
		if err != nil {
			return 0, err
		}
		rows += rec.NumRows()
	}
	if err := rr.Err(); err != nil && err != io.EOF {
		return 0, err
	}
	return rows, nil
}
