package pipelinetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/jackc/pgx/v5"
	_ "gocloud.dev/blob/fileblob" // the fixture's buckets
	_ "gocloud.dev/blob/memblob"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sources"
)

// Fixture is a database with demo data, a bucket and a runner.
type Fixture struct {
	T     testing.TB
	DBURL string
	Dir   string // the file:// bucket's directory, "" for other buckets
	Dest  string // the destination URL
	// ReadObject, when set, reads objects back instead of the bucket
	// driver (for an emulator whose download path the driver cannot use).
	ReadObject func(key string) ([]byte, error)
	Cfg        *config.File
	Src        *sources.Postgres
	Runner     *pipeline.Runner
	Mem        *memory.CheckedAllocator
}

// New returns a fixture on a new database with demo data and a file://
// bucket in a temporary directory; extraYAML is added to the per_run job.
func New(t testing.TB, extraYAML string) *Fixture {
	t.Helper()
	dir := t.TempDir()
	return NewAt(t, "file://"+dir, dir, extraYAML)
}

// NewAt is New writing to any bucket URL; dir is the directory behind a
// file:// URL, else "".
func NewAt(t testing.TB, dest, dir, extraYAML string) *Fixture {
	t.Helper()
	return NewOn(t, pgtest.NewDatabase(t), dest, dir, extraYAML)
}

// NewOn is NewAt on an existing database.
func NewOn(t testing.TB, dbURL, dest, dir, extraYAML string) *Fixture {
	t.Helper()
	f := &Fixture{T: t, DBURL: dbURL, Dir: dir, Dest: dest}
	f.Load(extraYAML)
	return f
}

// Load (re)loads the config with extraYAML added to the per_run job, and
// opens a source and a runner for it.
func (f *Fixture) Load(extraYAML string) {
	t := f.T
	t.Helper()
	yaml := fmt.Sprintf(`source:
  dsn: %q
jobs:
  - name: new-sellers
    mode: per_run
    destination: %q
    batch_rows: 64
%s
  - name: full-nightly
    mode: full
    destination: %q
`, f.DBURL, f.Dest, extraYAML, f.Dest)
	cfg, err := config.Parse("test.yaml", []byte(yaml), pipeline.CheckConfig)
	if err != nil {
		t.Fatal(err)
	}
	f.Cfg = cfg
	if f.Src != nil {
		f.Src.Close()
	}
	src, err := sources.Open(context.Background(), sources.Config{DSN: f.DBURL, SellersTable: cfg.Source.SellersTable})
	if err != nil {
		t.Fatal(err)
	}
	f.Src = src
	f.Mem = memory.NewCheckedAllocator(memory.NewGoAllocator())
	f.Runner = &pipeline.Runner{Source: src, Version: "test", Allocator: f.Mem, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now: func() time.Time { return time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC) }}
	runner, mem := f.Runner, f.Mem
	t.Cleanup(func() {
		runner.Close()
		src.Close()
		mem.AssertSize(t, 0)
	})
}

// Job returns the job called name, compiled.
func (f *Fixture) Job(name string) *pipeline.Job {
	j, _, err := f.Cfg.Job(name)
	if err != nil {
		f.T.Fatal(err)
	}
	job, err := pipeline.NewJob(j)
	if err != nil {
		f.T.Fatal(err)
	}
	return job
}

// Jobs returns every job of the config, compiled.
func (f *Fixture) Jobs() []*pipeline.Job {
	var out []*pipeline.Job
	for _, j := range f.Cfg.Jobs {
		out = append(out, f.Job(j.Name))
	}
	return out
}

// Once runs Once for job and returns its result and the bucket's objects.
func (f *Fixture) Once(job string) (pipeline.Result, map[string][]byte) {
	f.T.Helper()
	res, err := f.Runner.Once(context.Background(), f.Job(job))
	if err != nil {
		f.T.Fatal(err)
	}
	return res, f.Files()
}

// Files returns every object in the bucket, by key, but the export state
// (under _sellersnap/) and temporary files of a file:// bucket.
func (f *Fixture) Files() map[string][]byte {
	out := f.AllFiles()
	for k := range out {
		if strings.HasPrefix(k, "_sellersnap/") || strings.Contains(k, "/_sellersnap/") {
			delete(out, k)
		}
	}
	return out
}

// AllFiles is Files with the export state.
func (f *Fixture) AllFiles() map[string][]byte {
	out := map[string][]byte{}
	if f.Dir == "" {
		ctx := context.Background()
		b, err := f.Runner.Bucket(ctx, f.Dest)
		if err != nil {
			f.T.Fatal(err)
		}
		objs, err := b.List(ctx, "", "")
		if err != nil {
			f.T.Fatal(err)
		}
		read := func(key string) ([]byte, error) { return b.ReadUpTo(ctx, key, 1<<40) }
		if f.ReadObject != nil {
			read = f.ReadObject
		}
		for _, o := range objs {
			data, err := read(o.Key)
			if err != nil {
				f.T.Fatal(err)
			}
			out[o.Key] = data
		}
		return out
	}
	err := filepath.WalkDir(f.Dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // a temporary file renamed or removed mid-walk
		}
		if err != nil || d.IsDir() || strings.HasSuffix(p, ".tmp") {
			return err
		}
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		rel, _ := filepath.Rel(f.Dir, p)
		out[filepath.ToSlash(rel)] = b
		return err
	})
	if err != nil {
		f.T.Fatal(err)
	}
	return out
}

// Manifests returns the run ids that have a manifest in the bucket.
func (f *Fixture) Manifests() map[string]bool {
	out := map[string]bool{}
	for k := range f.Files() {
		if i := strings.Index(k, "/run="); i >= 0 && strings.HasSuffix(k, "/manifest.json") {
			out[strings.TrimSuffix(k[i+5:], "/manifest.json")] = true
		}
	}
	return out
}

// AnyOrg returns the org of a completed run.
func (f *Fixture) AnyOrg() string {
	runs, err := f.Src.CompletedRuns(context.Background())
	if err != nil || len(runs) == 0 {
		f.T.Fatal(err)
	}
	return runs[0].OrgID
}

// InsertRun adds a completed run of org with n sellers and returns its id;
// with notify, it announces the run on collection_run_completed.
func InsertRun(t *testing.T, dbURL, org string, n int, notify bool) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// The run and its sellers commit together, as the source contract
	// (README) asks of the collector: a daemon polling between two
	// autocommitted statements would export the run without its sellers.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var id string
	err = tx.QueryRow(ctx, `INSERT INTO collection_runs VALUES (gen_random_uuid(), $1, 'completed', now() - interval '1 minute', clock_timestamp()) RETURNING id::text`, org).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, `INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
		SELECT gen_random_uuid(), $1, 'New ' || g, 'new ' || g, 'ebay', 1, false, $2, now() - g * interval '1 ms' FROM generate_series(1, $3) g`, org, id, n)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	pgtest.FlushStats(ctx, conn)
	if notify {
		if _, err := conn.Exec(ctx, `SELECT pg_notify('collection_run_completed', $1)`, id); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

// WaitFor polls cond until it holds, failing the test after deadline.
func WaitFor(t *testing.T, what string, deadline time.Duration, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out after %s waiting for %s", deadline, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
