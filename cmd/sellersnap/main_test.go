package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/sellersnap/sellersnap/internal/demodata"
	"github.com/sellersnap/sellersnap/internal/failpoint"
	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/pipeline"
)

func TestMain(m *testing.M) {
	// Re-executed by tests as the real program (see runProcess).
	if args := os.Getenv("SELLERSNAP_TEST_MAIN"); args != "" {
		if v := os.Getenv("SELLERSNAP_TEST_FSIZE"); v != "" { // a disk that fills up
			n, _ := strconv.ParseUint(v, 10, 64)
			if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
				panic(err)
			}
		}
		failpoint.Enable()
		os.Args = append([]string{"sellersnap"}, strings.Split(args, "\x1f")...)
		main()
		return
	}
	os.Exit(pgtest.Main(m))
}

// cli runs the command in-process and returns its exit code and output.
func cli(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), args, &stdout, &stderr)
	code := exitCode(err, &stderr)
	return code, stdout.String(), stderr.String()
}

// withPassword puts a password into a URL so tests can check it never leaks.
func withPassword(t *testing.T, dbURL string) string {
	t.Helper()
	pgtest.Exec(t, dbURL, `ALTER ROLE postgres PASSWORD 'hunter2secret'`) // trust auth ignores it
	return strings.Replace(dbURL, "postgres://postgres@", "postgres://postgres:hunter2secret@", 1)
}

func TestCommands(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	dsn := withPassword(t, dbURL)
	out := t.TempDir()
	env := map[string]string{"DATABASE_URL": dsn, "SELLERSNAP_BUCKET": "file://" + out}
	cfg := filepath.Join("..", "..", "pipeline.yaml")

	code, stdout, stderr := cli(t, env, "validate", "-config", cfg)
	if code != 0 {
		t.Fatalf("validate: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{"job new-sellers (per_run)", "pending runs: 10", "rows", "sellers/new/org=", "manifest.json", "job full-nightly (full)", "(writable, readable)"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("validate output lacks %q:\n%s", want, stdout)
		}
	}
	if entries, _ := os.ReadDir(out); len(entries) > 1 {
		t.Errorf("validate wrote files: %v", entries)
	}

	code, _, stderr = cli(t, env, "once", "-config", cfg, "-job", "new-sellers", "-log-format", "json")
	if code != 0 {
		t.Fatalf("once: exit %d\n%s", code, stderr)
	}
	if n := strings.Count(stderr, `"msg":"exported"`); n != 10 {
		t.Errorf("once logged %d exports, want 10:\n%s", n, stderr)
	}
	for _, field := range []string{`"job":"new-sellers"`, `"run_id":`, `"org_id":`, `"rows":`, `"files":3`, `"duration":`, `"rows_per_sec":`} {
		if !strings.Contains(stderr, field) {
			t.Errorf("export log line lacks %s", field)
		}
	}
	code, _, stderr = cli(t, env, "once", "-config", cfg, "-job", "new-sellers")
	if code != 0 || strings.Contains(stderr, "msg=exported") {
		t.Errorf("second once: exit %d, exported again:\n%s", code, stderr)
	}

	code, stdout, stderr = cli(t, env, "status", "-config", cfg, "-job", "new-sellers")
	if code != 0 || strings.Count(stdout, "sellers/new/org=") != 10 || !strings.Contains(stdout, "pending: 0") {
		t.Errorf("status: exit %d\n%s%s", code, stdout, stderr)
	}

	var runID, failedID string
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	conn.QueryRow(context.Background(), `SELECT id::text FROM collection_runs WHERE status = 'completed' ORDER BY completed_at LIMIT 1`).Scan(&runID)
	conn.QueryRow(context.Background(), `SELECT id::text FROM collection_runs WHERE status = 'failed' LIMIT 1`).Scan(&failedID)
	conn.Close(context.Background())
	if code, _, stderr := cli(t, env, "rerun", "-config", cfg, "-job", "new-sellers", "-run", runID); code != 0 {
		t.Errorf("rerun: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := cli(t, env, "rerun", "-config", cfg, "-job", "new-sellers", "-run", failedID); code != 1 || !strings.Contains(stderr, "is not completed") {
		t.Errorf("rerun of a failed run: exit %d\n%s", code, stderr)
	}
	// -date is -from and -to that date: today's full snapshot is written.
	today := time.Now().UTC().Format(time.DateOnly) // full-nightly is in UTC
	if code, _, stderr := cli(t, env, "rerun", "-config", cfg, "-job", "full-nightly", "-date", today); code != 0 || !strings.Contains(stderr, "exported") {
		t.Errorf("rerun -date %s of a full job: exit %d\n%s", today, code, stderr)
	} else if m, _ := filepath.Glob(filepath.Join(out, "sellers", "full", "org=*", "date="+today, pipeline.ManifestName)); len(m) == 0 {
		t.Errorf("rerun -date %s wrote no manifest of that date", today)
	}
	if code, _, stderr := cli(t, env, "rerun", "-config", cfg, "-job", "full-nightly", "-date", "2026-13-01"); code != 2 || !strings.Contains(stderr, "want a calendar date YYYY-MM-DD") {
		t.Errorf("rerun with a bad date: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := cli(t, env, "rerun", "-config", cfg, "-job", "new-sellers", "-run", "x'; DROP TABLE sellers"); code != 2 || !strings.Contains(stderr, "want a collection run id") {
		t.Errorf("rerun with a bad run id: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := cli(t, env, "rerun", "-config", cfg, "-job", "new-sellers"); code != 2 {
		t.Errorf("rerun without -run: exit %d\n%s", code, stderr)
	}
}

func TestConfigErrorsExit2NamingFieldAndLine(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "p.yaml")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown key", "source: {dsn: x}\njobs:\n  - name: a\n    mode: full\n    colour: red\n", "p.yaml:5: jobs[0].colour: unknown key"},
		{"unknown column", "source: {dsn: '" + dbURL + "'}\njobs:\n  - name: a\n    mode: full\n    columns: [display_name, shoe_size]\n", `jobs[0].columns: columns: column "shoe_size" does not exist`},
		{"bad cron", "source: {dsn: x}\njobs:\n  - name: a\n    mode: full\n    schedule: nope\n", "p.yaml:5: jobs[0].schedule"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := cli(t, nil, "validate", "-config", write(tc.yaml))
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, want 2 with %q:\n%s", code, tc.want, stderr)
			}
		})
	}
	// Every mistake of the config catalogue: exit 2, one message naming
	// the file, line and field.
	t.Setenv("SELLERSNAP_TEST_EMPTY", "")
	files, _ := filepath.Glob("../../config/testdata/invalid/*.yaml")
	if len(files) < 20 {
		t.Fatalf("%d invalid configs", len(files))
	}
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		code, _, stderr := cli(t, nil, "validate", "-config", path)
		if code != 2 {
			t.Errorf("%s: exit %d, want 2:\n%s", path, code, stderr)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if w, ok := strings.CutPrefix(line, "# want: "); ok && !strings.Contains(stderr, strings.ReplaceAll(w, "{file}", path)) {
				t.Errorf("%s: stderr does not say %q:\n%s", path, w, stderr)
			}
		}
		if n := strings.Count(strings.TrimSpace(stderr), "\n"); n > 0 && !strings.Contains(path, "several") {
			t.Errorf("%s: %d lines, want one message:\n%s", path, n+1, stderr)
		}
	}
	if code, _, stderr := cli(t, nil, "validate", "-config", "no-such.yaml"); code != 2 || !strings.Contains(stderr, "no-such.yaml") {
		t.Errorf("unreadable file: exit %d:\n%s", code, stderr)
	}
	if code, _, _ := cli(t, nil, "frobnicate"); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
	if code, out, _ := cli(t, nil, "version"); code != 0 || !strings.HasPrefix(out, "sellersnap ") {
		t.Errorf("version: %d %q", code, out)
	}
}

