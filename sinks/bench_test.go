package sinks_test

import (
	"io"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/memory"

	"github.com/sellersnap/sellersnap/sinks"
)

// benchRecord is 2048 rows shaped like the default export.
func benchRecord(b *testing.B) arrow.Record {
	rows := testRows()
	var many []row
	for len(many) < 2048 {
		many = append(many, rows...)
	}
	return buildRecord(b, memory.NewGoAllocator(), many[:2048])
}

type countingDiscard struct{ n int64 }

func (c *countingDiscard) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func benchEncoder(b *testing.B, open func(w io.Writer, s *arrow.Schema) (interface {
	Write(arrow.Record) error
	Close() error
}, error)) {
	rec := benchRecord(b)
	defer rec.Release()
	w := &countingDiscard{}
	enc, err := open(w, rec.Schema())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := enc.Write(rec); err != nil {
			b.Fatal(err)
		}
	}
	if err := enc.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)*float64(rec.NumRows())/b.Elapsed().Seconds(), "rows/s")
	b.SetBytes(w.n / int64(b.N))
}

func BenchmarkCSV(b *testing.B) {
	benchEncoder(b, func(w io.Writer, s *arrow.Schema) (interface {
		Write(arrow.Record) error
		Close() error
	}, error) {
		return sinks.NewCSV(w, s, sinks.CSVOptions{FormulaGuard: true})
	})
}

func BenchmarkNDJSON(b *testing.B) {
	benchEncoder(b, func(w io.Writer, s *arrow.Schema) (interface {
		Write(arrow.Record) error
		Close() error
	}, error) {
		return sinks.NewNDJSON(w, s)
	})
}

func BenchmarkParquet(b *testing.B) {
	benchEncoder(b, func(w io.Writer, s *arrow.Schema) (interface {
		Write(arrow.Record) error
		Close() error
	}, error) {
		return sinks.NewParquet(w, s, sinks.ParquetOptions{})
	})
}

func BenchmarkCSVGzip(b *testing.B) {
	benchEncoder(b, func(w io.Writer, s *arrow.Schema) (interface {
		Write(arrow.Record) error
		Close() error
	}, error) {
		zw, err := sinks.NewCompressor(w, "gzip")
		if err != nil {
			return nil, err
		}
		enc, err := sinks.NewCSV(zw, s, sinks.CSVOptions{})
		return closeBoth{enc, zw}, err
	})
}

type closeBoth struct {
	*sinks.CSV
	z io.Closer
}

func (c closeBoth) Close() error {
	if err := c.CSV.Close(); err != nil {
		return err
	}
	return c.z.Close()
}
