package pipeline

import (
	"fmt"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/sinks"
)

// CheckConfig is the config.Check of what sinks knows: every format a job
// names exists, and each format's options (compression, CSV delimiter)
// are ones it accepts. Pass it to config.Load so that these mistakes are
// reported with file, line and field among config's own.
func CheckConfig(j *config.Job, bad func(field, format string, args ...any)) {
	for i, name := range j.Formats {
		if _, err := sinks.NewFormat(name, sinks.FormatOptions{}); err != nil {
			bad(fmt.Sprintf("formats[%d]", i), "%v", err)
		}
	}
	// Every format's block is checked, written or not.
	for _, name := range sinks.FormatNames() {
		if _, err := sinks.NewFormat(name, sinks.FormatOptions{Compression: formatOptions(j, name).Compression}); err != nil {
			bad(name+".compression", "%v", err)
		}
	}
	if len(j.CSV.Delimiter) == 1 {
		if _, err := sinks.NewFormat("csv", sinks.FormatOptions{CSV: sinks.CSVOptions{Delimiter: j.CSV.Delimiter[0]}}); err != nil {
			bad("csv.delimiter", "%v", err)
		}
	}
}

// formatOptions are the options j gives format.
func formatOptions(j *config.Job, format string) sinks.FormatOptions {
	switch format {
	case "csv":
		o := sinks.FormatOptions{Compression: j.CSV.Compression, CSV: sinks.CSVOptions{QuoteAll: j.CSV.QuoteAll}}
		o.CSV.FormulaGuard = j.CSV.FormulaGuard == nil || *j.CSV.FormulaGuard
		if len(j.CSV.Delimiter) == 1 {
			o.CSV.Delimiter = j.CSV.Delimiter[0]
		}
		return o
	case "ndjson":
		return sinks.FormatOptions{Compression: j.NDJSON.Compression}
	case "parquet":
		return sinks.FormatOptions{Compression: j.Parquet.Compression, Parquet: sinks.ParquetOptions{RowGroupRows: j.Parquet.RowGroupRows}}
	}
	return sinks.FormatOptions{}
}

// formatOf returns j's format called name, with j's options.
func formatOf(j *config.Job, name string) (*sinks.Format, error) {
	return sinks.NewFormat(name, formatOptions(j, name))
}
