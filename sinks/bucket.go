package sinks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
)

// ErrExists is returned by Put with IfNotExist when the key already exists.
var ErrExists = errors.New("object already exists")

// Bucket is a destination for snapshot files: any gocloud.dev bucket URL.
// The drivers are linked in by the main package.
type Bucket struct {
	b          *blob.Bucket
	local      *localDir // file:// buckets: writes and deletes, confined to the directory
	url        string
	scheme     string
	bucketName string   // the URL's host: the S3 bucket
	secrets    []string // of the URL, never shown (see redact)
	requests   atomic.Int64
}

// Requests is how many requests the bucket has been sent: one per read,
// existence check, write, delete, and page of 1,000 listed objects (the
// page size of S3, GCS and Azure). It is what a pass costs.
func (b *Bucket) Requests() int64 { return b.requests.Load() }

// OpenBucket opens the bucket at rawURL. A file:// URL may be relative
// (file://./snapshots resolves against the working directory); its
// directory is created, and no .attrs sidecar files are written unless the
// URL says otherwise. Objects of a file:// bucket are written by localDir:
// never outside the directory, through hidden temporary files.
func OpenBucket(ctx context.Context, rawURL string, opts ...Option) (*Bucket, error) {
	o := bucketOptions{logger: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	secrets := urlSecrets(rawURL)
	b, err := openBucket(ctx, rawURL, o)
	if err != nil {
		return nil, redactError(err, secrets)
	}
	b.secrets = secrets
	return b, nil
}

// Option configures OpenBucket.
type Option func(*bucketOptions)

type bucketOptions struct{ logger *slog.Logger }

// WithLogger sends what the bucket's SDK logs (the AWS SDK's warnings) to l
// instead of slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(o *bucketOptions) {
		if l != nil {
			o.logger = l
		}
	}
}

func openBucket(ctx context.Context, rawURL string, o bucketOptions) (*Bucket, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		return nil, fmt.Errorf("bucket URL %q: want scheme://…, e.g. s3://bucket or file:///path", Redact(rawURL))
	}
	if u.Scheme == "file" {
		if u, err = fileURL(u); err != nil {
			return nil, err
		}
	}
	var b *blob.Bucket
	if u.Scheme == "s3" {
		b, err = openS3(ctx, u, o.logger)
	} else {
		b, err = blob.OpenBucket(ctx, u.String())
	}
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", Redact(rawURL), err)
	}
	bk := &Bucket{b: b, url: Redact(u.String()), scheme: u.Scheme, bucketName: u.Host}
	if u.Scheme == "file" {
		if bk.local, err = openLocalDir(filepath.FromSlash(u.Path), u.Query().Get("prefix")); err != nil {
			b.Close()
			return nil, fmt.Errorf("open bucket %s: %w", Redact(rawURL), err)
		}
	}
	return bk, nil
}

func fileURL(u *url.URL) (*url.URL, error) {
	p := u.Path
	if u.Host == "." || u.Opaque != "" {
		p = strings.TrimPrefix(u.Path, "/")
		if u.Opaque != "" { // file:relative/path
			p = u.Opaque
		}
	} else if u.Host != "" && u.Host != "localhost" {
		return nil, fmt.Errorf("bucket URL %q: file URLs take no host (use file:///abs/path or file://./rel/path)", Redact(u.String()))
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, fmt.Errorf("bucket URL %q: %w", Redact(u.String()), err)
	}
	q := u.Query()
	for k, v := range map[string]string{"create_dir": "true", "metadata": "skip"} {
		if !q.Has(k) {
			q.Set(k, v)
		}
	}
	return &url.URL{Scheme: "file", Path: filepath.ToSlash(abs), RawQuery: q.Encode()}, nil
}

// URL is the bucket's URL with credentials redacted.
func (b *Bucket) URL() string { return b.url }

// Close releases the bucket.
func (b *Bucket) Close() error {
	if b.local != nil {
		b.local.Close()
	}
	return b.b.Close()
}

// Exists reports whether key exists.
func (b *Bucket) Exists(ctx context.Context, key string) (bool, error) {
	b.requests.Add(1)
	ok, err := b.b.Exists(ctx, key)
	if err != nil {
		return false, b.redact(fmt.Errorf("check %s: %w", key, err))
	}
	return ok, nil
}

// MaxReadSize bounds what ReadAll reads: sellersnap reads only its own
// small objects (manifests, state versions, pointers, records), and an
// object someone planted must not take the process's memory.
const MaxReadSize = 16 << 20

