package sinks

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
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

// TestFileTempFilesAreHiddenFromDirectoryReaders: while an object is being
// written (and after a kill, until the next export of its key removes it),
// its temporary file sits in the run's folder. Spark, Hive, Athena and Trino
// read every file of a partition folder except names starting with "." or
// "_", so the temporary file must start with one of them; the clean-up of
// stale temporary files must find it (and the names older versions used).
func TestFileTempFilesAreHiddenFromDirectoryReaders(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := OpenBucket(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	key := "org=a/run=b/sellers_2026-03-04_run-b.parquet"
	o, err := b.NewObject(ctx, key, "application/vnd.apache.parquet")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Write([]byte("PAR1 partial")); err != nil {
		t.Fatal(err)
	}
	// A killed process: the object is neither committed nor aborted.
	folder := filepath.Join(dir, "org=a", "run=b")
	legacy := filepath.Join(folder, "sellers_2026-03-04_run-b.parquet.18ea45230aab137f.tmp")
	other := filepath.Join(folder, "sellers_2026-03-04_run-b.parquet.keep")
	for _, p := range []string{legacy, other} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := os.ReadDir(folder)
	if err != nil {
		t.Fatal(err)
	}
	temps := 0
	for _, e := range entries {
		if p := filepath.Join(folder, e.Name()); p == legacy || p == other {
			continue
		}
		temps++
		if n := e.Name(); n[0] != '.' && n[0] != '_' {
			t.Errorf("temporary file %q would be read as data by Spark, Hive, Athena and Trino", n)
		}
	}
	if temps != 1 {
		t.Fatalf("%d temporary files, want 1", temps)
	}
	if err := b.RemoveStaleTemp(ctx, key); err != nil {
		t.Fatal(err)
	}
	entries, _ = os.ReadDir(folder)
	if len(entries) != 1 || entries[0].Name() != filepath.Base(other) {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("after RemoveStaleTemp: %v, want only %s", names, filepath.Base(other))
	}
	o.Abort()
}

// TestFileBucketNeverWritesOutsideItsRoot: a symlink inside a file:// bucket
// (a folder such as org=… pointing elsewhere, or a key's parent) must not
// lead any write or delete outside the bucket's directory.
func TestFileBucketNeverWritesOutsideItsRoot(t *testing.T) {
	ctx := context.Background()
	dir, outside := t.TempDir(), t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "org=evil")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "victim.csv"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "org=ok"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "victim.csv"), filepath.Join(dir, "org=ok", "victim.csv")); err != nil {
		t.Fatal(err)
	}
	b, err := OpenBucket(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if o, err := b.NewObject(ctx, "org=evil/run=1/sellers.csv", "text/csv"); err == nil {
		_, err = o.Write([]byte("x"))
		if err == nil {
			err = o.Commit()
		}
		if err == nil {
			t.Error("NewObject and Commit through a symlink that leaves the bucket succeeded")
		}
		o.Abort()
	}
	if err := b.Put(ctx, "org=evil/run=1/manifest.json", []byte("{}"), "application/json", &PutOptions{IfNotExist: true}); err == nil {
		t.Error("Put through a symlink that leaves the bucket succeeded")
	}
	if err := b.Delete(ctx, "org=evil/victim.csv"); err == nil {
		t.Error("Delete through a symlink that leaves the bucket succeeded")
	}
	if err := b.RemoveStaleTemp(ctx, "org=evil/x.csv"); err == nil {
		t.Error("RemoveStaleTemp through a symlink that leaves the bucket succeeded")
	}
	// A file symlink at the final key is replaced, not written through.
	if err := b.Put(ctx, "org=ok/victim.csv", []byte("new"), "text/csv", nil); err != nil {
		t.Fatal(err)
	}
	var found []string
	_ = filepath.WalkDir(outside, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			found = append(found, p)
		}
		return nil
	})
	if len(found) != 1 {
		t.Errorf("files outside the bucket: %v, want only victim.csv", found)
	}
	if data, _ := os.ReadFile(filepath.Join(outside, "victim.csv")); string(data) != "keep" {
		t.Errorf("the file outside the bucket was changed: %q", data)
	}
}

// TestFileErrorsNameTheKeyOnceAndTheUser: an os error repeats the path
// (the temporary file's too) after a message that already names the key;
// it is shortened to its operation and cause, and a permission error says
// which user the process runs as.
func TestFileErrorsNameTheKeyOnceAndTheUser(t *testing.T) {
	err := fsError(&fs.PathError{Op: "openat", Path: "org=a/.x.csv.1234.tmp", Err: syscall.EACCES})
	if strings.Contains(err.Error(), "org=a") || !strings.Contains(err.Error(), "openat: permission denied") ||
		!strings.Contains(err.Error(), fmt.Sprintf("uid %d", os.Getuid())) || !errors.Is(err, fs.ErrPermission) {
		t.Errorf("%v", err)
	}
	err = fsError(&os.LinkError{Op: "renameat", Old: "a/.x.tmp", New: "a/x", Err: syscall.EXDEV})
	if err.Error() != "renameat: invalid cross-device link" || !errors.Is(err, syscall.EXDEV) {
		t.Errorf("%v", err)
	}
}

// TestFileListMatchesMem: a file:// bucket lists (in one walk of its
// directory) what a mem:// bucket holding the same objects lists, and
// never a temporary file.
func TestFileListMatchesMem(t *testing.T) {
	ctx := context.Background()
	keys := []string{"a/b/manifest.json", "a/b/x.csv", "a/c/manifest.json", "ab/manifest.json", "z.json", "a/state/00000000000000000001.json"}
	var lists [][]string
	for _, url := range []string{"file://" + t.TempDir(), "mem://"} {
		b, err := OpenBucket(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		for _, k := range keys {
			if err := b.Put(ctx, k, []byte("{}"), "application/json", nil); err != nil {
				t.Fatal(err)
			}
		}
		if b.local != nil { // a temporary file a killed writer left
			if err := os.WriteFile(filepath.Join(strings.TrimPrefix(url, "file://"), "a", "b", ".manifest.json.1234.tmp"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		for _, q := range [][2]string{{"", ""}, {"a/", "/manifest.json"}, {"a", ".json"}, {"nope/", ""}, {"a/b/", ""}} {
			objs, err := b.List(ctx, q[0], q[1])
			if err != nil {
				t.Fatal(err)
			}
			var ks []string
			for _, o := range objs {
				ks = append(ks, o.Key)
			}
			slices.Sort(ks)
			got = append(got, strings.Join(ks, ","))
		}
		lists = append(lists, got)
	}
	if !slices.Equal(lists[0], lists[1]) {
		t.Errorf("file:// lists\n%q\nmem:// lists\n%q", lists[0], lists[1])
	}
}
