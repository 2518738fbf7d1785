package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/internal/daemon"
	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/internal/pipelinetest"
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
	f.T.Helper()
	job := *f.Job("new-sellers")
	sched, err := config.ParseSchedule(schedule)
	if err != nil {
		f.T.Fatal(err)
	}
	job.Cron, job.Schedule = sched, schedule
	return f.daemonFor([]*pipeline.Job{&job}, table, notify, grace)
}

func (f *fixture) daemonFor(jobs []*pipeline.Job, table string, notify bool, grace time.Duration) (rec *records, stop func()) {
	t := f.T
	t.Helper()
	ctx := context.Background()
	src, err := sources.Open(ctx, sources.Config{DSN: f.DBURL, SellersTable: table})
	if err != nil {
		t.Fatal(err)
	}
	rec = &records{}
	runner := &pipeline.Runner{Source: src, Version: "test", Logger: slog.New(rec), Locker: pipeline.PostgresLocker(src),
		Retry: pipeline.Backoff{Attempts: 3, Initial: 100 * time.Millisecond, Max: time.Second}}
	runner.Now = f.Runner.Now
	d := &daemon.Daemon{Runner: runner, Jobs: jobs, Listen: "127.0.0.1:0", Metrics: daemon.NewMetrics()}
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

func TestDaemonCatchUpThenNotify(t *testing.T) {
	f := newFixture(t, "")
	runs, err := f.Src.CompletedRuns(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rec, stop := f.daemon("@yearly", "sellers", true, 5*time.Second)

	// Start-up catch-up: every completed run, oldest first.
	pipelinetest.WaitFor(t, "start-up catch-up", 30*time.Second, func() bool { return len(f.Manifests()) == len(runs) })
	var want []string
	for _, r := range runs {
		want = append(want, r.ID)
	}
	if got := rec.exported(); !slices.Equal(got, want) {
		t.Errorf("exported %v, want oldest first %v", got, want)
	}

	// A notification exports a new run at once (the schedule is yearly).
	id := pipelinetest.InsertRun(t, f.DBURL, f.AnyOrg(), 50, true)
	pipelinetest.WaitFor(t, "the notified run's manifest", 10*time.Second, func() bool { return f.Manifests()[id] })
	stop()
	if errs := rec.errors(); len(errs) > 0 {
		t.Errorf("errors logged: %v", errs)
	}
}

func TestDaemonScheduleExportsRunsAsTheyComplete(t *testing.T) {
	f := newFixture(t, "")
	rec, stop := f.daemon("* * * * * *", "sellers", false, 5*time.Second)
	pipelinetest.WaitFor(t, "start-up catch-up", 30*time.Second, func() bool { return len(f.Manifests()) == 10 })
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, pipelinetest.InsertRun(t, f.DBURL, f.AnyOrg(), 20, false))
	}
	pipelinetest.WaitFor(t, "runs completed while the daemon runs", 15*time.Second, func() bool {
		m := f.Manifests()
		return m[ids[0]] && m[ids[1]] && m[ids[2]]
	})
	stop()
	if got := rec.exported(); len(got) != 13 {
		t.Errorf("%d exports, want 13: %v", len(got), got)
	}
}

func TestThreeDaemonsExportEachRunOnce(t *testing.T) {
	f := newFixture(t, "")
	// Each export is committed to an Iceberg table too: the replicas'
	// commits queue on the catalog.
	f.Load(fmt.Sprintf("    iceberg: {catalog: sql, uri: %q, table: new_sellers}\n", f.DBURL))
	var recs []*records
	var stops []func()
	for i := 0; i < 3; i++ {
		rec, stop := f.daemon("* * * * * *", "sellers", true, 5*time.Second)
		recs, stops = append(recs, rec), append(stops, stop)
	}
	org := f.AnyOrg()
	for i := 0; i < 20; i++ {
		pipelinetest.InsertRun(t, f.DBURL, org, 30, i%2 == 0)
		time.Sleep(20 * time.Millisecond)
	}
	pipelinetest.WaitFor(t, "30 manifests", 60*time.Second, func() bool { return len(f.Manifests()) == 30 })
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
	// The table holds every run once, and no commit was lost: each
	// snapshot's parent is the one before it.
	tb := pipelinetest.ReadTable(t, f.DBURL, "sellersnap", "new_sellers", nil)
	pipelinetest.CheckTableHolds(t, tb, pipelinetest.ManifestsIn(t, f.Files()))
	snaps := tb.Metadata.Snapshots
	for i := 1; i < len(snaps); i++ {
		if snaps[i].ParentID == nil || *snaps[i].ParentID != snaps[i-1].ID {
			t.Errorf("snapshot %d's parent is not the one before it: a commit was lost", snaps[i].ID)
		}
	}
}

