package sources

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/jackc/pgx/v5/pgtype"
)

// BenchmarkDecode decodes binary wire values of the nine default columns
// into Arrow builders, 2048 rows per record, as Reader.Next does.
func BenchmarkDecode(b *testing.B) {
	type col struct {
		oid    uint32
		typmod int32
		value  []byte
	}
	be := binary.BigEndian
	i32 := func(v int32) []byte { return be.AppendUint32(nil, uint32(v)) }
	ts := be.AppendUint64(nil, uint64(time.Date(2026, 3, 1, 1, 1, 0, 1000, time.UTC).UnixMicro()-pgEpochMicros))
	// 99.50 as numeric(5,2): ndigits 2, weight 0, sign +, dscale 2, digits 99, 5000.
	num := []byte{0, 2, 0, 0, 0, 0, 0, 2, 0, 99, 0x13, 0x88}
	cols := []col{
		{pgtype.TextOID, -1, []byte("Seller 12345 Outlet, Inc.")},
		{pgtype.TextOID, -1, []byte("seller 12345 outlet, inc.")},
		{pgtype.TextOID, -1, []byte("ebay")},
		{pgtype.TextOID, -1, []byte("P00012345")},
		{pgtype.Int4OID, -1, i32(17)},
		{pgtype.NumericOID, (5<<16 | 2) + 4, num},
		{pgtype.Int4OID, -1, i32(123456)},
		{pgtype.BoolOID, -1, []byte{1}},
		{pgtype.TimestamptzOID, -1, ts},
	}
	fields := make([]arrow.Field, len(cols))
	decs := make([]*column, len(cols))
	for i, c := range cols {
		d, err := newColumn("c", c.oid, c.typmod, true)
		if err != nil {
			b.Fatal(err)
		}
		decs[i] = d
		fields[i] = arrow.Field{Name: "c", Type: d.typ, Nullable: true}
	}
	bld := array.NewRecordBuilder(memory.NewGoAllocator(), arrow.NewSchema(fields, nil))
	defer bld.Release()
	for i, d := range decs {
		d.bind(bld.Field(i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	const rows = 2048
	for n := 0; n < b.N; n++ {
		for _, d := range decs {
			d.builder.Reserve(rows)
		}
		for r := 0; r < rows; r++ {
			for i, d := range decs {
				if err := d.appendValue(cols[i].value); err != nil {
					b.Fatal(err)
				}
			}
		}
		bld.NewRecord().Release()
	}
	b.ReportMetric(float64(b.N)*rows/b.Elapsed().Seconds(), "rows/s")
}