// ErrTooLarge is the error ReadAll wraps for an object over MaxReadSize.
var ErrTooLarge = errors.New("object too large")

// ReadAll returns the content of key, at most MaxReadSize bytes (more is
// an error wrapping ErrTooLarge).
func (b *Bucket) ReadAll(ctx context.Context, key string) ([]byte, error) {
	return b.ReadUpTo(ctx, key, MaxReadSize)
}

// ReadUpTo returns the content of key, at most limit bytes (more is an
// error wrapping ErrTooLarge).
func (b *Bucket) ReadUpTo(ctx context.Context, key string, limit int64) ([]byte, error) {
	b.requests.Add(1)
	r, err := b.b.NewReader(ctx, key, nil)
	if err != nil {
		return nil, b.redact(fmt.Errorf("read %s: %w", key, err))
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, b.redact(fmt.Errorf("read %s: %w", key, err))
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("read %s: %w: more than %d bytes (sellersnap reads only its own small JSON objects here)", key, ErrTooLarge, limit)
	}
	return data, nil
}

// NewReader opens key for reading (a data file, whatever its size); the
// caller closes it.
func (b *Bucket) NewReader(ctx context.Context, key string) (io.ReadCloser, error) {
	b.requests.Add(1)
	r, err := b.b.NewReader(ctx, key, nil)
	if err != nil {
		return nil, b.redact(fmt.Errorf("read %s: %w", key, err))
	}
	return r, nil
}

// ContentType returns the content type stored with key.
func (b *Bucket) ContentType(ctx context.Context, key string) (string, error) {
	b.requests.Add(1)
	a, err := b.b.Attributes(ctx, key)
	if err != nil {
		return "", b.redact(fmt.Errorf("attributes of %s: %w", key, err))
	}
	return a.ContentType, nil
}

// ObjectInfo describes a listed object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// List returns every object under prefix whose key ends with suffix.
func (b *Bucket) List(ctx context.Context, prefix, suffix string) ([]ObjectInfo, error) {
	if b.local != nil {
		out, err := b.local.list(prefix, suffix)
		b.requests.Add(1 + int64(len(out))/1000)
		if err != nil {
			return nil, b.redact(fmt.Errorf("list %s: %w", prefix, fsError(err)))
		}
		return out, nil
	}
	var out []ObjectInfo
	it := b.b.List(&blob.ListOptions{Prefix: prefix})
	b.requests.Add(1)
	for listed := 0; ; listed++ {
		if listed > 0 && listed%1000 == 0 {
			b.requests.Add(1)
		}
		obj, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, b.redact(fmt.Errorf("list %s: %w", prefix, err))
		}
		if !obj.IsDir && strings.HasSuffix(obj.Key, suffix) {
			out = append(out, ObjectInfo{Key: obj.Key, Size: obj.Size, ModTime: obj.ModTime})
		}
	}
}

// staleTempAge is how long a temporary file of a small Put stays untouched
// before Put takes it for a killed writer's: a Put writes its few bytes in
// milliseconds.
const staleTempAge = time.Minute

// RemoveStaleTemp deletes the temporary files a killed process left next
// to key in a file:// bucket. Other drivers keep no such files; for them it
// does nothing. The caller must make sure nobody is writing key.
func (b *Bucket) RemoveStaleTemp(ctx context.Context, key string) error {
	return b.removeTemp(key, 0)
}

// RemoveAbandonedTemp is RemoveStaleTemp for a key that other processes
// may be writing: it keeps the temporary files touched in the last minute.
// Put does it too.
func (b *Bucket) RemoveAbandonedTemp(ctx context.Context, key string) error {
	return b.removeTemp(key, staleTempAge)
}

func (b *Bucket) removeTemp(key string, olderThan time.Duration) error {
	if b.local == nil {
		return nil
	}
	if err := b.local.removeStaleTemp(key, olderThan); err != nil {
		return b.redact(fmt.Errorf("remove temporary files of %s: %w", key, err))
	}
	return nil
}

// Delete removes key; a missing key is not an error.
func (b *Bucket) Delete(ctx context.Context, key string) error {
	b.requests.Add(1)
	if b.local != nil {
		if err := b.local.remove(key); err != nil {
			return b.redact(fmt.Errorf("delete %s: %w", key, err))
		}
		return nil
	}
	err := b.b.Delete(ctx, key)
	if err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return b.redact(fmt.Errorf("delete %s: %w", key, err))
	}
	return nil
}

