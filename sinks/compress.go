package sinks

import (
	"fmt"
	"io"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// textCompressions are the stream compressions of CSV and NDJSON (those
// NewCompressor makes), the default first.
var textCompressions = []string{"none", "gzip", "zstd"}

// streamSuffix is the extension a stream compression adds to a text file.
var streamSuffix = map[string]string{"gzip": ".gz", "zstd": ".zst"}

// NewCompressor wraps w so that what is written to it arrives compressed.
// Close flushes the compressed stream; it does not close w. The output is
// deterministic: the gzip header carries no name and no modification time.
func NewCompressor(w io.Writer, compression string) (io.WriteCloser, error) {
	switch compression {
	case "", "none":
		return nopCloser{w}, nil
	case "gzip":
		zw, err := gzip.NewWriterLevel(w, gzip.DefaultCompression)
		if err != nil {
			return nil, err
		}
		// A zero ModTime would be written as a garbage timestamp: pin it to
		// 0, which gzip readers take as "no time".
		zw.ModTime = time.Unix(0, 0)
		return zw, nil
	case "zstd":
		return zstd.NewWriter(w, zstd.WithEncoderConcurrency(1))
	default:
		return nil, fmt.Errorf("unknown compression %q", compression)
	}
}
