package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/sellersnap/sellersnap/internal/pgtest"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
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
	for _, want := range []string{"job new-sellers (per_run)", "pending runs: 10", "rows", "sellers/new/org=", "manifest.json", "job full-nightly (full)", "(writable)"} {
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
	if code, _, stderr := cli(t, env, "rerun", "-config", cfg, "-job", "full-nightly", "-date", "2026-13-01"); code != 1 || !strings.Contains(stderr, "want YYYY-MM-DD") {
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
	if code, _, _ := cli(t, nil, "frobnicate"); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
	if code, out, _ := cli(t, nil, "version"); code != 0 || !strings.HasPrefix(out, "sellersnap ") {
		t.Errorf("version: %d %q", code, out)
	}
}

func TestDSNNeverPrinted(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	dsn := withPassword(t, dbURL)
	bad := strings.Replace(dsn, "127.0.0.1:", "127.0.0.1:1", 1) // a port nothing listens on
	for _, d := range []string{dsn, bad, "postgres://u:hunter2secret@[::1"} {
		env := map[string]string{"DATABASE_URL": d, "SELLERSNAP_BUCKET": "mem://"}
		for _, cmd := range []string{"validate", "once"} {
			_, stdout, stderr := cli(t, env, cmd, "-config", filepath.Join("..", "..", "pipeline.yaml"), "-log-level", "debug")
			if strings.Contains(stdout+stderr, "hunter2secret") {
				t.Errorf("%s printed the password:\n%s%s", cmd, stdout, stderr)
			}
		}
	}
}
