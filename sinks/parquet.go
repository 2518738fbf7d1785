package sinks

import (
	"fmt"
	"io"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/compress"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
)

// Defaults for ParquetOptions.
const (
	DefaultParquetCompression = "zstd"
	DefaultRowGroupRows       = 256 * 1024
	// CreatedBy is written into every Parquet footer. It holds no version,
	// so re-exports with another release stay byte-identical.
	CreatedBy = "sellersnap"
)

// ParquetCodecs are the accepted ParquetOptions.Compression values.
var ParquetCodecs = map[string]compress.Compression{
	"none":   compress.Codecs.Uncompressed,
	"snappy": compress.Codecs.Snappy,
	"gzip":   compress.Codecs.Gzip,
	"zstd":   compress.Codecs.Zstd,
	"brotli": compress.Codecs.Brotli,
}

// ParquetOptions tune the Parquet encoder.
type ParquetOptions struct {
	// Compression is a key of ParquetCodecs. Default "zstd".
	Compression string
	// CompressionLevel is the codec's level; 0 means the codec's default.
	CompressionLevel int
	// RowGroupRows is the most rows per row group; a row group is held in
	// memory (encoded and compressed) until it is complete. Default
	// DefaultRowGroupRows.
	RowGroupRows int64
}

// Parquet writes records to one Parquet file: timestamptz as TIMESTAMP
// (isAdjustedToUTC, MICROS), decimals as DECIMAL(p,s) (INT32/INT64 physical
// types where the precision allows), strings as STRING.
type Parquet struct {
	fw *pqarrow.FileWriter
}

// NewParquet returns a Parquet encoder for schema.
func NewParquet(w io.Writer, schema *arrow.Schema, opts ParquetOptions) (*Parquet, error) {
	if opts.Compression == "" {
		opts.Compression = DefaultParquetCompression
	}
	codec, ok := ParquetCodecs[opts.Compression]
	if !ok {
		return nil, fmt.Errorf("parquet: unknown compression %q", opts.Compression)
	}
	if opts.RowGroupRows <= 0 {
		opts.RowGroupRows = DefaultRowGroupRows
	}
	props := []parquet.WriterProperty{
		parquet.WithCompression(codec),
		parquet.WithCreatedBy(CreatedBy),
		parquet.WithMaxRowGroupLength(opts.RowGroupRows),
		parquet.WithStoreDecimalAsInteger(true),
		parquet.WithDictionaryDefault(true),
		parquet.WithStats(true),
	}
	if opts.CompressionLevel != 0 {
		props = append(props, parquet.WithCompressionLevel(opts.CompressionLevel))
	}
	// pqarrow closes the writer under it on Close and on some errors; the
	// caller decides when the object is committed, so hide its Close.
	fw, err := pqarrow.NewFileWriter(schema, nopCloser{w}, parquet.NewWriterProperties(props...),
		pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
	if err != nil {
		return nil, fmt.Errorf("parquet: %w", err)
	}
	return &Parquet{fw: fw}, nil
}

// Write buffers rec into the current row group, starting a new one when it
// is full.
func (p *Parquet) Write(rec arrow.Record) error {
	if err := p.fw.WriteBuffered(rec); err != nil {
		return fmt.Errorf("parquet: %w", err)
	}
	return nil
}

// Close writes the last row group and the footer. It does not close the
// writer under it.
func (p *Parquet) Close() error {
	if err := p.fw.Close(); err != nil {
		return fmt.Errorf("parquet: %w", err)
	}
	return nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
