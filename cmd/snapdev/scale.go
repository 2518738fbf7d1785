package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	_ "gocloud.dev/blob/fileblob"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/internal/demodata"
	"github.com/sellersnap/sellersnap/internal/pgtemp"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// scale measures what discovery costs as the history grows (docs/scaling.md):
// for each history size, a database with that many completed runs spread
// over orgs and a year, a file:// bucket holding a manifest for each, and
// the real Runner: the first pass (which builds the export state from the
// manifests), an idle pass, a pass with 10 new runs, plan, and the daily
// reconciliation. Then a full snapshot of the orgs with 1 and 3 replicas.
func scale(ctx context.Context, histories []int, orgs int) error {
	srv, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		return err
	}
	defer srv.Stop()
	fmt.Printf("| history (runs) | step | wall | bucket requests | runs exported (plan: pending) | peak RSS |\n|---|---|---|---|---|---|\n")
	for _, n := range histories {
		if err := scaleOne(ctx, srv, n, orgs); err != nil {
			return fmt.Errorf("history %d: %w", n, err)
		}
	}
	return scaleFull(ctx, srv, orgs)
}

func newDB(ctx context.Context, srv *pgtemp.Server, name string) (string, error) {
	conn, err := pgx.Connect(ctx, srv.URL("postgres"))
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	url := srv.URL(name)
	db, err := pgx.Connect(ctx, url)
	if err != nil {
		return "", err
	}
	defer db.Close(ctx)
	_, err = db.Exec(ctx, demodata.Schema+`CREATE INDEX ON collection_runs (status, completed_at) INCLUDE (id, org_id);`)
	return url, err
}

func scaleRunner(ctx context.Context, dbURL string, now func() time.Time) (*pipeline.Runner, func(), error) {
	src, err := sources.Open(ctx, sources.Config{DSN: dbURL, Conns: 2})
	if err != nil {
		return nil, nil, err
	}
	r := &pipeline.Runner{Source: src, Version: "scale", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Locker: pipeline.PostgresLocker(src), Now: now}
	return r, func() { r.Close(); src.Close() }, nil
}

func scaleJob(dest string) (*pipeline.Job, *pipeline.Job, error) {
	cfg, err := config.Parse("scale.yaml", []byte(fmt.Sprintf(`source: {dsn: x}
jobs:
  - {name: new-sellers, mode: per_run, destination: %q}
  - {name: full-nightly, mode: full, destination: %q}
`, dest, dest)), pipeline.CheckConfig)
	if err != nil {
		return nil, nil, err
	}
	perRun, err := pipeline.NewJob(cfg.Jobs[0])
	if err != nil {
		return nil, nil, err
	}
	full, err := pipeline.NewJob(cfg.Jobs[1])
	return perRun, full, err
}

func scaleOne(ctx context.Context, srv *pgtemp.Server, n, orgs int) error {
	dbURL, err := newDB(ctx, srv, fmt.Sprintf("scale_%d", n))
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if err := scaleHistory(ctx, conn, n, orgs); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "sellersnap-scale-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	job, _, err := scaleJob("file://" + dir)
	if err != nil {
		return err
	}
	clock := time.Now()
	now := func() time.Time { return clock }
	r, closeRunner, err := scaleRunner(ctx, dbURL, now)
	if err != nil {
		return err
	}
	defer closeRunner()
	if err := writeHistoryManifests(ctx, r, job, dir); err != nil {
		return err
	}
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return err
	}
	m := &scaleMeter{n: n, bucket: bucket}
	step, repeat := m.step, m.repeat
	once := func(want int) func() (int, error) {
		return func() (int, error) {
			res, err := r.Once(ctx, job)
			if err == nil && len(res.Exported) != want {
				err = fmt.Errorf("exported %d runs, want %d", len(res.Exported), want)
			}
			return len(res.Exported), err
		}
	}
	if err := step("first pass (builds the state: reads every manifest once)", once(0)); err != nil {
		return err
	}
	if err := repeat("idle pass", 21, once(0)); err != nil {
		return err
	}
	if err := repeat("the digest of the runs below the watermark (database; every pass reads it)", 21, func() (int, error) {
		snap, err := r.Source.Snapshot(ctx)
		if err != nil {
			return 0, err
		}
		defer snap.Close(ctx)
		_, err = snap.RunsDigest(ctx, 42, snap.Time().Add(-time.Hour))
		return 0, err
	}); err != nil {
		return err
	}
	var orgID string
	if err := conn.QueryRow(ctx, `SELECT org_id::text FROM collection_runs LIMIT 1`).Scan(&orgID); err != nil {
		return err
	}
	for i := 0; i < 10; i++ {
		if err := demoRun(ctx, conn, orgID, 100); err != nil {
			return err
		}
	}
	if err := step("pass with 10 new runs (100 sellers each)", once(10)); err != nil {
		return err
	}
	if err := repeat("idle pass after them", 21, once(0)); err != nil {
		return err
	}
	if err := step("plan (idle)", func() (int, error) {
		p, err := r.Plan(ctx, job)
		return len(p), err
	}); err != nil {
		return err
	}
	clock = clock.Add(25 * time.Hour)
	return step("daily reconciliation (idle)", once(0))
}

