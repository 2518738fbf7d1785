package sinks

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	_ "gocloud.dev/blob/fileblob"
	_ "gocloud.dev/blob/memblob"
)

func TestFileObjectsAreSyncedBeforeCommit(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, tc := range []struct {
		url    string
		synced bool
	}{{"file://" + dir, true}, {"mem://", false}} {
		b, err := OpenBucket(ctx, tc.url)
		if err != nil {
			t.Fatal(err)
		}
		o, err := b.NewObject(ctx, "a/b.csv", "text/csv")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := o.Write([]byte("x\n")); err != nil {
			t.Fatal(err)
		}
		if (o.file != nil) != tc.synced {
			t.Errorf("%s: temporary file captured = %v, want %v", tc.url, o.file != nil, tc.synced)
		}
		if err := o.Commit(); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	if data, err := os.ReadFile(filepath.Join(dir, "a", "b.csv")); err != nil || string(data) != "x\n" {
		t.Errorf("committed file: %q, %v", data, err)
	}
}
