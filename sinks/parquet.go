package sinks

import (
	"fmt"
	"io"
	"slices"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/compress"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
)

// Defaults for ParquetOptions.
const (
	// DefaultRowGroupRows: ~3 MB row groups with the collector's columns,
	// and the open one is the largest part of the encoder's memory.
	DefaultRowGroupRows = 64 * 1024
	// DataPageSize is the target size of a data page. Every column of the
	// open row group buffers one page, so smaller pages mean less memory.
	// 128 KiB pages with 64Ki-row groups (instead of 256 KiB and 128Ki)
	// grew a 1M-row file by 0.7% (45.75 → 46.08 MB).
	DataPageSize = 128 << 10
	// CreatedBy is written into every Parquet footer. It holds no version,
	// so re-exports with another release stay byte-identical.
	CreatedBy = "sellersnap"
)

// parquetCompressions are the accepted ParquetOptions.Compression values,
// the default first.
var parquetCompressions = []string{"zstd", "snappy", "gzip", "brotli", "none"}

// parquetCodec returns the codec of a ParquetOptions.Compression.
func parquetCodec(name string) (compress.Compression, bool) {
	switch name {
	case "", "zstd":
		return compress.Codecs.Zstd, true
	case "snappy":
		return compress.Codecs.Snappy, true
	case "gzip":
		return compress.Codecs.Gzip, true
	case "brotli":
		return compress.Codecs.Brotli, true
	case "none":
		return compress.Codecs.Uncompressed, true
	}
	return 0, false
}

// parquetLevels are the levels each Parquet codec accepts (0 is its
// default); snappy and none have none.
var parquetLevels = map[string][2]int{"zstd": {1, 22}, "gzip": {1, 9}, "brotli": {1, 11}}

// checkParquetLevel reports whether level suits the Parquet codec.
func checkParquetLevel(codec string, level int) error {
	if level == 0 {
		return nil
	}
	r, ok := parquetLevels[codec]
	if !ok {
		return fmt.Errorf("compression %q has no levels, got %d", codec, level)
	}
	if level < r[0] || level > r[1] {
		return fmt.Errorf("%s levels are %d to %d, got %d", codec, r[0], r[1], level)
	}
	return nil
}

// ParquetOptions tune the Parquet encoder.
type ParquetOptions struct {
	// Compression: zstd (the default), snappy, gzip, brotli or none.
	Compression string
	// CompressionLevel is the codec's level; 0 means the codec's default.
	CompressionLevel int
	// RowGroupRows is the most rows per row group; a row group is held in
	// memory (encoded and compressed) until it is complete. Default
	// DefaultRowGroupRows.
	RowGroupRows int64
	// Allocator for the writer's pages and scratch buffers. Default Go's
	// allocator, whose Free does nothing: Arrow Go v17 keeps a decimal
	// column's chunk statistics as slices of a scratch buffer it frees
	// after each record (fixed in apache/arrow-go#917, after v17), so an
	// allocator that reuses freed memory corrupts them.
	Allocator memory.Allocator
}

// Parquet writes records to one Parquet file: timestamptz as TIMESTAMP
// (isAdjustedToUTC, MICROS), decimals as DECIMAL(p,s) (INT32/INT64 physical
// types where the precision allows), strings as STRING.
//
// Dictionary encoding is chosen per column from the first record: string
// columns whose values repeat get it, others (ids, names, numbers,
// timestamps) are written plain, which is smaller and much cheaper than a
// dictionary that overflows. The same data always makes the same choice.
type Parquet struct {
	w      io.Writer
	schema *arrow.Schema
	props  []parquet.WriterProperty
	fw     *pqarrow.FileWriter
}

