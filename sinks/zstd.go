package sinks

import (
	"sync"

	"github.com/apache/arrow/go/v17/parquet/compress"
	"github.com/klauspost/compress/zstd"
)

// Arrow v17's Parquet zstd codec builds a new encoder, megabytes of tables,
// for every page it compresses (EncodeLevel), which made zstd Parquet files
// of small runs cost tens of milliseconds each. This codec keeps one
// encoder per level (zstd.Encoder.EncodeAll is safe for concurrent use),
// with a window sized for Parquet pages. useZstdCodec registers it in place
// of Arrow's, for the whole process (Arrow's codec registry is global), the
// first time a Parquet encoder is made; for pages up to the window size it
// writes the same bytes.
type zstdCodec struct {
	compress.Codec // Arrow's, for decoding and streaming
}

var zstdEncoders sync.Map // level → *zstd.Encoder

const zstdWindow = 512 << 10

func (zstdCodec) EncodeLevel(dst, src []byte, level int) []byte {
	return zstdEncoder(level).EncodeAll(src, dst[:0])
}

func zstdEncoder(level int) *zstd.Encoder {
	if e, ok := zstdEncoders.Load(level); ok {
		return e.(*zstd.Encoder)
	}
	l := zstd.SpeedDefault
	if level != compress.DefaultCompressionLevel {
		l = zstd.EncoderLevelFromZstd(level)
	}
	// Data pages are DataPageSize (128 KiB) and dictionary pages at most
	// 1 MiB, so a larger window buys little and costs its history buffer
	// in every encoder (in heap profiles of a 1M-row export, zstd's share
	// fell from ~7 to ~3.4 MiB with 512 KiB instead of 2 MiB, measured
	// together with the switch to 64Ki-row groups).
	enc, err := zstd.NewWriter(nil, zstd.WithZeroFrames(true), zstd.WithEncoderLevel(l),
		zstd.WithWindowSize(zstdWindow), zstd.WithLowerEncoderMem(true))
	if err != nil {
		panic(err) // only invalid options fail, and these are fixed
	}
	e, _ := zstdEncoders.LoadOrStore(level, enc)
	return e.(*zstd.Encoder)
}

var zstdRegistered sync.Once

// useZstdCodec replaces Arrow's zstd codec by zstdCodec, once.
func useZstdCodec() {
	zstdRegistered.Do(func() {
		orig, err := compress.GetCodec(compress.Codecs.Zstd)
		if err != nil {
			panic(err) // Arrow always has a zstd codec
		}
		compress.RegisterCodec(compress.Codecs.Zstd, zstdCodec{Codec: orig})
	})
}