// scaleHistory inserts n completed runs over the last year, round-robin
// over orgs, and vacuums as autovacuum would have.
func scaleHistory(ctx context.Context, conn *pgx.Conn, n, orgs int) error {
	_, err := conn.Exec(ctx, `WITH o AS (SELECT array_agg(gen_random_uuid()) AS ids FROM generate_series(1, $2))
		INSERT INTO collection_runs SELECT gen_random_uuid(), o.ids[1 + g % $2], 'completed',
		  now() - interval '366 days' + g * (interval '365 days' / $1), now() - interval '366 days' + g * (interval '365 days' / $1) + interval '1 minute'
		FROM o, generate_series(1, $1) g`, n, orgs)
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, `VACUUM ANALYZE collection_runs`)
	return err
}

// writeHistoryManifests writes a manifest per completed run under dir, as
// earlier exports left them.
func writeHistoryManifests(ctx context.Context, r *pipeline.Runner, job *pipeline.Job, dir string) error {
	runs, err := r.Source.CompletedRuns(ctx)
	if err != nil {
		return err
	}
	for _, run := range runs {
		key, err := job.RunManifestKey(run)
		if err != nil {
			return err
		}
		p := filepath.Join(dir, filepath.FromSlash(key))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(`{"manifest_version": 1, "job": "new-sellers"}`), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// scaleMeter prints a table row per measured step: wall time, bucket
// requests, rows and peak RSS.
type scaleMeter struct {
	n      int
	bucket *sinks.Bucket
}

func (m *scaleMeter) step(name string, f func() (int, error)) error {
	reqs := m.bucket.Requests()
	start := time.Now()
	rows, err := f()
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	fmt.Printf("| %d | %s | %.1f ms | %d | %d | %d MiB |\n", m.n, name, float64(time.Since(start).Microseconds())/1000, m.bucket.Requests()-reqs, rows, peakRSS()>>20)
	return nil
}

// repeat runs f reps times and prints the median wall time with the
// spread, and the bucket requests of one run.
func (m *scaleMeter) repeat(name string, reps int, f func() (int, error)) error {
	walls := make([]time.Duration, reps)
	var reqs int64
	var rows int
	for i := range walls {
		before := m.bucket.Requests()
		start := time.Now()
		var err error
		if rows, err = f(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		walls[i] = time.Since(start)
		reqs = m.bucket.Requests() - before
	}
	slices.Sort(walls)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	fmt.Printf("| %d | %s (median of %d, min–max %.2f–%.2f ms) | %.2f ms | %d | %d | %d MiB |\n",
		m.n, name, reps, ms(walls[0]), ms(walls[reps-1]), ms(walls[reps/2]), reqs, rows, peakRSS()>>20)
	return nil
}

// demoRun adds a completed run of org with n sellers, committed
// together as the source contract (README) asks of the collector.
func demoRun(ctx context.Context, conn *pgx.Conn, org string, n int) error {
	_, err := conn.Exec(ctx, `WITH r AS (INSERT INTO collection_runs VALUES (gen_random_uuid(), $1, 'completed', now(), clock_timestamp()) RETURNING id)
		INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
		SELECT gen_random_uuid(), $1, 'S ' || g, 's ' || g, 'ebay', 1, false, r.id, now() - g * interval '1 ms' FROM r, generate_series(1, $2) g`, org, n)
	return err
}

// scaleFull exports one date's full snapshot of orgs orgs (100 sellers
// each) with 1 and with 3 replicas.
func scaleFull(ctx context.Context, srv *pgtemp.Server, orgs int) error {
	dbURL, err := newDB(ctx, srv, "scale_full")
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, `INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, created_at)
		SELECT gen_random_uuid(), o.id, 'S ' || g, 's ' || g, 'ebay', 1, false, now() - g * interval '1 s'
		FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, $1)) o, generate_series(1, 100) g`, orgs)
	conn.Close(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("\n| full snapshot of %d orgs (100 sellers each) | wall | orgs per replica |\n|---|---|---|\n", orgs)
	for _, replicas := range []int{1, 3} {
		dir, err := os.MkdirTemp("", "sellersnap-scale-full-")
		if err != nil {
			return err
		}
		_, job, err := scaleJob("file://" + dir)
		if err != nil {
			return err
		}
		counts := make([]int, replicas)
		errs := make([]error, replicas)
		var runners []*pipeline.Runner
		for range replicas {
			r, closeRunner, err := scaleRunner(ctx, dbURL, time.Now)
			if err != nil {
				return err
			}
			defer closeRunner()
			runners = append(runners, r)
		}
		start := time.Now()
		var wg sync.WaitGroup
		for i, r := range runners {
			wg.Go(func() {
				res, err := r.Once(ctx, job)
				counts[i], errs[i] = len(res.Exported), err
			})
		}
		wg.Wait()
		took := time.Since(start)
		os.RemoveAll(dir)
		total := 0
		for i, err := range errs {
			if err != nil {
				return err
			}
			total += counts[i]
		}
		if total != orgs {
			return fmt.Errorf("%d replicas exported %d orgs, want %d", replicas, total, orgs)
		}
		parts := make([]string, replicas)
		for i, c := range counts {
			parts[i] = strconv.Itoa(c)
		}
		fmt.Printf("| %d replica(s) | %.2f s | %s |\n", replicas, took.Seconds(), strings.Join(parts, " / "))
	}
	return nil
}

func peakRSS() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Maxrss << 10
}