// NewParquet returns a Parquet encoder for schema.
func NewParquet(w io.Writer, schema *arrow.Schema, opts ParquetOptions) (*Parquet, error) {
	useZstdCodec()
	codec, ok := parquetCodec(opts.Compression)
	if !ok {
		return nil, fmt.Errorf("parquet: unknown compression %q", opts.Compression)
	}
	name := opts.Compression
	if name == "" {
		name = "zstd"
	}
	if err := checkParquetLevel(name, opts.CompressionLevel); err != nil {
		return nil, fmt.Errorf("parquet: %w", err)
	}
	if opts.RowGroupRows <= 0 {
		opts.RowGroupRows = DefaultRowGroupRows
	}
	if opts.Allocator == nil {
		opts.Allocator = memory.NewGoAllocator()
	}
	props := []parquet.WriterProperty{
		parquet.WithCompression(codec),
		parquet.WithCreatedBy(CreatedBy),
		parquet.WithMaxRowGroupLength(opts.RowGroupRows),
		parquet.WithStoreDecimalAsInteger(true),
		parquet.WithDictionaryDefault(false),
		parquet.WithStats(true),
		parquet.WithDataPageSize(DataPageSize),
		parquet.WithAllocator(opts.Allocator),
		// The spec gives the root element no repetition or REQUIRED; Arrow
		// Go's default REPEATED makes strict readers (hyparquet) fail.
		parquet.WithRootRepetition(parquet.Repetitions.Required),
	}
	if opts.CompressionLevel != 0 {
		props = append(props, parquet.WithCompressionLevel(opts.CompressionLevel))
	}
	for _, f := range schema.Fields() {
		if f.Type.ID() == arrow.STRING {
			// Arrow Go copies a page's and a chunk's min and max whole
			// before it drops statistics over 4 KiB: four copies of a
			// 50 MB value. Min and max of text rarely prune a row group.
			props = append(props, parquet.WithStatsPath(parquet.ColumnPath{f.Name}, false))
		}
	}
	for _, f := range schema.Fields() {
		if _, err := pqarrow.ToParquet(arrow.NewSchema([]arrow.Field{f}, nil), nil, pqarrow.DefaultWriterProps()); err != nil {
			return nil, fmt.Errorf("parquet: column %q: %w", f.Name, err)
		}
	}
	return &Parquet{w: w, schema: schema, props: props}, nil
}

// dictionarySample is how many leading values decide a column's encoding.
const dictionarySample = 4096

// open creates the file writer, choosing dictionary encoding from first
// (nil for an empty file).
func (p *Parquet) open(first arrow.Record) error {
	props := slices.Clone(p.props)
	for i, f := range p.schema.Fields() {
		if f.Type.ID() != arrow.STRING {
			continue
		}
		if first == nil || repeats(first.Column(i).(*array.String)) {
			props = append(props, parquet.WithDictionaryPath(parquet.ColumnPath{f.Name}, true))
		}
	}
	// pqarrow closes the writer under it on Close and on some errors; the
	// caller decides when the object is committed, so hide its Close.
	fw, err := pqarrow.NewFileWriter(p.schema, nopCloser{p.w}, parquet.NewWriterProperties(props...),
		pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
	if err != nil {
		return fmt.Errorf("parquet: %w", err)
	}
	p.fw = fw
	return nil
}

// repeats reports whether at most half the sampled non-null values of a
// are distinct.
func repeats(a *array.String) bool {
	n := min(a.Len(), dictionarySample)
	seen := make(map[string]struct{}, 64)
	values := 0
	for i := 0; i < n; i++ {
		if a.IsNull(i) {
			continue
		}
		values++
		seen[a.Value(i)] = struct{}{}
	}
	return values == 0 || len(seen)*2 <= values
}

// Write buffers rec into the current row group, starting a new one when it
// is full.
func (p *Parquet) Write(rec arrow.Record) error {
	if p.fw == nil {
		if err := p.open(rec); err != nil {
			return err
		}
	}
	if err := p.fw.WriteBuffered(rec); err != nil {
		return fmt.Errorf("parquet: %w", err)
	}
	return nil
}

// Close writes the last row group and the footer. It does not close the
// writer under it.
func (p *Parquet) Close() error {
	if p.fw == nil {
		if err := p.open(nil); err != nil {
			return err
		}
	}
	if err := p.fw.Close(); err != nil {
		return fmt.Errorf("parquet: %w", err)
	}
	return nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
