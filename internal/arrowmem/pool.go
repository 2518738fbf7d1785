package arrowmem

import (
	"math/bits"
	"sync"
	"unsafe"

	"github.com/apache/arrow/go/v17/arrow/memory"
)

// Pool is an Arrow memory.Allocator that keeps the buffers Arrow frees and
// hands them out again, instead of leaving every batch, page and encoder
// buffer to the garbage collector as Arrow's GoAllocator does. (Arrow's own
// buffer pools are sync.Pools, which every collection empties: with the
// low GOGC that keeps an export's memory flat, they are empty most of the
// time.) Fewer allocations mean fewer collections, and those cost CPU.
//
// Buffers of 4 KiB and more are rounded up to a power of two and kept, up
// to maxKept bytes in all; smaller ones come from the Go heap. A buffer
// handed out again is zeroed first, as a new one would be. Arrow frees a
// buffer once nothing refers to it (Mallocator, its C allocator, relies on
// that too); a buffer freed twice is kept once.
//
// Every buffer given to Free is overwritten with Poison, kept or not, so code
// that reads a buffer after freeing it (a statistic or a slice still
// pointing into a released record) reads garbage at once, in tests as in
// production, instead of stale data that looks right until the buffer is
// handed out again.
type Pool struct {
	mu      sync.Mutex
	free    [poolClasses][][]byte
	kept    int
	maxKept int
}

const (
	poolMinShift = 12 // 4 KiB
	poolClasses  = 15 // up to 64 MiB
	poolAlign    = 64 // Arrow's buffers are 64-byte aligned
	poolPerClass = 64 // buffers kept per class at most
)

// Poison is the byte a freed buffer is filled with.
const Poison = 0xA5

// New returns a pool that keeps at most maxKept bytes of freed buffers.
func New(maxKept int) *Pool { return &Pool{maxKept: maxKept} }

// MaxKept is what Shared keeps at most: a few batches and a Parquet row
// group's pages of a couple of exports at a time.
const MaxKept = 24 << 20

var shared = sync.OnceValue(func() *Pool { return New(MaxKept) })

// Shared is the process's pool: the records an export reads come from it,
// and the binary makes it Arrow's memory.DefaultAllocator (the Parquet
// encoders' scratch buffers). The Parquet writers' own buffers do not use
// it (sinks.ParquetOptions.Allocator says why).
func Shared() *Pool { return shared() }

var _ memory.Allocator = (*Pool)(nil)

// poolClass returns the size class of size and whether it is pooled.
func poolClass(size int) (int, bool) {
	if size < 1<<poolMinShift {
		return 0, false
	}
	c := bits.Len(uint(size-1)) - poolMinShift
	return c, c < poolClasses
}

// Allocate returns a zeroed, 64-byte aligned buffer of length size.
func (p *Pool) Allocate(size int) []byte {
	c, ok := poolClass(size)
	if !ok {
		return alignedBuffer(size, size)
	}
	p.mu.Lock()
	if n := len(p.free[c]); n > 0 {
		b := p.free[c][n-1]
		p.free[c][n-1] = nil
		p.free[c] = p.free[c][:n-1]
		p.kept -= cap(b)
		p.mu.Unlock()
		clear(b[:cap(b)])
		return b[:size]
	}
	p.mu.Unlock()
	return alignedBuffer(size, 1<<(c+poolMinShift))
}

// Reallocate returns b resized to size, its contents kept: b itself if its
// capacity allows, else a new buffer (b is then freed).
func (p *Pool) Reallocate(size int, b []byte) []byte {
	if cap(b) >= size {
		return b[:size]
	}
	nb := p.Allocate(size)
	copy(nb, b)
	p.Free(b)
	return nb
}

// Free takes b back for reuse, unless it did not come from a pool, the
// pool is full, or it holds b already.
func (p *Pool) Free(b []byte) {
	memory.Set(b[:cap(b)], Poison)
	c, ok := poolClass(cap(b))
	if !ok || cap(b) != 1<<(c+poolMinShift) || uintptr(unsafe.Pointer(unsafe.SliceData(b)))%poolAlign != 0 {
		return // not one of ours
	}
	b = b[:cap(b)]
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.kept+cap(b) > p.maxKept || len(p.free[c]) >= poolPerClass {
		return
	}
	for _, f := range p.free[c] {
		if unsafe.SliceData(f) == unsafe.SliceData(b) {
			return // freed twice
		}
	}
	p.free[c] = append(p.free[c], b)
	p.kept += cap(b)
}

// alignedBuffer returns a zeroed buffer of length size and capacity
// capacity, 64-byte aligned.
func alignedBuffer(size, capacity int) []byte {
	buf := make([]byte, capacity+poolAlign)
	shift := 0
	if r := int(uintptr(unsafe.Pointer(unsafe.SliceData(buf))) % poolAlign); r != 0 {
		shift = poolAlign - r
	}
	return buf[shift : shift+size : shift+capacity]
}
