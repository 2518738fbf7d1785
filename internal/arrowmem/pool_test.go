package arrowmem

import (
	"bytes"
	"testing"
	"unsafe"

	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
)

func aligned(b []byte) bool { return uintptr(unsafe.Pointer(unsafe.SliceData(b)))%poolAlign == 0 }

func same(a, b []byte) bool { return unsafe.SliceData(a) == unsafe.SliceData(b) }

func TestAllocateIsZeroedAlignedAndSized(t *testing.T) {
	p := New(1 << 20)
	for _, size := range []int{0, 1, 63, 64, 4095, 4096, 4097, 100_000, 1 << 20} {
		b := p.Allocate(size)
		if len(b) != size {
			t.Errorf("Allocate(%d): len %d", size, len(b))
		}
		if !aligned(b) {
			t.Errorf("Allocate(%d): not 64-byte aligned", size)
		}
		if bytes.ContainsFunc(b[:cap(b)], func(r rune) bool { return r != 0 }) {
			t.Errorf("Allocate(%d): not zeroed", size)
		}
	}
}

func TestFreedBufferIsPoisonedAndReusedZeroed(t *testing.T) {
	p := New(1 << 20)
	b := p.Allocate(5000)
	copy(b, "seller")
	view := b[:6] // what a statistic or a slice of a released record keeps
	p.Free(b)
	if !bytes.Equal(view, bytes.Repeat([]byte{Poison}, 6)) {
		t.Fatalf("a read after Free sees %q, not the poison", view)
	}
	again := p.Allocate(6000) // same 8 KiB class
	if !same(again, b) {
		t.Fatal("a freed buffer of the same class was not reused")
	}
	if bytes.ContainsFunc(again[:cap(again)], func(r rune) bool { return r != 0 }) {
		t.Fatal("a reused buffer is not zeroed")
	}
	if other := p.Allocate(6000); same(other, b) {
		t.Fatal("one buffer handed out twice")
	}
}

func TestFreeTwiceKeepsItOnce(t *testing.T) {
	p := New(1 << 20)
	b := p.Allocate(4096)
	p.Free(b)
	p.Free(b)
	first, second := p.Allocate(4096), p.Allocate(4096)
	if same(first, second) {
		t.Fatal("a buffer freed twice was handed out twice")
	}
}

func TestForeignAndSmallBuffersAreNotKept(t *testing.T) {
	p := New(1 << 20)
	for name, b := range map[string][]byte{
		"small":       p.Allocate(100),
		"not a class": make([]byte, 5000),
		"unaligned":   p.Allocate(8192)[1:4097:4097],
	} {
		p.Free(b)
		if p.kept != 0 {
			t.Errorf("%s: kept %d bytes", name, p.kept)
		}
	}
}

func TestKeepsAtMostMaxKept(t *testing.T) {
	p := New(64 << 10)
	var bufs [][]byte
	for range 5 {
		bufs = append(bufs, p.Allocate(32<<10))
	}
	for _, b := range bufs {
		p.Free(b)
	}
	if p.kept != 64<<10 {
		t.Fatalf("kept %d bytes, want the limit %d", p.kept, 64<<10)
	}
	p.Free(p.Allocate(65 << 20)) // beyond the largest class: never kept
	if p.kept != 64<<10 {
		t.Fatalf("kept %d bytes after frees beyond the classes", p.kept)
	}
}

func TestReallocateKeepsContents(t *testing.T) {
	p := New(1 << 20)
	b := p.Allocate(4096)
	copy(b, "0123456789")
	if nb := p.Reallocate(4000, b); !same(nb, b) || string(nb[:10]) != "0123456789" {
		t.Fatal("a shrink moved the buffer or lost its contents")
	}
	nb := p.Reallocate(10_000, b)
	if string(nb[:10]) != "0123456789" || len(nb) != 10_000 || !aligned(nb) {
		t.Fatalf("grown buffer: %q, len %d", nb[:10], len(nb))
	}
	if bytes.ContainsFunc(nb[10:], func(r rune) bool { return r != 0 }) {
		t.Fatal("the grown part is not zeroed")
	}
}

// Arrow's own checks: builders and buffers through the pool, every byte
// accounted for by a checked allocator around it.
func TestArrowBuildersThroughThePool(t *testing.T) {
	mem := memory.NewCheckedAllocator(New(1 << 20))
	defer mem.AssertSize(t, 0)
	for round := range 3 {
		b := array.NewStringBuilder(mem)
		for i := range 10_000 {
			if i%7 == 0 {
				b.AppendNull()
				continue
			}
			b.Append("seller-" + string(rune('a'+i%26)))
		}
		a := b.NewStringArray()
		b.Release()
		if a.Len() != 10_000 || a.NullN() != 1429 || a.Value(1) != "seller-b" || !a.IsNull(7) {
			t.Fatalf("round %d: %d values, %d nulls, %q", round, a.Len(), a.NullN(), a.Value(1))
		}
		a.Release()
	}
}