// TestDSNNeverPrinted runs every command, and the daemon with its status
// page, metrics and probes, with a password in the DSN (good, unreachable,
// unparsable, rejected). Pass: the password appears in none of the output.
func TestDSNNeverPrinted(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	dsn := withPassword(t, dbURL)
	bad := strings.Replace(dsn, "127.0.0.1:", "127.0.0.1:1", 1) // a port nothing listens on
	rejected := strings.Replace(dsn, "postgres:hunter2secret@", "no_such_role:hunter2secret@", 1)
	cfg := filepath.Join("..", "..", "pipeline.yaml")
	leaked := func(what, out string) {
		t.Helper()
		if strings.Contains(out, "hunter2secret") {
			t.Errorf("%s printed the password:\n%s", what, out)
		}
	}
	for _, d := range []string{dsn, bad, rejected, "postgres://u:hunter2secret@[::1", "host=127.0.0.1 password=hunter2secret port=notaport"} {
		env := map[string]string{"DATABASE_URL": d, "SELLERSNAP_BUCKET": "mem://"}
		for _, cmd := range []string{"validate", "once", "status"} {
			_, stdout, stderr := cli(t, env, cmd, "-config", cfg, "-log-level", "debug")
			leaked(cmd, stdout+stderr)
		}
	}

	// The daemon: logs, status page, manifest view, metrics, probes.
	out := t.TempDir()
	addr := freeAddr(t)
	cmd, log := runProcess(t, []string{"DATABASE_URL=" + dsn, "SELLERSNAP_BUCKET=file://" + out},
		"run", "-config", cfg, "-listen", addr, "-log-level", "debug")
	waitHealthy(t, addr, log)
	for deadline := time.Now().Add(30 * time.Second); countManifests(out) == 0 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	for path, body := range getAll(t, addr, "/", "/metrics", "/healthz", "/readyz", "/manifest?job=new-sellers") {
		leaked("GET "+path, body)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("daemon: %v\n%s", err, log)
	}
	leaked("the daemon's log", log.String())
	if !strings.Contains(log.String(), "exported") {
		t.Errorf("the daemon exported nothing, so its output proves little:\n%s", log)
	}
}

