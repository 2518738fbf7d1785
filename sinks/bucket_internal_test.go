package sinks

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"gocloud.dev/blob"
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

func TestFilePutsAreSynced(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := OpenBucket(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, data := range [][]byte{[]byte(`{"a":1}`), nil} {
		o, err := b.putFile(ctx, "m/manifest.json", data, &blob.WriterOptions{ContentType: "application/json"})
		if err != nil {
			t.Fatal(err)
		}
		if o.file == nil || !o.synced {
			t.Errorf("%d bytes: the temporary file was not synced", len(data))
		}
		if got, err := os.ReadFile(filepath.Join(dir, "m", "manifest.json")); err != nil || string(got) != string(data) {
			t.Errorf("published %q, %v; want %q", got, err, data)
		}
	}
	if err := b.Put(ctx, "m/manifest.json", nil, "application/json", &PutOptions{IfNotExist: true}); !errors.Is(err, ErrExists) {
		t.Errorf("Put IfNotExist over an existing key: %v, want ErrExists", err)
	}
}
