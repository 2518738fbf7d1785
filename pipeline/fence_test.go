package pipeline_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"path"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/jackc/pgx/v5"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// TestLostLockNeverChangesAPublishedExport: exporter A of a unit loses its
// advisory lock (its lock session is terminated) while it holds finished
// files it has not committed yet; exporter B takes the lock, reads a newer
// snapshot and publishes the unit. When A goes on, it must not commit
// anything: B's manifest must list exactly the bytes at its keys.
func TestLostLockNeverChangesAPublishedExport(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	job, run := f.Job("new-sellers"), f.lastRun()

	newRunner := func() *pipeline.Runner {
		src, err := sources.Open(ctx, sources.Config{DSN: f.DBURL})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(src.Close)
		r := &pipeline.Runner{Source: src, Version: "test", Allocator: memory.NewGoAllocator(),
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Locker: pipeline.PostgresLocker(src)}
		t.Cleanup(func() { r.Close() })
		return r
	}
	a, b := newRunner(), newRunner()
	paused, resume := make(chan struct{}), make(chan struct{})
	pipeline.SetBeforeCommit(a, func() { close(paused); <-resume })
	aDone := make(chan error, 1)
	go func() {
		_, err := a.ExportPending(ctx, job, run.ID)
		aDone <- err
	}()
	select {
	case <-paused:
	case err := <-aDone:
		t.Fatalf("A finished without reaching its commit: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("A did not reach its commit")
	}

	// A's lock session dies; the database changes; B exports the unit.
	conn, err := pgx.Connect(ctx, f.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var killed int
	if err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted`).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d lock sessions (%v), want 1", killed, err)
	}
	addLateSeller(t, f.DBURL, run.ID)
	res, err := b.ExportPending(ctx, job, run.ID)
	if err != nil || len(res.Exported) != 1 {
		t.Fatalf("B: %+v, %v", res, err)
	}

	close(resume)
	if err := <-aDone; err == nil {
		t.Error("A reported success after losing its lock")
	} else {
		t.Logf("A: %v", err)
	}
	bucket, err := b.Bucket(ctx, f.Dest)
	if err != nil {
		t.Fatal(err)
	}
	if published := checkManifestMatchesBytes(t, bucket, res.Exported[0]); !sameFiles(published, res.Exported[0]) {
		t.Errorf("the manifest at the key is not the one B published")
	}
}

// checkManifestMatchesBytes fails unless the manifest published in the
// folder of m's files lists exactly the bytes at its keys, and returns it.
func checkManifestMatchesBytes(t *testing.T, bucket *sinks.Bucket, m *pipeline.Manifest) *pipeline.Manifest {
	t.Helper()
	ctx := context.Background()
	data, err := bucket.ReadAll(ctx, path.Join(path.Dir(m.Files[0].Key), pipeline.ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	var published pipeline.Manifest
	if err := json.Unmarshal(data, &published); err != nil {
		t.Fatal(err)
	}
	for _, mf := range published.Files {
		data, err := bucket.ReadUpTo(ctx, mf.Key, 1<<40)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if int64(len(data)) != mf.Bytes || hex.EncodeToString(sum[:]) != mf.SHA256 {
			t.Errorf("%s: %d bytes, sha256 %x; the published manifest says %d bytes, %s", mf.Key, len(data), sum[:4], mf.Bytes, mf.SHA256[:8])
		}
	}
	return &published
}

// sameFiles reports whether two manifests list the same bytes.
func sameFiles(a, b *pipeline.Manifest) bool {
	x, _ := json.Marshal(a.Files)
	y, _ := json.Marshal(b.Files)
	return bytes.Equal(x, y)
}

// TestExporterWithoutTheLockCannotLeaveAMismatchedManifest: a process that
// exports without the lock (Locker unset, or a lock lost in the instant
// between its check and its commit) commits its files over a unit another
// process has just published. Pass: it fails, or it succeeds and the
// manifest at the key is its own; either way the manifest there lists
// exactly the bytes at its keys. (file://: the publisher removed the stale
// temporary files, so the late commit fails; mem://, like S3, keeps no
// temporary files, so the late commit lands and the manifest is replaced.)
func TestExporterWithoutTheLockCannotLeaveAMismatchedManifest(t *testing.T) {
	dir := t.TempDir()
	for _, dest := range []string{"file://" + dir, "mem://"} {
		t.Run(dest[:4], func(t *testing.T) {
			f := newFixtureAt(t, dest, dir, "")
			ctx := context.Background()
			job, run := f.Job("new-sellers"), f.lastRun()
			paused, resume := make(chan struct{}), make(chan struct{})
			var taken atomic.Bool // only the first export pauses
			pipeline.SetBeforeCommit(f.Runner, func() {
				if taken.CompareAndSwap(false, true) {
					close(paused)
					<-resume
				}
			})
			aDone := make(chan error, 1)
			var aRes pipeline.Result
			go func() {
				var err error
				aRes, err = f.Runner.ExportPending(ctx, job, run.ID)
				aDone <- err
			}()
			<-paused
			addLateSeller(t, f.DBURL, run.ID)
			res, err := f.Runner.ExportPending(ctx, job, run.ID)
			if err != nil || len(res.Exported) != 1 {
				t.Fatalf("B: %+v, %v", res, err)
			}
			close(resume)
			aErr := <-aDone
			bucket, err := f.Runner.Bucket(ctx, dest)
			if err != nil {
				t.Fatal(err)
			}
			published := checkManifestMatchesBytes(t, bucket, res.Exported[0])
			switch {
			case aErr != nil:
				t.Logf("A failed: %v", aErr)
				if !sameFiles(published, res.Exported[0]) {
					t.Errorf("A failed, but the manifest at the key is not B's")
				}
			case len(aRes.Exported) != 1 || !sameFiles(published, aRes.Exported[0]):
				t.Errorf("A succeeded, but the manifest at the key is not A's")
			default:
				t.Logf("A committed over B and replaced its manifest")
			}
		})
	}
}

// lastRun is the fixture's newest completed run.
func (f *fixture) lastRun() sources.Run {
	f.T.Helper()
	runs, err := f.Src.CompletedRuns(context.Background())
	if err != nil || len(runs) == 0 {
		f.T.Fatalf("completed runs: %d, %v", len(runs), err)
	}
	return runs[len(runs)-1]
}

// addLateSeller adds a seller to a run, so that a later snapshot of it
// differs from an earlier one.
func addLateSeller(t *testing.T, dbURL, runID string) {
	t.Helper()
	pgtest.Exec(t, dbURL, `INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
		SELECT gen_random_uuid(), org_id, 'Late', 'late', 'ebay', 1, false, id, now() FROM collection_runs WHERE id = $1`, runID)
}

// TestTheLockIsHeldByTheSnapshot: with PostgresLocker, a unit's advisory
// lock belongs to the transaction that reads the unit (the backend with a
// snapshot), not to a second session: one connection per export, and the
// lock cannot outlive the snapshot it protects.
func TestTheLockIsHeldByTheSnapshot(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	src, err := sources.Open(ctx, sources.Config{DSN: f.DBURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Close)
	r := &pipeline.Runner{Source: src, Version: "test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Locker: pipeline.PostgresLocker(src)}
	t.Cleanup(func() { r.Close() })
	var holders, withSnapshot int
	pipeline.SetBeforeCommit(r, func() {
		err := pgxQueryRow(t, f.DBURL, `SELECT count(*), count(*) FILTER (WHERE a.backend_xmin IS NOT NULL AND a.xact_start IS NOT NULL)
			FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' AND l.granted`, &holders, &withSnapshot)
		if err != nil {
			t.Error(err)
		}
	})
	if res, err := r.ExportPending(ctx, f.Job("new-sellers"), f.lastRun().ID); err != nil || len(res.Exported) != 1 {
		t.Fatalf("export: %+v, %v", res, err)
	}
	if holders != 1 || withSnapshot != 1 {
		t.Errorf("during the export %d sessions held advisory locks, %d of them in a snapshot; want the snapshot's own", holders, withSnapshot)
	}
}

func pgxQueryRow(t *testing.T, url, q string, dest ...any) error {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, q).Scan(dest...)
}