// runProcess starts this test binary as "sellersnap args…" in a process of
// its own.
func runProcess(t *testing.T, env []string, args ...string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), env...), "SELLERSNAP_TEST_MAIN="+strings.Join(args, "\x1f"))
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return cmd, out
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestRunStopsWithinGraceOnSIGTERM(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	pgtest.Exec(t, dbURL, `CREATE FUNCTION slow(uuid) RETURNS bool LANGUAGE plpgsql VOLATILE AS $$ BEGIN PERFORM pg_sleep(0.02); RETURN true; END $$;
		CREATE VIEW slow_sellers AS SELECT * FROM sellers WHERE slow(id)`)
	out := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	write := func(table string) {
		yaml := fmt.Sprintf("source: {dsn: %q, sellers_table: %s}\ndaemon: {shutdown_grace: 1s}\njobs:\n  - {name: new-sellers, mode: per_run, schedule: '@yearly', destination: 'file://%s'}\n", dbURL, table, out)
		if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("slow_sellers")
	addr := freeAddr(t)
	cmd, log := runProcess(t, nil, "run", "-config", cfg, "-listen", addr)
	waitHealthy(t, addr, log)
	time.Sleep(time.Second) // a slow export is in flight
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, log)
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("took %s to stop with a 1s grace", took)
	}
	if !strings.Contains(log.String(), "shutdown grace is over") {
		t.Errorf("the export was not cancelled by the grace:\n%s", log)
	}
	checkNoOrphans(t, out)

	// The next start (with the fast table) exports every run.
	write("sellers")
	addr = freeAddr(t)
	cmd, log = runProcess(t, nil, "run", "-config", cfg, "-listen", addr)
	deadline := time.Now().Add(30 * time.Second)
	for countManifests(out) < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("runs not exported after restart:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGINT: %v\n%s", err, log)
	}
	checkNoOrphans(t, out)
}

func countManifests(dir string) int {
	n := 0
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == "manifest.json" {
			n++
		}
		return nil
	})
	return n
}

// checkNoOrphans fails for any file (temporary ones included) in a folder
// without a manifest, and for a latest.json naming a missing manifest.
func checkNoOrphans(t *testing.T, dir string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == "_sellersnap" {
			return filepath.SkipDir // the export state, beside no manifest
		}
		if err != nil || d.IsDir() {
			return nil
		}
		if d.Name() == "schema.json" {
			return nil // the job's schema, beside no manifest
		}
		if d.Name() == "latest.json" {
			var l struct{ Manifest string }
			b, _ := os.ReadFile(p)
			if err := json.Unmarshal(b, &l); err != nil {
				t.Errorf("%s: %v", p, err)
			} else if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(l.Manifest))); err != nil {
				t.Errorf("%s names a missing manifest %s", p, l.Manifest)
			}
			return nil
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(p), "manifest.json")); err != nil {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
}

func TestThreeDaemonProcesses(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	out := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	yaml := fmt.Sprintf("source: {dsn: %q}\ndaemon: {shutdown_grace: 5s}\njobs:\n  - {name: new-sellers, mode: per_run, schedule: '* * * * * *', destination: 'file://%s'}\n", dbURL, out)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	type proc struct {
		cmd *exec.Cmd
		log *lockedBuffer
	}
	var procs []proc
	for i := 0; i < 3; i++ {
		cmd, log := runProcess(t, nil, "run", "-config", cfg, "-listen", freeAddr(t), "-log-format", "json")
		procs = append(procs, proc{cmd, log})
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for i := 0; i < 20; i++ {
		_, err := conn.Exec(ctx, `WITH r AS (INSERT INTO collection_runs SELECT gen_random_uuid(), org_id, 'completed', now(), clock_timestamp()
				FROM collection_runs LIMIT 1 RETURNING id, org_id)
			INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
			SELECT gen_random_uuid(), r.org_id, 'n' || g, 'n' || g, 'ebay', 1, false, r.id, now() FROM r, generate_series(1, 25) g`)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Millisecond)
	}
	deadline := time.Now().Add(60 * time.Second)
	for countManifests(out) < 30 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 30 runs exported", countManifests(out))
		}
		time.Sleep(100 * time.Millisecond)
	}
	exports := map[string]int{}
	busy := 0
	for _, p := range procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		if err := p.cmd.Wait(); err != nil {
			t.Errorf("exit: %v\n%s", err, p.log)
		}
		n := 0
		for _, line := range strings.Split(p.log.String(), "\n") {
			if strings.Contains(line, `"msg":"exported"`) {
				i := strings.Index(line, `"run_id":"`)
				exports[line[i+10:i+46]]++
				n++
			}
			if strings.Contains(line, `"level":"ERROR"`) {
				t.Errorf("error logged: %s", line)
			}
		}
		if n > 0 {
			busy++
		}
	}
	if len(exports) != 30 {
		t.Errorf("%d runs exported, want 30", len(exports))
	}
	for id, n := range exports {
		if n != 1 {
			t.Errorf("run %s exported %d times", id, n)
		}
	}
	if busy < 2 {
		t.Errorf("only %d of 3 processes exported anything", busy)
	}
	checkNoOrphans(t, out)
}