func TestShutdownCancelsAnExportCleanly(t *testing.T) {
	f := newFixture(t, "")
	pgtest.Exec(t, f.DBURL, `CREATE FUNCTION slow(uuid) RETURNS bool LANGUAGE plpgsql VOLATILE AS $$ BEGIN PERFORM pg_sleep(0.02); RETURN true; END $$;
		CREATE VIEW slow_sellers AS SELECT * FROM sellers WHERE slow(id)`)
	_, stop := f.daemon("@yearly", "slow_sellers", false, 300*time.Millisecond)
	time.Sleep(time.Second) // the first run (a few hundred rows at 20 ms each) is in flight
	start := time.Now()
	stop()
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("stopping took %s with a 300ms grace", took)
	}
	files := f.Files()
	for k := range files {
		if _, ok := files[k[:strings.LastIndex(k, "/")]+"/manifest.json"]; !ok {
			t.Errorf("an aborted export left %s", k)
		}
	}
	// The next start exports everything.
	_, stop = f.daemon("@yearly", "sellers", false, 5*time.Second)
	pipelinetest.WaitFor(t, "export after restart", 30*time.Second, func() bool { return len(f.Manifests()) == 10 })
	stop()
}

func TestTerminatedConnectionsRecover(t *testing.T) {
	f := newFixture(t, "")
	pgtest.Exec(t, f.DBURL, `CREATE FUNCTION slow(uuid) RETURNS bool LANGUAGE plpgsql VOLATILE AS $$ BEGIN PERFORM pg_sleep(0.002); RETURN true; END $$;
		CREATE VIEW slow_sellers AS SELECT * FROM sellers WHERE slow(id)`)
	rec, stop := f.daemon("@yearly", "slow_sellers", true, 5*time.Second)
	defer stop()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.DBURL)
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
	pipelinetest.WaitFor(t, "all runs after terminations", 60*time.Second, func() bool { return len(f.Manifests()) == 10 })
	id := pipelinetest.InsertRun(t, f.DBURL, f.AnyOrg(), 5, true)
	pipelinetest.WaitFor(t, "a notified run after LISTEN reconnected", 30*time.Second, func() bool { return f.Manifests()[id] })
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
	files := f.Files()
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
			job := *f.Job("full-nightly") // schedule 0 2 * * * UTC; the fixture's clock says 2026-11-22 12:00
			job.Catchup = tc.catchup
			_, stop := f.daemonFor([]*pipeline.Job{&job}, "sellers", false, 5*time.Second)
			want := tc.dates * pgtest.DemoOptions.Orgs
			count := func() (n int, dates map[string]bool) {
				dates = map[string]bool{}
				for k := range f.Files() {
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
				pipelinetest.WaitFor(t, "catch-up snapshots", 60*time.Second, func() bool { n, _ := count(); return n == want })
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
	pipelinetest.WaitFor(t, "start-up", 30*time.Second, func() bool {
		return rec.count("job scheduled", "job", "new-sellers", "schedule", "*/1 * * * * *") == 1 && rec.count("listening for notifications") == 1
	})
	// A pass fails (the table is gone), then succeeds again.
	pgtest.Exec(t, f.DBURL, `ALTER TABLE sellers RENAME TO sellers_away`)
	pipelinetest.WaitFor(t, "a failed pass", 30*time.Second, func() bool { return rec.count("job pass failed; the next tick retries", "job", "new-sellers") > 0 })
	// Each failure names its job and unit once: in the attributes, not
	// again inside the error (a unit's failure is logged by itself; the
	// pass's line counts them).
	for _, m := range rec.errors() {
		if strings.Contains(m["err"], "job new-sellers") {
			t.Errorf("%q: the job is named again in the error: %v", m["msg"], m)
		}
	}
	pgtest.Exec(t, f.DBURL, `ALTER TABLE sellers_away RENAME TO sellers`)
	pipelinetest.WaitFor(t, "the recovery", 30*time.Second, func() bool { return rec.count("job recovered: a pass succeeded again", "job", "new-sellers") == 1 })
	// The LISTEN connection is terminated and comes back.
	pgtest.Exec(t, f.DBURL, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`)
	pipelinetest.WaitFor(t, "LISTEN back", 30*time.Second, func() bool { return rec.count("LISTEN recovered") == 1 })
	stop()
	if n := rec.count("stopped"); n != 1 {
		t.Errorf("%d 'stopped' lines, want 1", n)
	}
}

// TestABackfillDoesNotHoldNewRuns: while a declared rerun of 250 runs is
// being applied, a run announced by NOTIFY is exported at once (the
// rerun applies beside the job's passes, not inside them), and the rerun
// still finishes, once.
func TestABackfillDoesNotHoldNewRuns(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	org := f.AnyOrg()
	pgtest.Exec(t, f.DBURL, `WITH r AS (
		INSERT INTO collection_runs SELECT gen_random_uuid(), $1, 'completed', now() - interval '2 days', now() - interval '2 days' + g * interval '1 second'
		FROM generate_series(1, 250) g RETURNING id)
		INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
		SELECT gen_random_uuid(), $1, 'Old ' || g, 'old ' || g, 'ebay', 1, false, r.id, now() - g * interval '1 ms' FROM r, generate_series(1, 5) g`, org)
	job := *f.Job("new-sellers")
	if _, err := f.Runner.Once(ctx, &job); err != nil {
		t.Fatal(err)
	}
	sched, err := config.ParseSchedule("@yearly")
	if err != nil {
		t.Fatal(err)
	}
	job.Cron, job.Schedule = sched, "@yearly"
	var from, to string
	conn, err := pgx.Connect(ctx, f.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, `SELECT to_char(min(completed_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD'), to_char(max(completed_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')
		FROM collection_runs WHERE completed_at < now() - interval '1 day'`).Scan(&from, &to); err != nil {
		t.Fatal(err)
	}
	d := pipeline.DeclaredRerun{ID: "backfill", Reason: "collector fix", Selection: pipeline.Selection{From: from, To: to}, Selectors: "v1"}
	job.Reruns = []pipeline.DeclaredRerun{d}
	rec, stop := f.daemonFor([]*pipeline.Job{&job}, "sellers", true, 5*time.Second)
	defer stop()
	record := func() *pipeline.RerunRecord {
		r, err := f.Runner.ReadRerunRecord(ctx, &job, d)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	pipelinetest.WaitFor(t, "the backfill to start", 30*time.Second, func() bool { r := record(); return r != nil })
	if r := record(); r.Status == pipeline.RerunApplied {
		t.Fatalf("the backfill finished before a run could be announced: %+v", r)
	}
	id := pipelinetest.InsertRun(t, f.DBURL, org, 5, true)
	pipelinetest.WaitFor(t, "the announced run's manifest", 10*time.Second, func() bool { return f.Manifests()[id] })
	if r := record(); r.Status == pipeline.RerunApplied {
		t.Errorf("the announced run was exported only after the backfill (%d units) was applied", r.Units)
	}
	pipelinetest.WaitFor(t, "the backfill applied", 120*time.Second, func() bool { return record().Status == pipeline.RerunApplied })
	if r := record(); r.Units < 250 || r.Rewritten != r.Units || r.Attempts != 1 {
		t.Errorf("record: %+v; want every unit rewritten in one attempt", r)
	}
	if errs := rec.errors(); len(errs) > 0 {
		t.Errorf("errors logged: %v", errs)
	}
}

// TestDaemonReportsSellersAddedAfterExport: sellers inserted for a run the
// daemon exported a moment ago are reported by its next pass, once: a
// WARN naming the rerun that repairs it and
// sellersnap_rows_changed_after_export_total; the files stay as they are.
func TestDaemonReportsSellersAddedAfterExport(t *testing.T) {
	f := newFixture(t, "")
	runs, err := f.Src.CompletedRuns(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rec, stop := f.daemon("@yearly", "sellers", true, 5*time.Second)
	defer stop()
	pipelinetest.WaitFor(t, "start-up catch-up", 30*time.Second, func() bool { return len(f.Manifests()) == len(runs) })
	late := runs[0]
	pgtest.Exec(t, f.DBURL, `INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
		SELECT gen_random_uuid(), org_id, 'Late ' || g, 'late ' || g, 'ebay', 1, false, id, now() FROM collection_runs, generate_series(1, 3) g WHERE id = $1`, late.ID)
	for i := 0; i < 2; i++ { // two passes: reported once
		id := pipelinetest.InsertRun(t, f.DBURL, f.AnyOrg(), 5, true)
		pipelinetest.WaitFor(t, "the notified run's manifest", 10*time.Second, func() bool { return f.Manifests()[id] })
	}
	pipelinetest.WaitFor(t, "the report", 10*time.Second, func() bool { return rec.count("sellers of a run changed after its export") > 0 })
	time.Sleep(500 * time.Millisecond)
	if n := rec.count("sellers of a run changed after its export"); n != 1 {
		t.Errorf("reported %d times, want once", n)
	}
	_, body := get(t, "http://"+f.daemons[0].Addr().String()+"/metrics")
	if !strings.Contains(body, `sellersnap_rows_changed_after_export_total{job="new-sellers"} 1`) {
		t.Errorf("metrics lack the count:\n%s", body)
	}
}

// TestABrokenJobDoesNotStopTheOthers: a job whose column is missing from
// the source fails its check (reason schema), logged once, while the
// healthy job exports; once the column exists the broken job is checked
// again and exports too, by itself.
func TestABrokenJobDoesNotStopTheOthers(t *testing.T) {
	f := newFixture(t, "")
	ctx := context.Background()
	src, err := sources.Open(ctx, sources.Config{DSN: f.DBURL})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	rec := &records{}
	runner := &pipeline.Runner{Source: src, Version: "test", Logger: slog.New(rec), Locker: pipeline.PostgresLocker(src), Now: f.Runner.Now}
	defer runner.Close()
	good := *f.Job("new-sellers")
	broken := *f.Job("new-sellers")
	broken.Name, broken.Destination = "broken", f.Dest+"-broken"
	sched, _ := config.ParseSchedule("@yearly")
	good.Cron, broken.Cron = sched, sched
	var columnThere atomic.Bool
	check := func(ctx context.Context, j *pipeline.Job) error {
		if j.Name == "broken" && !columnThere.Load() {
			return &pipeline.SourceMismatchError{Job: j.Name, Err: errors.New(`columns: column "gone" does not exist in public.sellers`)}
		}
		return nil
	}
	m := daemon.NewMetrics()
	d := &daemon.Daemon{Runner: runner, Jobs: []*pipeline.Job{&good, &broken}, Metrics: m, Check: check, CheckRetry: 200 * time.Millisecond}
	soft, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- d.Run(soft, soft) }()
	defer func() { cancel(); <-done }()
	pipelinetest.WaitFor(t, "the healthy job's exports", 30*time.Second, func() bool { return rec.count("exported", "job", "new-sellers") == 10 })
	if st := m.Status("broken"); st.FailingSince.IsZero() || !strings.Contains(st.LastError, `"gone"`) {
		t.Errorf("broken job's status: %+v; want failing with the check's error", st)
	}
	if n := rec.count("job cannot run: the check against the source failed; the other jobs run, and this one is checked again", "job", "broken"); n != 1 {
		t.Errorf("the check's failure logged %d times, want once", n)
	}
	columnThere.Store(true)
	pipelinetest.WaitFor(t, "the broken job's recovery", 30*time.Second, func() bool {
		return rec.count("exported", "job", "broken") == 10 && m.Status("broken").FailingSince.IsZero()
	})
}
