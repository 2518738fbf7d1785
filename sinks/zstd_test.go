package sinks

import (
	"bytes"
	"testing"

	"github.com/apache/arrow/go/v17/parquet/compress"
)

func TestZstdCodecWritesWhatArrowWrites(t *testing.T) {
	useZstdCodec()
	c, err := compress.GetCodec(compress.Codecs.Zstd)
	if err != nil {
		t.Fatal(err)
	}
	ours, ok := c.(zstdCodec)
	if !ok {
		t.Fatalf("registered zstd codec is %T", c)
	}
	src := bytes.Repeat([]byte("sellersnap, 99.50, 2026-03-01T01:01:00.000001Z\n"), 5000)
	for _, level := range []int{compress.DefaultCompressionLevel, 1, 3, 9} {
		got := ours.EncodeLevel(nil, src, level)
		want := ours.Codec.EncodeLevel(nil, src, level)
		if !bytes.Equal(got, want) {
			t.Errorf("level %d: output differs from Arrow's codec", level)
		}
		if back := ours.Decode(nil, got); !bytes.Equal(back, src) {
			t.Errorf("level %d: round trip failed", level)
		}
	}
}
