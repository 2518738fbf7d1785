package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sellersnap/sellersnap/internal/daemon"
	"github.com/sellersnap/sellersnap/internal/pgtest"
)

// TestFaultHeldHTTPConnectionsDoNotStopExports holds 300 keep-alive
// connections to the daemon's HTTP port, under a file-descriptor limit of
// 256, and then asks for an export. Pass: the export completes while the
// connections are held (the HTTP side is capped, so it cannot take the
// descriptors exports need), and the server closes idle connections by
// itself instead of keeping them for minutes.
func TestFaultHeldHTTPConnectionsDoNotStopExports(t *testing.T) {
	skipShort(t)
	dbURL := pgtest.NewDatabase(t)
	out := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	yaml := fmt.Sprintf("source: {dsn: %q}\njobs:\n  - {name: new-sellers, mode: per_run, schedule: '@yearly', destination: 'file://%s'}\n", dbURL, out)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cmd := exec.Command("sh", "-c", `ulimit -n 256 && exec "$0" -test.run='^$'`, os.Args[0])
	cmd.Env = append(os.Environ(), "SELLERSNAP_TEST_MAIN="+strings.Join([]string{"run", "-config", cfg, "-listen", addr}, "\x1f"))
	var log lockedBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	last, stable := -1, time.Now()
	waitFor(t, 60*time.Second, func() bool {
		if n := countManifests(out); n != last {
			last, stable = n, time.Now()
		}
		return last > 0 && time.Since(stable) > time.Second
	}, "the start-up backlog", &log)
	before := countManifests(out)

	// 300 clients each send one request with keep-alive, read the answer
	// and then stay connected, idle.
	var conns []net.Conn
	for i := 0; i < 300; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	served := 0
	for _, c := range conns[:20] {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
			resp.Body.Close()
			served++
		}
	}
	if served == 0 {
		t.Fatal("the daemon answered none of the first 20 connections")
	}

	// A new run, announced: it must be exported while the connections are held.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `WITH r AS (INSERT INTO collection_runs SELECT gen_random_uuid(), org_id, 'completed', now(), clock_timestamp()
			FROM collection_runs LIMIT 1 RETURNING id, org_id)
		INSERT INTO sellers (id, org_id, display_name, normalized_name, platform, times_seen, flagged, first_seen_run_id, created_at)
		SELECT gen_random_uuid(), r.org_id, 'n' || g, 'n' || g, 'ebay', 1, false, r.id, now() FROM r, generate_series(1, 25) g;
		NOTIFY collection_run_completed`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool { return countManifests(out) > before }, "the export of a new run while 300 connections are held", &log)

	// The server closes idle connections itself (IdleTimeout).
	deadline := time.Now().Add(idleTimeout + 10*time.Second)
	for i, c := range conns[:20] {
		_ = c.SetReadDeadline(deadline)
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("connection %d still open %s after its request: %v", i, idleTimeout+10*time.Second, err)
			break
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("daemon: %v\n%s", err, log.String())
	}
	if strings.Contains(log.String(), "too many open files") {
		t.Errorf("the daemon ran out of file descriptors:\n%s", log.String())
	}
}

// idleTimeout is the daemon's HTTP idle timeout.
const idleTimeout = daemon.HTTPIdleTimeout

func waitFor(t *testing.T, d time.Duration, ok func() bool, what string, log fmt.Stringer) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s:\n%s", what, d, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lockedBuffer is a bytes.Buffer that a process writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSIGHUPReloadsTheConfiguration: SIGHUP makes the daemon load its file
// again and go on with it (a job added by the new file exports); a file
// with errors is refused with a log line and the daemon goes on as it
// was; SIGTERM then stops it with exit 0.
func TestSIGHUPReloadsTheConfiguration(t *testing.T) {
	skipShort(t)
	dbURL := pgtest.NewDatabase(t)
	out, second := t.TempDir(), t.TempDir()
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	one := fmt.Sprintf("source: {dsn: %q}\njobs:\n  - {name: new-sellers, mode: per_run, schedule: '@yearly', destination: 'file://%s'}\n", dbURL, out)
	if err := os.WriteFile(cfg, []byte(one), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd, log := runProcess(t, nil, "run", "-config", cfg, "-listen", freeAddr(t))
	waitFor(t, 60*time.Second, func() bool { return countManifests(out) >= 10 }, "the start-up backlog", log)

	// A broken file: refused, the daemon goes on.
	if err := os.WriteFile(cfg, []byte(one+"  - {name: broken, mode: nope}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(log.String(), "not reloading") }, "the refusal", log)

	// A good file with a second job: reloaded, and the new job exports.
	two := one + fmt.Sprintf("  - {name: again, mode: per_run, schedule: '@yearly', destination: 'file://%s'}\n", second)
	if err := os.WriteFile(cfg, []byte(two), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, func() bool { return countManifests(second) >= 10 }, "the new job's exports", log)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("after SIGTERM: %v\n%s", err, log)
	}
	for _, want := range []string{"SIGHUP: reloading the configuration", "configuration reloaded"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
}

// TestFaultDaemonStartsWithTheDatabaseDown: `run` with PostgreSQL not
// answering does not exit: it serves /healthz (200), /readyz (503 naming
// postgres) and /metrics (the database down, the job's passes failing
// with reason database), and stops on SIGTERM with exit 0. A broken job
// (a column the source lacks) does not stop it either.
func TestFaultDaemonStartsWithTheDatabaseDown(t *testing.T) {
	skipShort(t)
	out := t.TempDir()
	dead := freeAddr(t) // nothing listens there
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	yaml := fmt.Sprintf("source: {dsn: 'postgres://u@%s/db?connect_timeout=1'}\njobs:\n  - {name: new-sellers, mode: per_run, schedule: '@yearly', destination: 'file://%s'}\n", dead, out)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cmd, log := runProcess(t, nil, "run", "-config", cfg, "-listen", addr)
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, 30*time.Second, func() bool {
		_, m := get("/metrics")
		return strings.Contains(m, `sellersnap_dependency_up{dependency="postgres",job=""} 0`) &&
			strings.Contains(m, `sellersnap_pass_failures_total{job="new-sellers",reason="database"} 1`)
	}, "the database down in /metrics", log)
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "postgres") {
		t.Errorf("/readyz: %d %s", code, body)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, log)
	}
}
