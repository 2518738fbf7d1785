package sinks_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet/file"

	"github.com/sellersnap/sellersnap/sinks"
)

// TestFormats: each format's name, extension, content type and resolved
// compression, and the errors of bad options.
func TestFormats(t *testing.T) {
	for _, tc := range []struct {
		format string
		opts   sinks.FormatOptions
		ext    string
		ctype  string
		comp   string
		err    string
	}{
		{format: "csv", ext: "csv", ctype: "text/csv; charset=utf-8", comp: "none"},
		{format: "csv", opts: sinks.FormatOptions{Compression: "gzip"}, ext: "csv.gz", ctype: "application/gzip", comp: "gzip"},
		{format: "ndjson", opts: sinks.FormatOptions{Compression: "zstd"}, ext: "ndjson.zst", ctype: "application/zstd", comp: "zstd"},
		{format: "ndjson", ext: "ndjson", ctype: "application/x-ndjson", comp: "none"},
		{format: "parquet", ext: "parquet", ctype: "application/vnd.apache.parquet", comp: "zstd"},
		{format: "parquet", opts: sinks.FormatOptions{Compression: "snappy"}, ext: "parquet", ctype: "application/vnd.apache.parquet", comp: "snappy"},
		{format: "csv", opts: sinks.FormatOptions{Compression: "snappy"}, err: `unknown compression "snappy": want none, gzip or zstd`},
		{format: "parquet", opts: sinks.FormatOptions{Compression: "rar"}, err: `unknown compression "rar": want zstd, snappy, gzip, brotli or none`},
		{format: "csv", opts: sinks.FormatOptions{CSV: sinks.CSVOptions{Delimiter: '"'}}, err: "want one ASCII character other than quotes, CR and LF"},
		{format: "tsv", err: `unknown format "tsv": want csv, ndjson or parquet`},
		{format: "parquet", opts: sinks.FormatOptions{Parquet: sinks.ParquetOptions{CompressionLevel: 1}}, ext: "parquet", ctype: "application/vnd.apache.parquet", comp: "zstd"},
		{format: "parquet", opts: sinks.FormatOptions{Compression: "gzip", Parquet: sinks.ParquetOptions{CompressionLevel: 9}}, ext: "parquet", ctype: "application/vnd.apache.parquet", comp: "gzip"},
		{format: "parquet", opts: sinks.FormatOptions{Parquet: sinks.ParquetOptions{CompressionLevel: 23}}, err: "zstd levels are 1 to 22, got 23"},
		{format: "parquet", opts: sinks.FormatOptions{Compression: "gzip", Parquet: sinks.ParquetOptions{CompressionLevel: -1}}, err: "gzip levels are 1 to 9, got -1"},
		{format: "parquet", opts: sinks.FormatOptions{Compression: "none", Parquet: sinks.ParquetOptions{CompressionLevel: 1}}, err: `compression "none" has no levels, got 1`},
	} {
		f, err := sinks.NewFormat(tc.format, tc.opts)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s %+v: err = %v, want %q", tc.format, tc.opts, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %+v: %v", tc.format, tc.opts, err)
			continue
		}
		if f.Name() != tc.format || f.Ext() != tc.ext || f.ContentType() != tc.ctype || f.Compression() != tc.comp {
			t.Errorf("%s %+v = %s %s %q %s, want %s %q %s", tc.format, tc.opts, f.Name(), f.Ext(), f.ContentType(), f.Compression(), tc.ext, tc.ctype, tc.comp)
		}
		// The encoder writes a file the compression's magic starts.
		rec := buildRecord(t, memory.DefaultAllocator, testRows())
		var buf bytes.Buffer
		enc, err := f.NewEncoder(&buf, rec.Schema())
		if err != nil {
			t.Fatal(err)
		}
		if err := enc.Write(rec); err != nil {
			t.Fatal(err)
		}
		if err := enc.Close(); err != nil {
			t.Fatal(err)
		}
		rec.Release()
		magic := map[string]string{"gzip": "\x1f\x8b", "zstd": "\x28\xb5\x2f\xfd"}[tc.comp]
		if tc.format == "parquet" {
			magic = "PAR1"
		}
		if !strings.HasPrefix(buf.String(), magic) {
			t.Errorf("%s %s: file starts %q, want %q", tc.format, tc.comp, buf.String()[:4], magic)
		}
	}
}

// TestParquetCompressionLevelIsUsed: a level other than the default makes
// other pages (zstd 1 against 3, gzip 1 against 9) that read back the same.
func TestParquetCompressionLevelIsUsed(t *testing.T) {
	rec := buildRecord(t, memory.DefaultAllocator, testRows())
	defer rec.Release()
	write := func(o sinks.FormatOptions) []byte {
		f, err := sinks.NewFormat("parquet", o)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		enc, err := f.NewEncoder(&buf, rec.Schema())
		if err != nil {
			t.Fatal(err)
		}
		encode(t, enc, rec)
		return buf.Bytes()
	}
	for _, pair := range [][2]sinks.FormatOptions{
		{{}, {Parquet: sinks.ParquetOptions{CompressionLevel: 1}}},
		{{Compression: "gzip", Parquet: sinks.ParquetOptions{CompressionLevel: 1}}, {Compression: "gzip", Parquet: sinks.ParquetOptions{CompressionLevel: 9}}},
	} {
		a, b := write(pair[0]), write(pair[1])
		if bytes.Equal(a, b) {
			t.Errorf("%+v and %+v wrote the same bytes: the level is not used", pair[0], pair[1])
		}
		if !bytes.Equal(readParquetRows(t, a), readParquetRows(t, b)) {
			t.Errorf("%+v and %+v read back differently", pair[0], pair[1])
		}
	}
}

// readParquetRows reads a Parquet file back and returns its rows as NDJSON.
func readParquetRows(t *testing.T, data []byte) []byte {
	t.Helper()
	pf, err := file.NewParquetReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	tbl := readTable(t, pf, memory.DefaultAllocator)
	defer tbl.Release()
	tr := array.NewTableReader(tbl, -1)
	defer tr.Release()
	var out bytes.Buffer
	enc, err := sinks.NewNDJSON(&out, tbl.Schema())
	if err != nil {
		t.Fatal(err)
	}
	for tr.Next() {
		if err := enc.Write(tr.Record()); err != nil {
			t.Fatal(err)
		}
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}
