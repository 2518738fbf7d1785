package iceberg

import (
	"fmt"
	"io"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"

	"github.com/sellersnap/sellersnap/sinks"
)

// Encoder writes the table's data file of one partition: the exported
// columns (int16 widened to int32, as Iceberg has no 16-bit integer) and
// the partition columns, each field with its Iceberg field id. Readers
// that fill nothing in from the partition spec read every column from the
// file.
type Encoder struct {
	pq     *sinks.Parquet
	schema *arrow.Schema
	ncols  int
	values []Value
	mem    memory.Allocator
	// consts are the partition columns for the largest record so far: each
	// record gets a slice of them, not arrays built row by row again.
	consts []arrow.Array
}

// NewEncoder returns the encoder of a data file of p's table with
// partition values (in the layout's order) written to w.
func (p *Plan) NewEncoder(w io.Writer, values []Value, opts sinks.ParquetOptions) (*Encoder, error) {
	if len(values) != len(p.layout.Partition) {
		return nil, fmt.Errorf("iceberg: %d partition values for %d partition columns", len(values), len(p.layout.Partition))
	}
	schema := arrowSchema(p.schema, p.cols)
	pq, err := sinks.NewParquet(w, schema, opts)
	if err != nil {
		return nil, err
	}
	return &Encoder{pq: pq, schema: schema, ncols: len(p.layout.Columns), values: values, mem: memory.DefaultAllocator}, nil
}

// Write writes rec, whose columns are the layout's exported columns.
func (e *Encoder) Write(rec arrow.Record) error {
	if int(rec.NumCols()) != e.ncols {
		return fmt.Errorf("iceberg: record of %d columns, want %d", rec.NumCols(), e.ncols)
	}
	n := int(rec.NumRows())
	arrs := make([]arrow.Array, 0, e.schema.NumFields())
	var release []arrow.Array
	defer func() {
		for _, a := range release {
			a.Release()
		}
	}()
	for i := 0; i < e.ncols; i++ {
		a := rec.Column(i)
		if a.DataType().ID() == arrow.INT16 {
			a = widen(e.mem, a.(*array.Int16))
			release = append(release, a)
		}
		arrs = append(arrs, a)
	}
	if len(e.consts) == 0 || e.consts[0].Len() < n {
		e.releaseConsts()
		for i, v := range e.values {
			a, err := constant(e.mem, e.schema.Field(e.ncols+i).Type, v, n)
			if err != nil {
				return err
			}
			e.consts = append(e.consts, a)
		}
	}
	for _, c := range e.consts {
		a := array.NewSlice(c, 0, int64(n))
		release = append(release, a)
		arrs = append(arrs, a)
	}
	out := array.NewRecord(e.schema, arrs, int64(n))
	defer out.Release()
	return e.pq.Write(out)
}

// Close writes the footer; it does not close the writer under it.
func (e *Encoder) Close() error {
	e.releaseConsts()
	return e.pq.Close()
}

func (e *Encoder) releaseConsts() {
	for _, c := range e.consts {
		c.Release()
	}
	e.consts = nil
}

func widen(mem memory.Allocator, a *array.Int16) arrow.Array {
	b := array.NewInt32Builder(mem)
	defer b.Release()
	b.Reserve(a.Len())
	for i := 0; i < a.Len(); i++ {
		if a.IsNull(i) {
			b.AppendNull()
		} else {
			b.UnsafeAppend(int32(a.Value(i)))
		}
	}
	return b.NewArray()
}

// constant is an array of n copies of v.
func constant(mem memory.Allocator, t arrow.DataType, v Value, n int) (arrow.Array, error) {
	switch t.ID() {
	case arrow.STRING:
		b := array.NewStringBuilder(mem)
		defer b.Release()
		s, ok := v.(string)
		if v != nil && !ok {
			return nil, fmt.Errorf("iceberg: partition value %v is not a string", v)
		}
		b.Reserve(n)
		b.ReserveData(n * len(s))
		for i := 0; i < n; i++ {
			if v == nil {
				b.AppendNull()
			} else {
				b.Append(s)
			}
		}
		return b.NewArray(), nil
	case arrow.DATE32:
		b := array.NewDate32Builder(mem)
		defer b.Release()
		d, ok := v.(time.Time)
		if v != nil && !ok {
			return nil, fmt.Errorf("iceberg: partition value %v is not a date", v)
		}
		b.Reserve(n)
		for i := 0; i < n; i++ {
			if v == nil {
				b.AppendNull()
			} else {
				b.UnsafeAppend(arrow.Date32FromTime(d))
			}
		}
		return b.NewArray(), nil
	}
	return nil, fmt.Errorf("iceberg: partition column of type %s", t)
}
