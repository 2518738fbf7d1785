package pipeline_test

import (
	"context"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sources"
)

// records keeps log records so tests can see what a daemon did.
type records struct {
	mu   sync.Mutex
	msgs []map[string]string
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	m := map[string]string{"msg": rec.Message, "level": rec.Level.String()}
	rec.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
	return nil
}

// exported returns the run ids of "exported" records, in order.
func (r *records) exported() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.msgs {
		if m["msg"] == "exported" {
			out = append(out, m["run_id"])
		}
	}
	return out
}

func (r *records) errors() []map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]string
	for _, m := range r.msgs {
		if m["level"] == "ERROR" || (m["level"] == "WARN" && m["msg"] != "coalesced: the job is busy and already has a run queued") {
			out = append(out, m)
		}
	}
	return out
}

// daemon starts a daemon on f's database and bucket; stop stops it
// (soft, then abort after grace) and waits for Run to return.
func (f *fixture) daemon(schedule, table string, notify bool, grace time.Duration) (rec *records, stop func()) {
	f.t.Helper()
	job := *f.job("new-sellers")
	sched, err := config.ParseSchedule(schedule)
	if err != nil {
		f.t.Fatal(err)
	}
	job.Cron, job.Schedule = sched, schedule
	return f.daemonFor([]*pipeline.Job{&job}, table, notify, grace)
}

func (f *fixture) daemonFor(jobs []*pipeline.Job, table string, notify bool, grace time.Duration) (rec *records, stop func()) {
	t := f.t
	t.Helper()
	ctx := context.Background()
	src, err := sources.Open(ctx, sources.Config{DSN: f.dbURL, SellersTable: table})
	if err != nil {
		t.Fatal(err)
	}
	rec = &records{}
	runner := &pipeline.Runner{Source: src, Version: "test", Logger: slog.New(rec), Locker: pipeline.PostgresLocker(src),
		Retry: pipeline.Backoff{Attempts: 3, Initial: 100 * time.Millisecond, Max: time.Second}}
	runner.Now = f.runner.Now
	runner.Metrics = pipeline.NewMetrics()
	d := &pipeline.Daemon{Runner: runner, Jobs: jobs, Listen: "127.0.0.1:0"}
	f.daemons = append(f.daemons, d)
	if notify {
		d.NotifyChannel = "collection_run_completed"
	}
	soft, cancelSoft := context.WithCancel(ctx)
	work, cancelWork := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- d.Run(soft, work) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancelSoft()
		timer := time.AfterFunc(grace, cancelWork)
		defer timer.Stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("daemon: %v", err)
			}
		case <-time.After(grace + 15*time.Second):
			t.Fatal("daemon did not stop")
		}
		cancelWork()
		runner.Close()
		src.Close()
	}
	t.Cleanup(stop)
	return rec, stop
}

// insertRun adds a completed run of org with n sellers and returns its id.
func insertRun(t *testing.T, dbURL, org string, n int, notify bool) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var id string
	err = conn.QueryRow(ctx, `INSERT INTO collection_runs VALUES (gen_random_uuid(), $1, 'completed', now() - interval '1 minute', clock_timestamp()) RETURNING id::text`, org).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, `INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
		SELECT gen_random_uuid(), $1, 'New ' || g, 'new ' || g, 'ebay', 1, false, $2, now() - g * interval '1 ms' FROM generate_series(1, $3) g`, org, id, n)
	if err != nil {
		t.Fatal(err)
	}
	if notify {
		if _, err := conn.Exec(ctx, `SELECT pg_notify('collection_run_completed', $1)`, id); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

func (f *fixture) anyOrg() string {
	runs, err := f.src.CompletedRuns(context.Background())
	if err != nil || len(runs) == 0 {
		f.t.Fatal(err)
	}
	return runs[0].OrgID
}

// manifests returns the run ids that have a manifest in the bucket.
func (f *fixture) manifests() map[string]bool {
	out := map[string]bool{}
	for k := range f.files() {
		if i := strings.Index(k, "/run="); i >= 0 && strings.HasSuffix(k, "/manifest.json") {
			out[strings.TrimSuffix(k[i+5:], "/manifest.json")] = true
		}
	}
	return out
}

func waitFor(t *testing.T, what string, deadline time.Duration, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out after %s waiting for %s", deadline, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDaemonCatchUpThenNotify(t *testing.T) {
	f := newFixture(t, "")
	runs, err := f.src.CompletedRuns(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rec, stop := f.daemon("@yearly", "sellers", true, 5*time.Second)

	// Start-up catch-up: every completed run, oldest first.
	waitFor(t, "start-up catch-up", 30*time.Second, func() bool { return len(f.manifests()) == len(runs) })
	var want []string
	for _, r := range runs {
		want = append(want, r.ID)
	}
	if got := rec.exported(); !slices.Equal(got, want) {
		t.Errorf("exported %v, want oldest first %v", got, want)
	}

	// A notification exports a new run at once (the schedule is yearly).
	id := insertRun(t, f.dbURL, f.anyOrg(), 50, true)
	waitFor(t, "the notified run's manifest", 10*time.Second, func() bool { return f.manifests()[id] })
	stop()
	if errs := rec.errors(); len(errs) > 0 {
		t.Errorf("errors logged: %v", errs)
	}
}

func TestDaemonScheduleExportsRunsAsTheyComplete(t *testing.T) {
	f := newFixture(t, "")
	rec, stop := f.daemon("* * * * * *", "sellers", false, 5*time.Second)
	waitFor(t, "start-up catch-up", 30*time.Second, func() bool { return len(f.manifests()) == 10 })
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, insertRun(t, f.dbURL, f.anyOrg(), 20, false))
	}
	waitFor(t, "runs completed while the daemon runs", 15*time.Second, func() bool {
		m := f.manifests()
		return m[ids[0]] && m[ids[1]] && m[ids[2]]
	})
	stop()
	if got := rec.exported(); len(got) != 13 {
		t.Errorf("%d exports, want 13: %v", len(got), got)
	}
}

