package sinks

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// localDir writes and lists the objects of a file:// bucket. fileblob reads
// them, but writing goes through an os.Root so that no write or delete ever
// leaves the bucket's directory, whatever symlinks someone placed inside it
// (os.Root refuses a path whose symlinks lead outside the root), and so that
// a temporary file is named for what it is to directory readers.
//
// A temporary file lives next to its final key, so the rename that publishes
// it never crosses file systems, and its name starts with a dot:
// ".sellers_2026-03-04_run-xxxxxxxx.parquet.<hex>.tmp". Spark, Hive, Athena,
// Trino and DuckDB's hive partitioning skip names that start with "." or "_",
// so a table over a run's folder never reads a partial file a killed process
// left behind.
type localDir struct {
	root   *os.Root
	prefix string // the URL's prefix= query parameter, prepended to keys
}

func openLocalDir(dir, prefix string) (*localDir, error) {
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, fmt.Errorf("create bucket directory: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open bucket directory: %w", err)
	}
	return &localDir{root: root, prefix: prefix}, nil
}

func (d *localDir) Close() error { return d.root.Close() }

// path is key as a path relative to the root. It refuses keys that fileblob
// would escape (so a file we write is the file fileblob reads) and keys with
// "." or ".." segments.
func (d *localDir) path(key string) (string, error) {
	key = d.prefix + key
	bad := key == "" || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") || strings.Contains(key, "//")
	for _, seg := range strings.Split(key, "/") {
		bad = bad || seg == "." || seg == ".."
	}
	for _, r := range key {
		bad = bad || r < 0x20 || r == '\\' && os.PathSeparator == '\\'
	}
	if bad {
		return "", fmt.Errorf("key %q is not a plain relative path", key)
	}
	return filepath.FromSlash(key), nil
}

// tempPrefix is how the temporary files of rel begin.
func tempPrefix(rel string) string { return "." + filepath.Base(rel) + "." }

// create opens a new temporary file for key.
func (d *localDir) create(key string) (*localFile, error) {
	rel, err := d.path(key)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(rel)
	if err := d.root.MkdirAll(dir, 0o777); err != nil {
		return nil, fsError(err)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, tempPrefix(rel)+hex.EncodeToString(rnd[:])+".tmp")
	f, err := d.root.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
	if err != nil {
		return nil, fsError(err)
	}
	return &localFile{dir: d, f: f, tmp: tmp, rel: rel}, nil
}

// remove deletes key; a missing key is not an error.
func (d *localDir) remove(key string) error {
	rel, err := d.path(key)
	if err != nil {
		return err
	}
	if err := d.root.Remove(rel); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fsError(err)
	}
	return nil
}