// PutOptions tune Put.
type PutOptions struct {
	// IfNotExist makes Put fail with ErrExists when key exists, where the
	// driver supports it.
	IfNotExist bool
}

// Put writes a small object in one piece.
func (b *Bucket) Put(ctx context.Context, key string, data []byte, contentType string, opts *PutOptions) (err error) {
	b.requests.Add(1)
	wo := &blob.WriterOptions{ContentType: contentType}
	if opts != nil {
		wo.IfNotExist = opts.IfNotExist
	}
	defer func() {
		// azureblob's Writer.Close panics (nil pointer) when the upload
		// fails, a failed IfNotExist precondition included.
		if p := recover(); p != nil {
			if wo.IfNotExist {
				if ok, _ := b.b.Exists(ctx, key); ok {
					err = fmt.Errorf("write %s: %w", key, ErrExists)
					return
				}
			}
			err = fmt.Errorf("write %s: upload failed (driver panicked: %v)", key, p)
		}
	}()
	if b.local != nil {
		// Keys that several processes may write (latest.json) are not
		// under one lock: only temporary files nobody has touched for a
		// while are a killed writer's.
		_ = b.local.removeStaleTemp(key, staleTempAge)
		// Durable like any Object: a manifest torn by a power cut would
		// mark a unit exported that no reader can open.
		_, err = b.putFile(ctx, key, data, wo)
	} else if err = b.b.WriteAll(ctx, key, data, wo); err != nil {
		err = b.redact(fmt.Errorf("write %s: %w", key, err))
	}
	if gcerrors.Code(err) == gcerrors.FailedPrecondition && !errors.Is(err, ErrExists) {
		return b.redact(fmt.Errorf("write %s: %w", key, ErrExists))
	}
	return b.redact(err)
}

// putFile writes data to key of a file:// bucket through an Object, so it
// is synced before the rename that publishes it and the directory after,
// and returns the committed Object.
func (b *Bucket) putFile(ctx context.Context, key string, data []byte, wo *blob.WriterOptions) (*Object, error) {
	o, err := b.newObject(ctx, key, wo)
	if err != nil {
		return nil, err
	}
	if _, err := o.Write(data); err != nil {
		o.Abort()
		return nil, err
	}
	return o, o.Commit()
}

// Object is an upload in progress. Nothing is visible at its key until
// Commit succeeds; Abort guarantees nothing ever is.
type Object struct {
	bucket *Bucket
	local  *localFile   // file:// buckets: the temporary file
	file   *os.File     // file:// buckets: the temporary file, synced before commit
	wb     *writeBehind // file:// buckets on Linux, except tmpfs
	key    string
	w      io.Writer    // where Write goes: bw, or file
	bw     *blob.Writer // other buckets
	ctx    context.Context
	cancel context.CancelFunc
	excl   bool // commit only if key does not exist
	h      hash.Hash
	n      int64
	done   bool
	synced bool  // file:// buckets: the temporary file is on disk
	werr   error // the first write error
}

// Upload buffering per object (S3 and Azure): parts of PartSize, at most
// PartConcurrency in flight. s3blob (gocloud v0.47) first buffers up to
// 16 MiB and sends smaller objects in one PUT; only larger ones go out in
// parts. Measured: 53 MB allocated on the client per 32 MiB object
// (BenchmarkS3Upload against versitygw).
const (
	PartSize        = 5 << 20
	PartConcurrency = 2
)

// NewObject starts an upload to key. The caller must Commit or Abort it.
func (b *Bucket) NewObject(ctx context.Context, key, contentType string) (*Object, error) {
	b.requests.Add(1)
	return b.newObject(ctx, key, &blob.WriterOptions{ContentType: contentType})
}

func (b *Bucket) newObject(ctx context.Context, key string, wo *blob.WriterOptions) (*Object, error) {
	wctx, cancel := context.WithCancel(ctx)
	o := &Object{bucket: b, key: key, ctx: wctx, cancel: cancel, h: sha256.New(), excl: wo.IfNotExist}
	if b.local != nil {
		lf, err := b.local.create(key)
		if err != nil {
			cancel()
			return nil, b.redact(fmt.Errorf("create %s: %w", key, err))
		}
		o.local, o.file, o.w = lf, lf.f, lf.f
		o.wb = newWriteBehind(lf.f)
		return o, nil
	}
	wo.BufferSize, wo.MaxConcurrency = PartSize, PartConcurrency
	w, err := b.b.NewWriter(wctx, key, wo)
	if err != nil {
		cancel()
		return nil, b.redact(fmt.Errorf("create %s: %w", key, err))
	}
	o.w, o.bw = w, w
	return o, nil
}