func TestThreeDaemonsExportEachRunOnce(t *testing.T) {
	f := newFixture(t, "")
	var recs []*records
	var stops []func()
	for i := 0; i < 3; i++ {
		rec, stop := f.daemon("* * * * * *", "sellers", true, 5*time.Second)
		recs, stops = append(recs, rec), append(stops, stop)
	}
	org := f.anyOrg()
	for i := 0; i < 20; i++ {
		insertRun(t, f.dbURL, org, 30, i%2 == 0)
		time.Sleep(20 * time.Millisecond)
	}
	waitFor(t, "30 manifests", 60*time.Second, func() bool { return len(f.manifests()) == 30 })
	for _, stop := range stops {
		stop()
	}
	count := map[string]int{}
	busy := 0
	for _, r := range recs {
		got := r.exported()
		if len(got) > 0 {
			busy++
		}
		for _, id := range got {
			count[id]++
		}
		if errs := r.errors(); len(errs) > 0 {
			t.Errorf("errors logged: %v", errs)
		}
	}
	for id, n := range count {
		if n != 1 {
			t.Errorf("run %s exported %d times", id, n)
		}
	}
	if len(count) != 30 {
		t.Errorf("%d runs exported, want 30", len(count))
	}
	if busy < 2 {
		t.Errorf("only %d of 3 replicas exported anything: the backlog was not shared", busy)
	}
}

func TestShutdownCancelsAnExportCleanly(t *testing.T) {
	f := newFixture(t, "")
	pgtest.Exec(t, f.dbURL, `CREATE FUNCTION slow(uuid) RETURNS bool LANGUAGE plpgsql VOLATILE AS $$ BEGIN PERFORM pg_sleep(0.02); RETURN true; END $$;
		CREATE VIEW slow_sellers AS SELECT * FROM sellers WHERE slow(id)`)
	_, stop := f.daemon("@yearly", "slow_sellers", false, 300*time.Millisecond)
	time.Sleep(time.Second) // the first run (a few hundred rows at 20 ms each) is in flight
	start := time.Now()
	stop()
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("stopping took %s with a 300ms grace", took)
	}
	files := f.files()
	for k := range files {
		if _, ok := files[k[:strings.LastIndex(k, "/")]+"/manifest.json"]; !ok {
			t.Errorf("an aborted export left %s", k)
		}
	}
	// The next start exports everything.
	_, stop = f.daemon("@yearly", "sellers", false, 5*time.Second)
	waitFor(t, "export after restart", 30*time.Second, func() bool { return len(f.manifests()) == 10 })
	stop()
}

