package config

import (
	"slices"
)

// CSV options of a job.
type CSV struct {
	// FormulaGuard neutralises cells starting with = + - @ TAB CR. Default true.
	FormulaGuard *bool `yaml:"formula_guard"`
	// Compression: none (the default), gzip or zstd; checked by the
	// format (sinks).
	Compression string `yaml:"compression"`
	// Delimiter is one character. Default ",".
	Delimiter string `yaml:"delimiter"`
	// QuoteAll quotes every field but NULLs (which stay empty and
	// unquoted, so that NULL and "" differ). Default false.
	QuoteAll bool `yaml:"quote_all"`
	// Include keeps only these output columns in this format; Exclude
	// drops these. Default: every column.
	Include []string `yaml:"include"`
	Exclude []string `yaml:"exclude"`
}

// Select narrows the columns of one format, by output name: Include keeps
// only these, Exclude drops these. Default: every column.
type Select struct {
	Include []string `yaml:"include"`
	Exclude []string `yaml:"exclude"`
}

// Columns returns the indices of the job's output columns the format
// writes.
func (s Select) Columns(cols []Column) []int {
	var idx []int
	for i, c := range cols {
		out := c.Output()
		if len(s.Include) > 0 && !slices.Contains(s.Include, out) || slices.Contains(s.Exclude, out) {
			continue
		}
		idx = append(idx, i)
	}
	return idx
}

// NDJSON options of a job.
type NDJSON struct {
	// Compression: none (the default), gzip or zstd.
	Compression string `yaml:"compression"`
	// Include keeps only these output columns in this format; Exclude
	// drops these. Default: every column.
	Include []string `yaml:"include"`
	Exclude []string `yaml:"exclude"`
}

// Parquet options of a job.
type Parquet struct {
	// Compression: zstd (the default), snappy, gzip, brotli or none.
	Compression string `yaml:"compression"`
	// CompressionLevel is the codec's level (zstd 1–22, gzip 1–9, brotli
	// 1–11); 0 (the default) is the codec's default (zstd: 3).
	CompressionLevel int `yaml:"compression_level"`
	// RowGroupRows is the most rows per row group. 0 (the default) is the
	// encoder's default, 65536.
	RowGroupRows int64 `yaml:"row_group_rows"`
	// Include keeps only these output columns in this format; Exclude
	// drops these. Default: every column.
	Include []string `yaml:"include"`
	Exclude []string `yaml:"exclude"`
}