func TestValidateSaysWhatIsWrongWithTheBucket(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	backend := s3mem.New() // no bucket created
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	defer srv.Close()
	env := map[string]string{"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true"}
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	yaml := fmt.Sprintf("source: {dsn: %q}\njobs:\n  - {name: a, mode: per_run, destination: 's3://missing?region=us-east-1&use_path_style=true&endpoint=%s'}\n", dbURL, srv.URL)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := cli(t, env, "validate", "-config", cfg)
	if code != 1 || !strings.Contains(stderr, `cannot write to s3://missing`) || !strings.Contains(stderr, "does not exist: sellersnap does not create it") {
		t.Errorf("exit %d:\n%s", code, stderr)
	}
}

// TestMissingGrantsAndTablesAreNamed runs validate and once as roles that
// lack a table or a column grant, and against a missing table. Pass: exit
// 2 (a setup mistake, for validate and once alike), and the message names
// the grant to run.
func TestMissingGrantsAndTablesAreNamed(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	pgtest.Exec(t, dbURL, `CREATE ROLE snap_partial LOGIN; CREATE ROLE snap_noruns LOGIN;
		GRANT USAGE ON SCHEMA public TO snap_partial, snap_noruns;
		GRANT SELECT ON collection_runs TO snap_partial;
		GRANT SELECT (id, org_id, display_name, first_seen_run_id, created_at, deleted_at, flagged) ON sellers TO snap_partial;
		GRANT SELECT ON sellers TO snap_noruns`)
	as := func(role string) string {
		return strings.Replace(dbURL, "postgres://postgres@", "postgres://"+role+"@", 1)
	}
	out := t.TempDir()
	for _, tc := range []struct {
		name, dsn, extra string
		want             []string
	}{
		{"column grant", as("snap_partial"), "", []string{`role snap_partial may not read columns of public.sellers it needs: GRANT SELECT (`, `"platform_id"`, `) ON "public"."sellers" TO "snap_partial"`}},
		{"table grant", as("snap_noruns"), "", []string{`role snap_noruns may not read public.collection_runs: GRANT SELECT ON "public"."collection_runs" TO "snap_noruns"`}},
		{"missing table", dbURL, ", sellers_table: sellerz", []string{`table public.sellerz does not exist`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "p.yaml")
			yaml := fmt.Sprintf("source: {dsn: %q%s}\njobs:\n  - {name: new, mode: per_run, destination: 'file://%s'}\n", tc.dsn, tc.extra, out)
			if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, cmd := range []string{"validate", "once"} {
				wantCode := 2
				code, stdout, stderr := cli(t, nil, cmd, "-config", cfg)
				for _, w := range tc.want {
					if code != wantCode || !strings.Contains(stderr, w) {
						t.Errorf("%s: exit %d (want %d), output lacks %q:\n%s%s", cmd, code, wantCode, w, stdout, stderr)
					}
				}
			}
		})
	}
}