// removeStaleTemp deletes the temporary files of key that a killed process
// left: ".name.<hex>.tmp", and "name.<hex>.tmp" as fileblob named them
// before sellersnap wrote file:// buckets itself. With olderThan > 0 it
// keeps those modified more recently: another process may be writing them.
func (d *localDir) removeStaleTemp(key string, olderThan time.Duration) error {
	rel, err := d.path(key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(rel)
	f, err := d.root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	base := filepath.Base(rel)
	for _, n := range names {
		if !strings.HasSuffix(n, ".tmp") || !strings.HasPrefix(n, tempPrefix(rel)) && !strings.HasPrefix(n, base+".") {
			continue
		}
		if olderThan > 0 {
			fi, err := d.root.Lstat(filepath.Join(dir, n))
			if err != nil || time.Since(fi.ModTime()) < olderThan {
				continue
			}
		}
		if err := d.root.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// isDir reports whether key is a folder.
func (d *localDir) isDir(key string) (bool, error) {
	rel, err := d.path(key)
	if err != nil {
		return false, err
	}
	fi, err := d.root.Lstat(rel)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, fsError(err)
	}
	return fi.IsDir(), nil
}

// removeAll deletes the folder key and everything in it.
func (d *localDir) removeAll(key string) error {
	rel, err := d.path(key)
	if err != nil {
		return err
	}
	return fsError(d.root.RemoveAll(rel))
}

// rename moves src to dst (creating dst's folder), then syncs dst's
// folder so the new name survives a power cut. ok is false when src does
// not exist.
func (d *localDir) rename(src, dst string) (ok bool, err error) {
	from, err := d.path(src)
	if err != nil {
		return false, err
	}
	to, err := d.path(dst)
	if err != nil {
		return false, err
	}
	if err := d.root.MkdirAll(filepath.Dir(to), 0o777); err != nil {
		return false, fsError(err)
	}
	if err := d.root.Rename(from, to); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, fsError(err)
	}
	dir, err := d.root.Open(filepath.Dir(to))
	if err != nil {
		return true, fsError(err)
	}
	defer dir.Close()
	return true, fsError(dir.Sync())
}

// fsError shortens an os error for messages that already name the key
// (os errors repeat the path, the temporary file's too) and says who the
// process runs as when it may not write.
func fsError(err error) error {
	if err == nil {
		return nil
	}
	var pe *fs.PathError
	var le *os.LinkError
	switch {
	case errors.As(err, &pe):
		err = &opError{op: pe.Op, err: pe.Err}
	case errors.As(err, &le):
		err = &opError{op: le.Op, err: le.Err}
	}
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%w (sellersnap runs as uid %d, gid %d: the bucket directory must be writable by it)", err, os.Getuid(), os.Getgid())
	}
	return err
}

type opError struct {
	op  string
	err error
}

func (e *opError) Error() string { return e.op + ": " + e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

// localFile is one object being written to a file:// bucket.
type localFile struct {
	dir *localDir
	f   *os.File
	tmp string // relative to the root
	rel string // the final path, relative to the root
}

// commit publishes the synced and closed temporary file at its key: a
// rename, or with ifNotExist a hard link that fails if the key exists (so
// two writers can never both succeed), then the directory is synced so the
// new name survives a power cut.
func (l *localFile) commit(ifNotExist bool) error {
	return fsError(l.publish(ifNotExist))
}

func (l *localFile) publish(ifNotExist bool) error {
	defer l.dir.root.Remove(l.tmp) // after a rename there is nothing to remove
	if err := l.f.Close(); err != nil {
		return err
	}
	if ifNotExist {
		if err := l.dir.root.Link(l.tmp, l.rel); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return ErrExists
			}
			return err
		}
	} else if err := l.dir.root.Rename(l.tmp, l.rel); err != nil {
		return err
	}
	d, err := l.dir.root.Open(filepath.Dir(l.rel))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// abort closes and removes the temporary file.
func (l *localFile) abort() {
	_ = l.f.Close()
	_ = l.dir.root.Remove(l.tmp)
}

// list returns the objects under prefix whose key ends with suffix, in one
// walk of the directory (fileblob walks the whole tree again for every page
// of 1,000, which made listing 100,000 manifests take minutes). Temporary
// files and fileblob's .attrs sidecars are not objects.
func (d *localDir) list(prefix, suffix string) ([]ObjectInfo, error) {
	full := d.prefix + prefix
	start := "."
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		start = full[:i]
	}
	var out []ObjectInfo
	err := fs.WalkDir(d.root.FS(), start, func(p string, e fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // a folder removed meanwhile, or none yet
		}
		if err != nil {
			return err
		}
		name := e.Name()
		if e.IsDir() || strings.HasSuffix(name, ".attrs") || strings.HasPrefix(name, ".") && strings.HasSuffix(name, ".tmp") {
			return nil
		}
		if !strings.HasPrefix(p, full) || !strings.HasSuffix(p, suffix) {
			return nil
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		out = append(out, ObjectInfo{Key: strings.TrimPrefix(p, d.prefix), Size: info.Size(), ModTime: info.ModTime()})
		return nil
	})
	return out, err
}