// Write uploads p.
func (o *Object) Write(p []byte) (int, error) {
	n, err := o.w.Write(p)
	o.h.Write(p[:n])
	o.n += int64(n)
	o.synced = o.synced && n == 0
	if o.wb != nil {
		o.wb.wrote(o.n)
	}
	if err != nil {
		if o.local != nil {
			err = fsError(err) // the key, not the temporary file's path
		}
		err = o.bucket.redact(fmt.Errorf("write %s: %w", o.key, err))
		if o.werr == nil {
			o.werr = err
		}
		return n, err
	}
	return n, nil
}

// Err is the first error a Write returned: the cause of a writer that
// failed without passing it on (Arrow's Parquet writer panics with "failed
// to write magic number" when the disk is full, dropping the error).
func (o *Object) Err() error { return o.werr }

// Key is the object's key.
func (o *Object) Key() string { return o.key }

// Size is the number of bytes written.
func (o *Object) Size() int64 { return o.n }

// SHA256 is the hex SHA-256 of the bytes written.
func (o *Object) SHA256() string { return hex.EncodeToString(o.h.Sum(nil)) }

// Sync makes the bytes written so far durable where the bucket is a local
// directory (file://), and does nothing elsewhere: object stores make an
// upload durable when it completes. Commit syncs what Sync has not.
func (o *Object) Sync() error {
	if err := o.sync(); err != nil {
		return o.bucket.redact(fmt.Errorf("sync %s: %w", o.key, err))
	}
	return nil
}

func (o *Object) sync() error {
	if o.file == nil || o.synced {
		return nil
	}
	if err := o.file.Sync(); err != nil {
		return err
	}
	o.synced = true
	return nil
}

// Commit finishes the upload and makes the object visible at its key.
func (o *Object) Commit() (err error) {
	if o.done {
		return fmt.Errorf("commit %s: already finished", o.key)
	}
	o.done = true
	defer o.cancel()
	defer func() {
		// azureblob's Writer.Close panics (nil pointer) when the upload
		// failed: report it as the failed commit it is.
		if p := recover(); p != nil {
			err = o.bucket.redact(fmt.Errorf("commit %s: upload failed (driver panicked: %v)", o.key, p))
		}
	}()
	if o.local != nil {
		// A power cut after the rename must not leave an empty or torn
		// file at the final key: sync the data before the rename (commit
		// syncs the directory after it).
		if err := o.ctx.Err(); err != nil {
			o.local.abort()
			return o.bucket.redact(fmt.Errorf("commit %s: %w", o.key, err))
		}
		if err := o.sync(); err != nil {
			o.local.abort()
			return o.bucket.redact(fmt.Errorf("commit %s: sync: %w", o.key, err))
		}
		if err := o.local.commit(o.excl); err != nil {
			return o.bucket.redact(fmt.Errorf("commit %s: %w", o.key, err))
		}
		return nil
	}
	if err := o.bw.Close(); err != nil {
		return o.bucket.redact(fmt.Errorf("commit %s: %w", o.key, err))
	}
	return nil
}

// Abort cancels the upload: the writer's context is cancelled before Close,
// so no driver commits what was written. It is safe to call after Commit
// (it does nothing then) and more than once.
func (o *Object) Abort() {
	if o.done {
		return
	}
	o.done = true
	o.cancel()
	if o.local != nil {
		o.local.abort()
		return
	}
	func() {
		defer func() {
			// Some drivers' Close panics after a failed upload; the object
			// is abandoned either way.
			_ = recover()
		}()
		_ = o.bw.Close()
	}()
	o.bucket.abortMultipart(o.key)
}

// abortMultipart aborts the incomplete S3 multipart uploads of key. A
// cancelled s3blob writer leaves its multipart upload behind (the abort
// it attempts runs on the cancelled context), and the parts are stored,
// and billed, until aborted. Only this process writes key (the export
// holds the unit's lock), so every upload of key is ours. Best effort;
// the AbortIncompleteMultipartUpload lifecycle rule (README) is the net.
func (b *Bucket) abortMultipart(key string) {
	if b.scheme != "s3" {
		return
	}
	var client *s3.Client
	if !b.b.As(&client) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := b.bucketName
	out, err := client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &name, Prefix: &key})
	if err != nil {
		return
	}
	for _, u := range out.Uploads {
		if u.Key == nil || *u.Key != key {
			continue
		}
		_, _ = client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &name, Key: u.Key, UploadId: u.UploadId})
	}
}