func TestTerminatedConnectionsRecover(t *testing.T) {
	f := newFixture(t, "")
	pgtest.Exec(t, f.dbURL, `CREATE FUNCTION slow(uuid) RETURNS bool LANGUAGE plpgsql VOLATILE AS $$ BEGIN PERFORM pg_sleep(0.002); RETURN true; END $$;
		CREATE VIEW slow_sellers AS SELECT * FROM sellers WHERE slow(id)`)
	rec, stop := f.daemon("@yearly", "slow_sellers", true, 5*time.Second)
	defer stop()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Terminate every sellersnap backend a few times while runs export:
	// the snapshot, the lock and the LISTEN connections all go.
	var killed int
	for i := 0; i < 3; i++ {
		time.Sleep(700 * time.Millisecond)
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE application_name = 'sellersnap' AND pid <> pg_backend_pid()`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		killed += n
	}
	if killed == 0 {
		t.Fatal("no sellersnap backend was terminated")
	}
	// Retries and the next passes export everything; the LISTEN
	// connection is back: a notified run lands.
	waitFor(t, "all runs after terminations", 60*time.Second, func() bool { return len(f.manifests()) == 10 })
	id := insertRun(t, f.dbURL, f.anyOrg(), 5, true)
	waitFor(t, "a notified run after LISTEN reconnected", 30*time.Second, func() bool { return f.manifests()[id] })
	stop()
	retried := false
	for _, m := range rec.errors() {
		if m["msg"] == "transient error; retrying" || strings.Contains(m["msg"], "LISTEN connection lost") {
			retried = true
		}
	}
	if !retried {
		t.Errorf("no retry or reconnect was logged after %d terminations", killed)
	}
	files := f.files()
	for k := range files {
		if _, ok := files[k[:strings.LastIndex(k, "/")]+"/manifest.json"]; !ok && path.Base(k) != pipeline.LatestName && path.Base(k) != pipeline.SchemaName {
			t.Errorf("a terminated export left %s", k)
		}
	}
}

func TestFullJobCatchup(t *testing.T) {
	for _, tc := range []struct {
		catchup string
		dates   int
	}{{"none", 0}, {"latest", 1}, {"all", 31}} {
		t.Run(tc.catchup, func(t *testing.T) {
			f := newFixture(t, "")
			job := *f.job("full-nightly") // schedule 0 2 * * * UTC; the fixture's clock says 2026-11-22 12:00
			job.Catchup = tc.catchup
			_, stop := f.daemonFor([]*pipeline.Job{&job}, "sellers", false, 5*time.Second)
			want := tc.dates * pgtest.DemoOptions.Orgs
			count := func() (n int, dates map[string]bool) {
				dates = map[string]bool{}
				for k := range f.files() {
					if strings.HasPrefix(k, "sellers/full/") && strings.HasSuffix(k, "/manifest.json") {
						n++
						dates[k[strings.Index(k, "/date=")+6:][:10]] = true
					}
				}
				return n, dates
			}
			if want == 0 {
				time.Sleep(1500 * time.Millisecond)
			} else {
				waitFor(t, "catch-up snapshots", 60*time.Second, func() bool { n, _ := count(); return n == want })
			}
			stop()
			n, dates := count()
			if n != want {
				t.Fatalf("%d snapshots, want %d", n, want)
			}
			if tc.dates >= 1 && !dates["2026-11-22"] {
				t.Errorf("the latest slot's date is missing: %v", dates)
			}
			if tc.dates == 31 && (!dates["2026-10-23"] || dates["2026-10-22"]) {
				t.Errorf("catchup all dates: %v", dates)
			}
		})
	}
}

// count reports how many records with msg (and, for each pair in kv, that
// attribute) were logged.
func (r *records) count(msg string, kv ...string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		ok := m["msg"] == msg
		for i := 0; ok && i+1 < len(kv); i += 2 {
			ok = m[kv[i]] == kv[i+1]
		}
		if ok {
			n++
		}
	}
	return n
}

// TestDaemonLogsWhatAnOperatorFollows: start-up names each job with its
// schedule, next run and destination and says it is listening; a failing
// job says when it recovers, a lost LISTEN connection when it is back; a
// stop is one line when done.
func TestDaemonLogsWhatAnOperatorFollows(t *testing.T) {
	f := newFixture(t, "")
	rec, stop := f.daemon("*/1 * * * * *", "sellers", true, 5*time.Second)
	waitFor(t, "start-up", 30*time.Second, func() bool {
		return rec.count("job scheduled", "job", "new-sellers", "schedule", "*/1 * * * * *") == 1 && rec.count("listening for notifications") == 1
	})
	// A pass fails (the table is gone), then succeeds again.
	pgtest.Exec(t, f.dbURL, `ALTER TABLE sellers RENAME TO sellers_away`)
	waitFor(t, "a failed pass", 30*time.Second, func() bool { return rec.count("job pass failed; the next tick retries", "job", "new-sellers") > 0 })
	// Each failure names its job and unit once: in the attributes, not
	// again inside the error (a unit's failure is logged by itself; the
	// pass's line counts them).
	for _, m := range rec.errors() {
		if strings.Contains(m["err"], "job new-sellers") {
			t.Errorf("%q: the job is named again in the error: %v", m["msg"], m)
		}
	}
	pgtest.Exec(t, f.dbURL, `ALTER TABLE sellers_away RENAME TO sellers`)
	waitFor(t, "the recovery", 30*time.Second, func() bool { return rec.count("job recovered: a pass succeeded again", "job", "new-sellers") == 1 })
	// The LISTEN connection is terminated and comes back.
	pgtest.Exec(t, f.dbURL, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`)
	waitFor(t, "LISTEN back", 30*time.Second, func() bool { return rec.count("LISTEN recovered") == 1 })
	stop()
	if n := rec.count("stopped"); n != 1 {
		t.Errorf("%d 'stopped' lines, want 1", n)
	}
}