// TestIdentifiersAreQuotedNotInjected configures a schema, tables and a
// column whose names hold quotes, semicolons, spaces and capitals, and
// names that try SQL injection. Pass: the odd but real names export (all
// rows); the injections are reported as missing tables or columns and every
// table is still there.
func TestIdentifiersAreQuotedNotInjected(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	pgtest.Exec(t, dbURL, `CREATE SCHEMA "Odd ""Schema"";";
		CREATE TABLE "Odd ""Schema"";"."Sellers; DROP" AS SELECT * FROM sellers;
		ALTER TABLE "Odd ""Schema"";"."Sellers; DROP" RENAME COLUMN display_name TO "Display ""Name""";
		CREATE TABLE "Odd ""Schema"";"."Runs--" AS SELECT * FROM collection_runs`)
	out := t.TempDir()
	write := func(source, columns string) string {
		cfg := filepath.Join(t.TempDir(), "p.yaml")
		yaml := fmt.Sprintf("source: {dsn: %q, %s}\njobs:\n  - {name: new, mode: per_run, destination: 'file://%s', formats: [csv], columns: %s}\n", dbURL, source, out, columns)
		if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	odd := write(`schema: 'Odd "Schema";', sellers_table: 'Sellers; DROP', runs_table: 'Runs--'`, `[id, 'Display "Name"', created_at]`)
	if code, stdout, stderr := cli(t, nil, "once", "-config", odd); code != 0 {
		t.Fatalf("odd identifiers: exit %d\n%s%s", code, stdout, stderr)
	}
	var want int
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM sellers s JOIN collection_runs r ON r.id = s.first_seen_run_id WHERE r.status = 'completed' AND s.deleted_at IS NULL`).Scan(&want); err != nil {
		t.Fatal(err)
	}
	got := 0
	_ = filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".csv") {
			b, _ := os.ReadFile(p)
			if !strings.HasPrefix(string(b), `id,"Display ""Name""",created_at`) {
				t.Errorf("%s header: %.60q", p, b)
			}
			got += countCSVRecords(t, b) - 1
		}
		return nil
	})
	if got != want {
		t.Errorf("exported %d rows through the odd names, want %d", got, want)
	}

	for _, tc := range []struct{ source, columns, want string }{
		{`sellers_table: 'sellers"; DROP TABLE collection_runs; --'`, `[id]`, `table public.sellers"; DROP TABLE collection_runs; -- does not exist`},
		{`runs_table: "collection_runs; DROP TABLE sellers"`, `[id]`, `table public.collection_runs; DROP TABLE sellers does not exist`},
		{`schema: "public\"; DROP TABLE sellers; --"`, `[id]`, `does not exist`},
		{``, `[id, 'display_name"; DROP TABLE sellers; --']`, `column "display_name\"; DROP TABLE sellers; --" does not exist`},
	} {
		code, stdout, stderr := cli(t, nil, "once", "-config", write(tc.source, tc.columns))
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s %s: exit %d, want 2 and %q:\n%s%s", tc.source, tc.columns, code, tc.want, stdout, stderr)
		}
	}
	var tables int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_tables WHERE tablename IN ('sellers', 'collection_runs')`).Scan(&tables); err != nil || tables != 2 {
		t.Errorf("tables left: %d (%v)", tables, err)
	}
}

// countCSVRecords counts records with a strict RFC 4180 reader.
func countCSVRecords(t *testing.T, b []byte) int {
	t.Helper()
	recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return len(recs)
}

// TestPlanWritesNothingAndNamesEveryKey runs plan (text and JSON) on a
// fresh bucket, then once. Pass: plan writes nothing; the keys once writes
// are exactly the keys plan listed, and the row counts match the manifests.
func TestPlanWritesNothingAndNamesEveryKey(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	out := t.TempDir()
	env := map[string]string{"DATABASE_URL": dbURL, "SELLERSNAP_BUCKET": "file://" + out}
	cfg := filepath.Join("..", "..", "pipeline.yaml")
	code, text, stderr := cli(t, env, "plan", "-config", cfg, "-job", "new-sellers", "-v")
	if code != 0 || !strings.Contains(text, "pending runs: ") {
		t.Fatalf("plan: exit %d\n%s%s", code, text, stderr)
	}
	code, js, stderr := cli(t, env, "plan", "-config", cfg, "-job", "new-sellers", "-json")
	if code != 0 {
		t.Fatalf("plan -json: exit %d\n%s", code, stderr)
	}
	var plans []struct {
		Job     string
		Pending []struct {
			RunID string `json:"run_id"`
			Rows  int64
			Keys  []string
		}
	}
	if err := json.Unmarshal([]byte(js), &plans); err != nil || len(plans) != 1 || len(plans[0].Pending) == 0 {
		t.Fatalf("plan -json: %v\n%s", err, js)
	}
	if n := len(readTreeKeys(t, out)); n != 0 {
		t.Fatalf("plan wrote %d objects", n)
	}
	if code, _, stderr := cli(t, env, "once", "-config", cfg, "-job", "new-sellers"); code != 0 {
		t.Fatalf("once: %d\n%s", code, stderr)
	}
	written := readTreeKeys(t, out)
	planned := map[string]bool{}
	for _, p := range plans[0].Pending {
		for _, k := range p.Keys {
			planned[k] = true
			if !strings.Contains(text, k) {
				t.Errorf("the text plan does not list %s", k)
			}
		}
		var m struct{ Rows int64 }
		var mkey string
		for _, k := range p.Keys {
			if strings.HasSuffix(k, "/manifest.json") {
				mkey = k
			}
		}
		b, err := os.ReadFile(filepath.Join(out, mkey))
		if err != nil || json.Unmarshal(b, &m) != nil || m.Rows != p.Rows {
			t.Errorf("run %s: planned %d rows, manifest %s (%v)", p.RunID, p.Rows, b, err)
		}
	}
	for k := range written {
		if !planned[k] {
			t.Errorf("once wrote %s, which plan did not list", k)
		}
	}
	for k := range planned {
		if !written[k] {
			t.Errorf("plan listed %s, which once did not write", k)
		}
	}
}

func readTreeKeys(t *testing.T, dir string) map[string]bool {
	t.Helper()
	keys := map[string]bool{}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			keys[filepath.ToSlash(rel)] = true
		}
		return nil
	})
	return keys
}

// TestMaskNeedsTextAndAKey: validate rejects a mask on a non-text column
// and a masked job without its key in the environment (exit 2, naming the
// column and the variable).
func TestMaskNeedsTextAndAKey(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	out := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	write := func(cols string) {
		yaml := fmt.Sprintf("source: {dsn: %q}\njobs:\n  - {name: new, mode: per_run, destination: 'file://%s', columns: %s}\n", dbURL, out, cols)
		if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("SELLERSNAP_MASK_KEY", "")
	write("[display_name, {name: platform_id, mask: hmac-sha256}]")
	if code, _, stderr := cli(t, nil, "validate", "-config", cfg); code != 2 || !strings.Contains(stderr, "p.yaml:3: jobs[0].columns[1]: mask: environment variable SELLERSNAP_MASK_KEY (the mask key) is not set") {
		t.Errorf("no key: exit %d\n%s", code, stderr)
	}
	t.Setenv("SELLERSNAP_MASK_KEY", "0123456789abcdef0123456789abcdef")
	write("[display_name, {name: times_seen, mask: hmac-sha256}]")
	if code, _, stderr := cli(t, nil, "validate", "-config", cfg); code != 2 || !strings.Contains(stderr, `jobs[0].columns[1]: mask: column "times_seen" is int4; mask applies to text columns`) {
		t.Errorf("int column: exit %d\n%s", code, stderr)
	}
	write("[display_name, {name: platform_id, mask: hmac-sha256}, {name: times_seen, redact: true}]")
	if code, stdout, stderr := cli(t, nil, "once", "-config", cfg); code != 0 || strings.Contains(stdout+stderr, "0123456789abcdef0123456789abcdef") {
		t.Errorf("once: exit %d (or the key was printed)\n%s%s", code, stdout, stderr)
	}
}

// TestIDColumnsMustBeUUIDs: with text ids, 'A0EEBC99-…', 'a0eebc99-…' and
// '{a0eebc99…}' are three runs to a string comparison but one to the uuid
// parameters the sellers are read with, so the same sellers were published
// three times into three folders, and the advisory lock (by id text) did
// not exclude them. The contract is uuid ids; every command checks it
// before anything is exported and exits 2 naming the column.
func TestIDColumnsMustBeUUIDs(t *testing.T) {
	for _, tc := range []struct{ table, column string }{
		{"collection_runs", "id"}, {"collection_runs", "org_id"},
		{"sellers", "id"}, {"sellers", "org_id"}, {"sellers", "first_seen_run_id"},
	} {
		t.Run(tc.table+"."+tc.column, func(t *testing.T) {
			dbURL := pgtest.NewDatabase(t)
			pgtest.Exec(t, dbURL, fmt.Sprintf(`ALTER TABLE %s ALTER COLUMN %s TYPE text`, tc.table, tc.column))
			if tc.table == "collection_runs" && tc.column == "id" {
				// Two more spellings of one completed run.
				pgtest.Exec(t, dbURL, `INSERT INTO collection_runs SELECT upper(id), org_id, status, started_at, completed_at + interval '1 second' FROM collection_runs WHERE status = 'completed' LIMIT 1;
					INSERT INTO collection_runs SELECT '{' || lower(id) || '}', org_id, status, started_at, completed_at + interval '2 seconds' FROM collection_runs WHERE status = 'completed' AND id = lower(id) LIMIT 1`)
			}
			out := t.TempDir()
			env := map[string]string{"DATABASE_URL": dbURL, "SELLERSNAP_BUCKET": "file://" + out}
			cfg := filepath.Join("..", "..", "pipeline.yaml")
			for _, cmd := range []string{"validate", "plan", "once"} {
				code, _, stderr := cli(t, env, cmd, "-config", cfg)
				want := fmt.Sprintf("column %q of public.%s has type text", tc.column, tc.table)
				if code != 2 || !strings.Contains(stderr, want) || !strings.Contains(stderr, "uuid") {
					t.Errorf("%s: exit %d, want 2 saying %q:\n%s", cmd, code, want, stderr)
				}
			}
			if n := countManifests(out); n != 0 {
				t.Errorf("%d manifests written", n)
			}
		})
	}
}

// TestInvalidUTF8FromSQLASCIIDatabaseNamesRunSellerAndColumn: a SQL_ASCII
// database stores whatever bytes it is given. A value that is not UTF-8
// fails its run's export with an error naming the run, the seller and the
// column (as the README promises), and the other runs are exported.
func TestInvalidUTF8FromSQLASCIIDatabaseNamesRunSellerAndColumn(t *testing.T) {
	dbURL := pgtest.NewSQLASCIIDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := demodata.Load(ctx, conn, pgtest.DemoOptions); err != nil {
		t.Fatal(err)
	}
	var runID, sellerID string
	if err := conn.QueryRow(ctx, `UPDATE sellers SET display_name = 'Caf' || E'\xe9' || ' Ltd'
		WHERE id = (SELECT s.id FROM sellers s JOIN collection_runs r ON r.id = s.first_seen_run_id
			WHERE r.status = 'completed' AND s.deleted_at IS NULL ORDER BY s.id LIMIT 1)
		RETURNING first_seen_run_id::text, id::text`).Scan(&runID, &sellerID); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	env := map[string]string{"DATABASE_URL": dbURL, "SELLERSNAP_BUCKET": "file://" + out}
	code, _, stderr := cli(t, env, "once", "-config", filepath.Join("..", "..", "pipeline.yaml"))
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, stderr)
	}
	for _, want := range []string{runID, sellerID, "display_name", "not valid UTF-8"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("the error does not name %q:\n%s", want, stderr)
		}
	}
	if n := countManifests(out); n < 5 {
		t.Errorf("%d manifests: the other runs were not exported", n)
	}
	checkNoOrphans(t, out)
}

// TestUsageAndConfigMistakesExit2: every mistake in how a command is called
// or configured exits 2 with a message naming it, before anything is
// exported, never 1 (an export failed) and never after "config: ok".
func TestUsageAndConfigMistakesExit2(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	out := t.TempDir()
	env := map[string]string{"DATABASE_URL": dbURL, "SELLERSNAP_BUCKET": "file://" + out}
	cfg := filepath.Join("..", "..", "pipeline.yaml")
	write := func(yaml string) string {
		p := filepath.Join(t.TempDir(), "p.yaml")
		if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	hostFile := write("source: {dsn: '${DATABASE_URL}'}\njobs:\n  - {name: j, mode: full, destination: 'file://snapshots'}\n")
	badListen := write("source: {dsn: '${DATABASE_URL}'}\ndaemon: {listen: '55511'}\njobs:\n  - {name: j, mode: full}\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"rerun", "-config", cfg, "-job", "new-sellers", "-from", "2026-03-02", "-to", "2026-03-01"}, "before from"},
		{[]string{"rerun", "-config", cfg, "-job", "new-sellers", "-from", "2026-03-02"}, "go together"},
		{[]string{"rerun", "-config", cfg, "-job", "new-sellers", "-date", "2026-03-02", "-org", "acme"}, "-org"},
		{[]string{"rerun", "-config", cfg, "-job", "new-sellers"}, "rerun needs"},
		{[]string{"rerun", "-config", cfg, "-job", "new-sellers", "-date", "2026-03-02", "-id", "Bad ID"}, "-id"},
		{[]string{"rerun", "-config", cfg, "-job", "full-nightly", "-run", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}, "full job"},
		{[]string{"rerun", "-config", cfg, "-job", "new-sellers", "-run", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}, "-run:"},
		{[]string{"rerun", "-config", cfg, "-job", "full-nightly", "-date", "2026-3-1"}, "YYYY-MM-DD"},
		{[]string{"rerun", "-config", cfg, "-job", "full-nightly", "-date", "2026-02-30"}, "YYYY-MM-DD"},
		// A snapshot dated ahead would hold today's rows and pin latest.json
		// there; one dated back needs saying so.
		{[]string{"rerun", "-config", cfg, "-job", "full-nightly", "-date", time.Now().AddDate(0, 0, 2).Format(time.DateOnly)}, "after today"},
		{[]string{"rerun", "-config", cfg, "-job", "full-nightly", "-date", "2031-01-01", "-allow-past"}, "after today"},
		{[]string{"rerun", "-config", cfg, "-job", "full-nightly", "-date", "2026-01-01"}, "-allow-past"},
		{[]string{"rerun", "-config", cfg, "-job", "new-sellers", "-run", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "-allow-past"}, "-allow-past: goes with dates of a full job"},
		{[]string{"rerun", "-config", cfg, "-job", "new-sellers", "-run", "not-a-uuid"}, "UUID"},
		{[]string{"rerun", "-config", cfg, "-job", "no-such-job", "-run", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}, "no job"},
		{[]string{"run", "-config", cfg, "-listen", "55511"}, "-listen"},
		{[]string{"run", "-config", badListen}, "daemon.listen"},
		{[]string{"validate", "-config", hostFile}, "jobs[0].destination"},
		{[]string{"once", "-config", hostFile}, "jobs[0].destination"},
		{[]string{"once", "-config", cfg, "-log-format", "xml"}, "-log-format"},
		{[]string{"once", "-config", cfg, "-log-level", "loud"}, "-log-level"},
		{[]string{"once", "-config", cfg, "extra"}, "unexpected argument"},
		{[]string{"frobnicate"}, "unknown command"},
		{[]string{"once", "-config", cfg, "-no-such-flag"}, "no-such-flag"},
	} {
		code, stdout, stderr := cli(t, env, tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) || strings.Contains(stdout, "config: ok") {
			t.Errorf("%s: exit %d, want 2 with %q\nstdout: %s\nstderr: %s", strings.Join(tc.args, " "), code, tc.want, stdout, stderr)
		}
	}
	if n := countManifests(out); n != 0 {
		t.Errorf("%d manifests written by mistaken commands", n)
	}
}

// TestValidateAndPlanCatchSchemaDrift: after a column's type changes under
// a job with on_schema_change: fail, validate and plan must say so (as once
// would fail), not "ok" with the run listed as pending.
func TestValidateAndPlanCatchSchemaDrift(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	out := t.TempDir()
	env := map[string]string{"DATABASE_URL": dbURL, "SELLERSNAP_BUCKET": "file://" + out}
	cfg := filepath.Join("..", "..", "pipeline.yaml")
	if code, _, stderr := cli(t, env, "once", "-config", cfg); code != 0 {
		t.Fatalf("once: exit %d\n%s", code, stderr)
	}
	pgtest.Exec(t, dbURL, `ALTER TABLE sellers ALTER COLUMN feedback_percent TYPE numeric(6,2);
		INSERT INTO collection_runs SELECT gen_random_uuid(), org_id, 'completed', now(), clock_timestamp() FROM collection_runs LIMIT 1`)
	for _, cmd := range []string{"validate", "plan"} {
		code, stdout, stderr := cli(t, env, cmd, "-config", cfg, "-job", "new-sellers")
		if code != 1 || !strings.Contains(stderr, "the output schema differs") || !strings.Contains(stderr, "feedback_percent") {
			t.Errorf("%s: exit %d, want 1 naming the schema change:\nstdout: %s\nstderr: %s", cmd, code, stdout, stderr)
		}
	}
}

// TestPlanSummarisesUnlessVerbose: with a long backlog, plan and validate
// print counts, the first unit with its keys and the last one; -v prints
// every unit and key.
func TestPlanSummarisesUnlessVerbose(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	pgtest.Exec(t, dbURL, `INSERT INTO collection_runs SELECT gen_random_uuid(), org_id, 'completed', now(), clock_timestamp() + g * interval '1 ms'
		FROM collection_runs, generate_series(1, 20) g WHERE status = 'completed' LIMIT 190`)
	env := map[string]string{"DATABASE_URL": dbURL, "SELLERSNAP_BUCKET": "file://" + t.TempDir()}
	cfg := filepath.Join("..", "..", "pipeline.yaml")
	for _, cmd := range []string{"plan", "validate"} {
		code, short, stderr := cli(t, env, cmd, "-config", cfg)
		if code != 0 || !strings.Contains(short, "pending runs: 200") || !strings.Contains(short, "… 198 more (-v lists every unit and key)") {
			t.Errorf("%s: exit %d\n%s%s", cmd, code, short, stderr)
		}
		if n := strings.Count(short, "\n"); n > 40 {
			t.Errorf("%s: %d lines for a summary", cmd, n)
		}
		code, long, _ := cli(t, env, cmd, "-config", cfg, "-v")
		if code != 0 || strings.Count(long, "  - run ") != 200 || strings.Count(long, "manifest.json") < 200 {
			t.Errorf("%s -v: exit %d, %d runs listed", cmd, code, strings.Count(long, "  - run "))
		}
	}
}

// TestEveryCommandHasHelp: "sellersnap CMD -h" says what the command does
// and lists its flags, and exits 0.
func TestEveryCommandHasHelp(t *testing.T) {
	for _, cmd := range []string{"validate", "plan", "once", "rerun", "run", "status"} {
		code, _, stderr := cli(t, nil, cmd, "-h")
		if code != 0 || !strings.Contains(stderr, "sellersnap "+cmd+": ") || !strings.Contains(stderr, "-config") || len(stderr) < 150 {
			t.Errorf("%s -h: exit %d\n%s", cmd, code, stderr)
		}
	}
}

// getAll GETs each path from the daemon at addr and returns the bodies.
func getAll(t *testing.T, addr string, paths ...string) map[string]string {
	t.Helper()
	bodies := map[string]string{}
	for _, path := range paths {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		bodies[path] = string(body)
	}
	return bodies
}

// TestStatusVerifyPrintsTheRerunThatRepairs: status -verify compares each
// exported run's rows with the database: 0 and exit 0 after a clean
// export; after sellers were added to one exported run, that run with both
// counts and the rerun command that repairs it, exit 1; after the rerun,
// clean again.
func TestStatusVerifyPrintsTheRerunThatRepairs(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	out := t.TempDir()
	env := map[string]string{"DATABASE_URL": dbURL, "SELLERSNAP_BUCKET": "file://" + out}
	cfg := filepath.Join("..", "..", "pipeline.yaml")
	if code, _, stderr := cli(t, env, "once", "-config", cfg, "-job", "new-sellers"); code != 0 {
		t.Fatalf("once: exit %d\n%s", code, stderr)
	}
	from := time.Now().AddDate(-3, 0, 0).Format(time.DateOnly)
	code, stdout, stderr := cli(t, env, "status", "-config", cfg, "-job", "new-sellers", "-verify", "-from", from)
	if code != 0 || !strings.Contains(stdout, "10 exported runs") || !strings.Contains(stdout, "0 differ") {
		t.Fatalf("clean verify: exit %d\n%s%s", code, stdout, stderr)
	}
	var runID string
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(context.Background(), `SELECT id::text FROM collection_runs WHERE status = 'completed' ORDER BY completed_at LIMIT 1`).Scan(&runID); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(context.Background(), `INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
		SELECT gen_random_uuid(), r.org_id, 'Late ' || g, 'late ' || g, 'ebay', 1, false, r.id, now() FROM collection_runs r, generate_series(1, 3) g WHERE r.id = $1`, runID); err != nil {
		t.Fatal(err)
	}
	code, stdout, _ = cli(t, env, "status", "-config", cfg, "-job", "new-sellers", "-verify", "-from", from)
	want := "repair: sellersnap rerun -config " + cfg + " -job new-sellers -run " + runID
	if code != 1 || !strings.Contains(stdout, "1 differ") || !strings.Contains(stdout, want) {
		t.Fatalf("verify after late sellers: exit %d, want 1 and %q:\n%s", code, want, stdout)
	}
	if code, _, stderr := cli(t, env, "rerun", "-config", cfg, "-job", "new-sellers", "-run", runID); code != 0 {
		t.Fatalf("rerun: exit %d\n%s", code, stderr)
	}
	if code, stdout, _ = cli(t, env, "status", "-config", cfg, "-job", "new-sellers", "-verify", "-from", from); code != 0 {
		t.Errorf("verify after the rerun: exit %d\n%s", code, stdout)
	}
}
