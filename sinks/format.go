package sinks

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/apache/arrow/go/v17/arrow"
)

// Encoder writes Arrow records to one file. Close writes what the format
// holds back (a Parquet footer, a compressed stream's end); it does not
// close the writer under it.
type Encoder interface {
	Write(arrow.Record) error
	Close() error
}

// FormatOptions are the options of one format; each format reads those
// that apply to it.
type FormatOptions struct {
	// Compression of the file: none, gzip or zstd for CSV and NDJSON
	// (a stream compression, which adds .gz or .zst to the extension);
	// zstd, snappy, gzip, brotli or none for Parquet (per page). "" is
	// the format's default: none for text, zstd for Parquet.
	Compression string
	// CSV options, for CSV.
	CSV CSVOptions
	// Parquet options but Compression, for Parquet.
	Parquet ParquetOptions
}

// Format is one output format with its options resolved: what its files
// are called and typed, and how to encode them. It is the one place that
// knows a format; adding one means adding an entry to formats.
type Format struct {
	name        string
	ext         string
	contentType string
	compression string
	stream      bool // the compression wraps the whole file (CSV, NDJSON)
	newEncoder  func(w io.Writer, schema *arrow.Schema) (Encoder, error)
}

// formatSpec builds a Format from its options.
type formatSpec struct {
	contentType  string
	compressions []string // accepted, the default first
	stream       bool     // compressed as a stream, not inside the file
	build        func(f *Format, o FormatOptions) error
}

var formats = map[string]formatSpec{
	"csv": {contentType: "text/csv; charset=utf-8", compressions: textCompressions, stream: true, build: func(f *Format, o FormatOptions) error {
		if err := o.CSV.resolve(); err != nil {
			return err
		}
		f.newEncoder = func(w io.Writer, s *arrow.Schema) (Encoder, error) { return NewCSV(w, s, o.CSV) }
		return nil
	}},
	"ndjson": {contentType: "application/x-ndjson", compressions: textCompressions, stream: true, build: func(f *Format, o FormatOptions) error {
		f.newEncoder = func(w io.Writer, s *arrow.Schema) (Encoder, error) { return NewNDJSON(w, s) }
		return nil
	}},
	"parquet": {contentType: "application/vnd.apache.parquet", compressions: parquetCompressions, build: func(f *Format, o FormatOptions) error {
		o.Parquet.Compression = f.compression // per page, inside the file
		if err := checkParquetLevel(f.compression, o.Parquet.CompressionLevel); err != nil {
			return err
		}
		f.newEncoder = func(w io.Writer, s *arrow.Schema) (Encoder, error) { return NewParquet(w, s, o.Parquet) }
		return nil
	}},
}

// FormatNames lists the formats, in the order a job writes them by default.
func FormatNames() []string { return []string{"csv", "ndjson", "parquet"} }

// NewFormat returns format with its options checked and defaults applied.
func NewFormat(format string, o FormatOptions) (*Format, error) {
	spec, ok := formats[format]
	if !ok {
		return nil, fmt.Errorf("unknown format %q: want %s", format, orList(FormatNames()))
	}
	comp := o.Compression
	if comp == "" {
		comp = spec.compressions[0]
	}
	if !slices.Contains(spec.compressions, comp) {
		return nil, fmt.Errorf("unknown compression %q: want %s", o.Compression, orList(spec.compressions))
	}
	f := &Format{name: format, ext: format, contentType: spec.contentType, compression: comp}
	if spec.stream && comp != "none" {
		f.stream = true
		f.ext += streamSuffix[comp]
		f.contentType = "application/" + comp
	}
	if err := spec.build(f, o); err != nil {
		return nil, err
	}
	return f, nil
}

// Name is the format's name: csv, ndjson or parquet.
func (f *Format) Name() string { return f.name }

// Ext is the file name extension, without the dot: csv, csv.gz, parquet.
func (f *Format) Ext() string { return f.ext }

// ContentType is the files' MIME type.
func (f *Format) ContentType() string { return f.contentType }

// Compression is the compression the files use (never "").
func (f *Format) Compression() string { return f.compression }

// NewEncoder returns an encoder writing schema's records in this format
// to w, compressed as the format says. Its Close flushes the encoder and
// the compressed stream; it does not close w.
func (f *Format) NewEncoder(w io.Writer, schema *arrow.Schema) (Encoder, error) {
	if !f.stream {
		return f.newEncoder(w, schema)
	}
	comp, err := NewCompressor(w, f.compression)
	if err != nil {
		return nil, err
	}
	enc, err := f.newEncoder(comp, schema)
	if err != nil {
		return nil, err
	}
	return &compressedEncoder{Encoder: enc, comp: comp, name: f.name}, nil
}

// compressedEncoder closes the encoder, then the compressed stream.
type compressedEncoder struct {
	Encoder
	comp io.WriteCloser
	name string
}

func (c *compressedEncoder) Close() error {
	if err := c.Encoder.Close(); err != nil {
		return err
	}
	if err := c.comp.Close(); err != nil {
		return fmt.Errorf("compress %s: %w", c.name, err)
	}
	return nil
}

// orList writes "a, b or c".
func orList(s []string) string {
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}
