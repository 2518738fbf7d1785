package sinks

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// residentBytes counts the bytes of path held in the page cache.
func residentBytes(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	var n int64
	for _, v := range vec {
		if v&1 != 0 {
			n += int64(page)
		}
	}
	return n
}

func TestWriteBehindBoundsThePageCache(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type == unix.TMPFS_MAGIC {
		t.Skipf("%s is tmpfs: write-behind is off there", dir)
	}
	b, err := OpenBucket(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	o, err := b.NewObject(ctx, "big.ndjson", "application/x-ndjson")
	if err != nil {
		t.Fatal(err)
	}
	// 6.5 windows in odd-sized writes, like an encoder's flushes.
	rng := rand.New(rand.NewPCG(1, 2))
	fill := rand.NewChaCha8([32]byte{1})
	var want bytes.Buffer
	h := sha256.New()
	for want.Len() < 6*writeBehindWindow+writeBehindWindow/2 {
		p := make([]byte, 200_000+rng.IntN(100_000))
		_, _ = fill.Read(p)
		if _, err := o.Write(p); err != nil {
			t.Fatal(err)
		}
		want.Write(p)
		h.Write(p)
	}
	if o.wb == nil {
		t.Fatal("no write-behind on a file:// object on disk")
	}
	tmp := o.file.Name()
	// At most the last two windows (one being written back, one being
	// written) plus the current write stay cached.
	if got, limit := residentBytes(t, tmp), int64(2*writeBehindWindow+300_000); got > limit {
		t.Errorf("%d of %d bytes cached while writing, want ≤ %d", got, want.Len(), limit)
	}
	if err := o.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "big.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("committed file differs from what was written (%d vs %d bytes)", len(got), want.Len())
	}
	if sum := hex.EncodeToString(h.Sum(nil)); o.SHA256() != sum {
		t.Errorf("SHA256 %s, want %s", o.SHA256(), sum)
	}
}