// Move puts the object at src at dst and removes src: one rename in a
// file:// bucket (synced like a commit), a server-side copy then a delete
// elsewhere. moved is false when src does not exist (a move done before,
// whose copy's delete went through): the caller decides from dst. A move
// cut short elsewhere leaves src and dst both whole; doing it again is
// safe. Only a holder of the keys' unit lock may move them.
func (b *Bucket) Move(ctx context.Context, src, dst string) (moved bool, err error) {
	b.requests.Add(1)
	if b.local != nil {
		ok, err := b.local.rename(src, dst)
		if err != nil {
			return false, b.redact(fmt.Errorf("move %s to %s: %w", src, dst, err))
		}
		return ok, nil
	}
	if err := b.b.Copy(ctx, dst, src, nil); err != nil {
		if gcerrors.Code(err) == gcerrors.NotFound {
			return false, nil
		}
		return false, b.redact(fmt.Errorf("move %s to %s: copy: %w", src, dst, err))
	}
	b.requests.Add(1)
	if err := b.b.Delete(ctx, src); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return true, b.redact(fmt.Errorf("move %s to %s: delete the source: %w", src, dst, err))
	}
	return true, nil
}

// RemoveTree deletes every object under the folder prefix (which ends
// with "/"), temporary files of a file:// bucket and the folder itself
// included. Only the holder of the folder's unit lock may remove it.
func (b *Bucket) RemoveTree(ctx context.Context, prefix string) error {
	if !strings.HasSuffix(prefix, "/") {
		return fmt.Errorf("remove %s: not a folder (want a trailing /)", prefix)
	}
	if b.local != nil {
		b.requests.Add(1)
		if err := b.local.removeAll(strings.TrimSuffix(prefix, "/")); err != nil {
			return b.redact(fmt.Errorf("remove %s: %w", prefix, err))
		}
		return nil
	}
	objs, err := b.List(ctx, prefix, "")
	if err != nil {
		return err
	}
	for _, o := range objs {
		if err := b.Delete(ctx, o.Key); err != nil {
			return err
		}
	}
	return nil
}

// InTheWayError is an object that keeps a key from being written: in a
// file:// bucket, a folder at the key.
type InTheWayError struct{ Key, What string }

func (e *InTheWayError) Error() string {
	return fmt.Sprintf("%s is in the way at %s: nothing can be written there until it is removed or renamed", e.What, e.Key)
}

// CheckWritable returns an *InTheWayError for the first key something
// else is in the way of. Only a file:// bucket has such things (a folder
// named like the key); object stores keep "a/b" and "a/b/c" apart.
func (b *Bucket) CheckWritable(ctx context.Context, keys ...string) error {
	if b.local == nil {
		return nil
	}
	for _, k := range keys {
		if dir, err := b.local.isDir(k); err != nil {
			return b.redact(fmt.Errorf("check %s: %w", k, err))
		} else if dir {
			return &InTheWayError{Key: k, What: "a folder"}
		}
	}
	return nil
}

// Size returns the size in bytes of key.
func (b *Bucket) Size(ctx context.Context, key string) (int64, error) {
	b.requests.Add(1)
	a, err := b.b.Attributes(ctx, key)
	if err != nil {
		return 0, b.redact(fmt.Errorf("attributes of %s: %w", key, err))
	}
	return a.Size, nil
}

// ProbeError says which step of a Probe failed: "write", "read" or
// "delete".
type ProbeError struct {
	Op  string
	Err error
}

func (e *ProbeError) Error() string { return fmt.Sprintf("probe %s: %v", e.Op, e.Err) }
func (e *ProbeError) Unwrap() error { return e.Err }

// Probe checks that the bucket takes what an export does at key: a write,
// a read that gives the bytes back, and a delete. The object is deleted
// again whatever failed after the write. A failure is a *ProbeError.
func (b *Bucket) Probe(ctx context.Context, key string) error {
	const content = "probe"
	if err := b.Put(ctx, key, []byte(content), "text/plain", nil); err != nil {
		return &ProbeError{Op: "write", Err: err}
	}
	if got, err := b.ReadAll(ctx, key); err != nil || string(got) != content {
		_ = b.Delete(ctx, key)
		if err == nil {
			err = fmt.Errorf("read back %q, wrote %q", got, content)
		}
		return &ProbeError{Op: "read", Err: err}
	}
	if err := b.Delete(ctx, key); err != nil {
		return &ProbeError{Op: "delete", Err: err}
	}
	return nil
}
