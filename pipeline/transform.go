package pipeline

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"

	"github.com/sellersnap/sellersnap/config"
)

// columnTransform rewrites one column of a record; it returns a new array
// the caller releases.
type columnTransform func(a arrow.Array) (arrow.Array, error)

// transforms returns the per-column transforms of job (nil entries pass
// the column through) and checks that they fit the source schema.
func transforms(job *Job, src *arrow.Schema, mem memory.Allocator) ([]columnTransform, error) {
	out := make([]columnTransform, src.NumFields())
	for i, c := range job.columns {
		f := src.Field(i)
		switch {
		case c.Redact:
			out[i] = func(a arrow.Array) (arrow.Array, error) {
				return array.MakeArrayOfNull(mem, a.DataType(), a.Len()), nil
			}
		case c.Mask == config.MaskHMACSHA256:
			if f.Type.ID() != arrow.STRING {
				return nil, fmt.Errorf("column %q is %s: mask applies to text columns (redact works on any)", c.Name, f.Type)
			}
			mac := hmac.New(sha256.New, job.maskKey)
			out[i] = func(a arrow.Array) (arrow.Array, error) { return maskHMAC(a.(*array.String), mac, mem), nil }
		}
	}
	return out, nil
}

// maskHMAC replaces every value by the lowercase hex HMAC of its bytes;
// NULL stays NULL.
func maskHMAC(a *array.String, mac hash.Hash, mem memory.Allocator) arrow.Array {
	b := array.NewStringBuilder(mem)
	defer b.Release()
	b.Reserve(a.Len())
	b.ReserveData(a.Len() * 2 * sha256.Size)
	var sum [sha256.Size]byte
	var hexed [2 * sha256.Size]byte
	for i := 0; i < a.Len(); i++ {
		if a.IsNull(i) {
			b.AppendNull()
			continue
		}
		mac.Reset()
		mac.Write([]byte(a.Value(i)))
		hex.Encode(hexed[:], mac.Sum(sum[:0]))
		b.BinaryBuilder.Append(hexed[:])
	}
	return b.NewArray()
}
