package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sellersnap/sellersnap/internal/demodata"
	"github.com/sellersnap/sellersnap/internal/pgtemp"
	"github.com/sellersnap/sellersnap/internal/pgtest"
)

// skipShort skips the slow fault tests in `make test` (-short); `make
// test-faults` runs them, and so does CI.
func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test: make test-faults")
	}
}

// loadDemo fills a new database with n demo sellers over runs runs.
func loadDemo(t *testing.T, sellers, runs int) string {
	t.Helper()
	dbURL := pgtest.NewEmptyDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := demodata.Load(ctx, conn, demodata.Options{Sellers: sellers, Runs: runs, Orgs: 2}); err != nil {
		t.Fatal(err)
	}
	return dbURL
}

// tree is a bucket directory as its readers see it: data files by key,
// manifests by key, and any temporary files.
type tree struct {
	files     map[string][]byte
	manifests map[string]manifestView
	latest    map[string]string // latest.json key → the manifest it names
	schemas   map[string]string // schema.json key → its fingerprint
	temps     []string
}

type manifestView struct {
	Files []struct {
		Key    string `json:"key"`
		Rows   int64  `json:"rows"`
		Bytes  int64  `json:"bytes"`
		SHA256 string `json:"sha256"`
	} `json:"files"`
	Rows int64 `json:"rows"`
}

func readTree(t *testing.T, dir string) tree {
	t.Helper()
	tr := tree{files: map[string][]byte{}, manifests: map[string]manifestView{}, latest: map[string]string{}, schemas: map[string]string{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == "_sellersnap" {
			return filepath.SkipDir // the export state: times of its own, checked by the pipeline tests
		}
		if err != nil || d.IsDir() {
			return err
		}
		key, _ := filepath.Rel(dir, p)
		key = filepath.ToSlash(key)
		if strings.HasSuffix(key, ".tmp") {
			tr.temps = append(tr.temps, key)
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if d.Name() == "schema.json" {
			var sc struct{ Fingerprint string }
			if err := json.Unmarshal(b, &sc); err != nil || sc.Fingerprint == "" {
				return fmt.Errorf("%s: %v", key, err)
			}
			tr.schemas[key] = sc.Fingerprint
			return nil
		}
		if d.Name() == "latest.json" {
			var l struct{ Manifest string }
			if err := json.Unmarshal(b, &l); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			tr.latest[key] = l.Manifest
			return nil
		}
		if d.Name() == "manifest.json" {
			var m manifestView
			if err := json.Unmarshal(b, &m); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			tr.manifests[key] = m
			return nil
		}
		tr.files[key] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// checkPublished fails unless every manifest's files exist with its sizes
// and checksums, and every data file in the bucket has exactly the bytes
// of the clean export (a committed file is never partial).
func checkPublished(t *testing.T, got, ref tree) {
	t.Helper()
	for mk, m := range got.manifests {
		for _, f := range m.Files {
			b, ok := got.files[f.Key]
			sum := sha256.Sum256(b)
			if !ok || int64(len(b)) != f.Bytes || hex.EncodeToString(sum[:]) != f.SHA256 {
				t.Errorf("manifest %s lists %s, which is missing or differs", mk, f.Key)
			}
		}
	}
	for k, mk := range got.latest {
		if _, ok := got.manifests[mk]; !ok {
			t.Errorf("%s names %s, which does not exist", k, mk)
		}
	}
	for k, b := range got.files {
		want, ok := ref.files[k]
		if !ok {
			t.Errorf("unexpected object %s", k)
		} else if !bytes.Equal(b, want) {
			t.Errorf("%s differs from the clean export (%d vs %d bytes)", k, len(b), len(want))
		}
	}
}

func sameTree(t *testing.T, got, ref tree) {
	t.Helper()
	checkPublished(t, got, ref)
	if len(got.files) != len(ref.files) || len(got.manifests) != len(ref.manifests) {
		t.Errorf("%d files and %d manifests, clean export has %d and %d", len(got.files), len(got.manifests), len(ref.files), len(ref.manifests))
	}
	for mk, m := range ref.manifests {
		g, ok := got.manifests[mk]
		if !ok {
			t.Errorf("manifest %s missing", mk)
			continue
		}
		gj, _ := json.Marshal(g)
		rj, _ := json.Marshal(m)
		if !bytes.Equal(gj, rj) {
			t.Errorf("manifest %s lists other files:\n got %s\nwant %s", mk, gj, rj)
		}
	}
	for k, mk := range ref.latest {
		if got.latest[k] != mk {
			t.Errorf("%s names %q, want %q", k, got.latest[k], mk)
		}
	}
	for k, fp := range ref.schemas {
		if got.schemas[k] != fp {
			t.Errorf("%s has fingerprint %q, want %q", k, got.schemas[k], fp)
		}
	}
	if len(got.temps) > 0 {
		t.Errorf("temporary files left: %v", got.temps)
	}
}

// TestFaultSIGKILLNeverPublishesAPartialRun kills `sellersnap once` at ten
// moments spread over a 60k-row backlog and at the named points a random
// kill rarely hits. Pass: after each kill, every manifest's files are
// present and intact and every visible object is byte-identical to a clean
// export; after the next `once`, the bucket equals the clean export.
func TestFaultSIGKILLNeverPublishesAPartialRun(t *testing.T) {
	skipShort(t)
	dbURL := loadDemo(t, 60000, 6)
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	yaml := fmt.Sprintf("source: {dsn: %q}\njobs:\n  - {name: new, mode: per_run, destination: 'file://${OUT}', formats: [csv, ndjson, parquet], csv: {compression: gzip}}\n", dbURL)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	once := func(out string, env ...string) (*lockedBuffer, error) {
		cmd, log := runProcess(t, append(env, "OUT="+out), "once", "-config", cfg)
		return log, cmd.Wait()
	}

	refDir := t.TempDir()
	start := time.Now()
	if log, err := once(refDir); err != nil {
		t.Fatalf("clean export: %v\n%s", err, log)
	}
	took := time.Since(start)
	ref := readTree(t, refDir)
	if len(ref.manifests) < 4 {
		t.Fatalf("clean export wrote %d manifests", len(ref.manifests))
	}
	t.Logf("clean export: %d manifests, %d files in %s", len(ref.manifests), len(ref.files), took)

	type kill struct {
		after     time.Duration
		failpoint string
	}
	var kills []kill
	for i := 1; i <= 10; i++ {
		kills = append(kills, kill{after: took * time.Duration(i) / 11})
	}
	kills = append(kills, kill{failpoint: "before-commit:2"}, kill{failpoint: "between-commits:3"},
		kill{failpoint: "before-manifest"}, kill{failpoint: "before-manifest:5"})

	for _, k := range kills {
		name := k.failpoint
		if name == "" {
			name = k.after.Round(time.Millisecond).String()
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			var env []string
			if k.failpoint != "" {
				env = append(env, "SELLERSNAP_FAILPOINT="+k.failpoint)
			}
			cmd, log := runProcess(t, append(env, "OUT="+dir), "once", "-config", cfg)
			if k.failpoint == "" {
				time.Sleep(k.after)
				_ = cmd.Process.Signal(syscall.SIGKILL)
			}
			err := cmd.Wait()
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
				if k.failpoint != "" || err != nil {
					t.Fatalf("not killed: %v\n%s", err, log)
				}
				t.Logf("finished before the kill")
			}
			got := readTree(t, dir)
			checkPublished(t, got, ref)
			// Directory readers (Spark, Hive, Athena, Trino) skip names
			// starting with "." or "_": a partial file must have one.
			for _, tmp := range got.temps {
				if base := path.Base(tmp); base[0] != '.' && base[0] != '_' {
					t.Errorf("temporary file %s would be read as data by a directory reader", tmp)
				}
			}
			t.Logf("after the kill: %d manifests, %d files, %d temporary", len(got.manifests), len(got.files), len(got.temps))

			if log, err := once(dir); err != nil {
				t.Fatalf("once after the kill: %v\n%s", err, log)
			}
			sameTree(t, readTree(t, dir), ref)
		})
	}
}

// TestFaultDaemonSurvivesAPostgresRestart stops the database under a running
// daemon, starts it again on the same port, then completes a backlog of
// runs. Pass: the daemon keeps running, reconnects, and exports every run
// within 30 s of the restart, leaving no partial files.
func TestFaultDaemonSurvivesAPostgresRestart(t *testing.T) {
	skipShort(t)
	ctx := context.Background()
	// Not t.TempDir: its parent is private, and the server may run as the
	// postgres user.
	clusterDir, err := os.MkdirTemp("", "sellersnap-restart-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(clusterDir) })
	srv, err := pgtemp.Start(ctx, pgtemp.Options{Dir: clusterDir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Stop() }()
	dbURL := srv.URL("postgres")
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	if err := demodata.Load(ctx, conn, demodata.Options{Sellers: 3000, Runs: 8, Orgs: 2}); err != nil {
		t.Fatal(err)
	}
	var backlog int
	err = conn.QueryRow(ctx, `WITH u AS (UPDATE collection_runs SET status = 'running' WHERE status = 'completed' RETURNING 1) SELECT count(*) FROM u`).Scan(&backlog)
	conn.Close(ctx)
	if err != nil || backlog == 0 {
		t.Fatalf("hold back the runs: %v (%d)", err, backlog)
	}

	out := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	yaml := fmt.Sprintf(`source: {dsn: %q}
daemon: {notify_channel: collection_run_completed, retry: {attempts: 2, initial: 100ms, max: 500ms}}
jobs:
  - {name: new, mode: per_run, schedule: '@every 1s', destination: 'file://%s'}
`, dbURL, out)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cmd, log := runProcess(t, nil, "run", "-config", cfg, "-listen", addr)
	waitHealthy(t, addr, log)

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // ticks and the listener fail meanwhile
	if cmd.ProcessState != nil {
		t.Fatalf("daemon exited while the database was down:\n%s", log)
	}
	srv, err = pgtemp.Start(ctx, pgtemp.Options{Dir: clusterDir, Port: srv.Port()})
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dbURL, `UPDATE collection_runs SET status = 'completed' WHERE completed_at IS NOT NULL AND status = 'running'`)
	restarted := time.Now()

	var manifests int
	for deadline := restarted.Add(30 * time.Second); ; {
		var want int
		c, err := pgx.Connect(ctx, dbURL)
		if err == nil {
			err = c.QueryRow(ctx, `SELECT count(DISTINCT (s.first_seen_run_id, s.org_id)) FROM sellers s JOIN collection_runs r ON r.id = s.first_seen_run_id WHERE r.status = 'completed' AND s.deleted_at IS NULL`).Scan(&want)
			c.Close(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		if manifests = countManifests(out); manifests >= want && want > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d runs exported 30 s after the restart:\n%s", manifests, want, log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%d runs exported %s after the restart", manifests, time.Since(restarted).Round(time.Millisecond))
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, log)
	}
	checkNoOrphans(t, out)
}

func waitHealthy(t *testing.T, addr string, log fmt.Stringer) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not come up:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stallProxy forwards TCP to a server. Per connection, once the server has
// sent more than after bytes, it either stops forwarding (stall) while
// keeping the connection open, or forwards at rate bytes per second.
type stallProxy struct {
	ln     net.Listener
	target string
	after  int64
	stall  bool
	rate   int64
	mu     sync.Mutex
	conns  []net.Conn
}

func newStallProxy(t *testing.T, target string, after int64, stall bool, rate int64) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target, after: after, stall: stall, rate: rate}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *stallProxy) addr() string { return p.ln.Addr().String() }

func (p *stallProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

func (p *stallProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(s, c); s.Close() }()
		go func() {
			defer c.Close()
			buf := make([]byte, 32<<10)
			var sent int64
			for {
				n, err := s.Read(buf)
				if n > 0 {
					if sent += int64(n); sent > p.after {
						if p.stall {
							_, _ = io.Copy(io.Discard, s) // keep reading, forward nothing
							return
						}
						time.Sleep(time.Duration(n) * time.Second / time.Duration(p.rate))
					}
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// TestFaultStalledOrSlowPostgresFailsWithinTheBound puts a proxy between
// sellersnap and PostgreSQL that stops forwarding, or slows to a trickle,
// mid-export, or never answers at all. Pass: `once` exits 1 within the
// configured bound (statement_timeout 1s + 5s; connect_timeout 2s), with a
// message that says what happened, and nothing is published.
func TestFaultStalledOrSlowPostgresFailsWithinTheBound(t *testing.T) {
	skipShort(t)
	dbURL := loadDemo(t, 20000, 3)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		after  int64
		stall  bool
		rate   int64
		want   []string // any of
		within time.Duration
	}{
		{"stalls mid-stream", 256 << 10, true, 0, []string{"gave up on the database after 6s (statement_timeout + 5s)"}, 15 * time.Second},
		// The server has sent everything into the socket buffers long
		// before its statement_timeout; its timeout error, if any, would
		// queue behind them. Either end may give up first.
		{"slows to a trickle", 64 << 10, false, 100 << 10,
			[]string{"canceling statement due to statement timeout", "gave up on the database after 6s"}, 15 * time.Second},
		{"never answers", 0, true, 0, []string{"connect to postgres", "timeout"}, 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newStallProxy(t, u.Host, tc.after, tc.stall, tc.rate)
			pu := *u
			pu.Host = p.addr()
			q := pu.Query()
			q.Set("connect_timeout", "2")
			pu.RawQuery = q.Encode()
			out := t.TempDir()
			cfg := filepath.Join(t.TempDir(), "p.yaml")
			yaml := fmt.Sprintf("source: {dsn: %q, statement_timeout: 1s}\ndaemon: {retry: {attempts: 1}}\njobs:\n  - {name: new, mode: per_run, destination: 'file://%s'}\n", pu.String(), out)
			if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			cmd, log := runProcess(t, nil, "once", "-config", cfg)
			err := cmd.Wait()
			took := time.Since(start)
			if code := cmd.ProcessState.ExitCode(); code != 1 {
				t.Fatalf("exit %d (%v), want 1:\n%s", code, err, log)
			}
			// The failure is reported within the bound. pgx then drains an
			// abandoned connection for up to 15 s before closing it (to
			// avoid a TCP reset), which can delay the exit of `once`.
			reported := took
			if m := regexp.MustCompile(`time=(\S+) level=ERROR msg="export failed"`).FindStringSubmatch(log.String()); m != nil {
				if at, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
					reported = at.Sub(start)
				}
			}
			if reported > tc.within || took > tc.within+16*time.Second {
				t.Errorf("failure reported after %s, exit after %s; bound %s:\n%s", reported, took, tc.within, log)
			}
			if !slices.ContainsFunc(tc.want, func(w string) bool { return strings.Contains(log.String(), w) }) {
				t.Errorf("output says none of %q:\n%s", tc.want, log)
			}
			t.Logf("reported after %s, exit after %s: %s", reported.Round(time.Millisecond), took.Round(time.Millisecond), lastLine(log.String()))
			checkNoOrphans(t, out)
		})
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// TestFaultDiskFull exports a backlog to a file:// bucket that runs out of
// space: a 2 MiB tmpfs (ENOSPC; needs root, skipped otherwise) and a file
// size limit on the process (RLIMIT_FSIZE, EFBIG; always). Pass: `once`
// exits 1 naming the key and the cause; no final object without its
// manifest, no temporary files; what was published before stays intact.

func TestFaultDiskFull(t *testing.T) {
	skipShort(t)
	dbURL := loadDemo(t, 20000, 4)
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) (dir string, env []string)
		cause string
	}{
		{"tmpfs full", func(t *testing.T) (string, []string) {
			dir := t.TempDir()
			if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=2m"); err != nil {
				t.Skipf("cannot mount a tmpfs here (%v); the file size limit case covers the code path", err)
			}
			t.Cleanup(func() { _ = syscall.Unmount(dir, 0) })
			return dir, nil
		}, "no space left on device"},
		{"tmpfs with 3 free pages", func(t *testing.T) (string, []string) {
			// A few free pages: the first files open, Arrow's Parquet
			// writer cannot write its magic number and panics.
			dir := t.TempDir()
			if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=2m"); err != nil {
				t.Skipf("cannot mount a tmpfs here (%v)", err)
			}
			t.Cleanup(func() { _ = syscall.Unmount(dir, 0) })
			var st syscall.Statfs_t
			if err := syscall.Statfs(dir, &st); err != nil {
				t.Fatal(err)
			}
			free := int64(st.Bavail) * st.Bsize
			if err := os.WriteFile(filepath.Join(dir, "filler"), make([]byte, free-3*4096), 0o644); err != nil {
				t.Fatal(err)
			}
			bucket := filepath.Join(dir, "bucket")
			if err := os.Mkdir(bucket, 0o755); err != nil {
				t.Fatal(err)
			}
			return bucket, nil
		}, "no space left on device"},
		{"file size limit", func(t *testing.T) (string, []string) {
			return t.TempDir(), []string{"SELLERSNAP_TEST_FSIZE=" + fmt.Sprint(1<<20)}
		}, "file too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, env := tc.setup(t)
			cfg := filepath.Join(t.TempDir(), "p.yaml")
			yaml := fmt.Sprintf("source: {dsn: %q}\ndaemon: {retry: {attempts: 1}}\njobs:\n  - {name: new, mode: per_run, destination: 'file://%s', formats: [csv, ndjson, parquet], csv: {compression: none}}\n", dbURL, dir)
			if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd, log := runProcess(t, env, "once", "-config", cfg)
			err := cmd.Wait()
			if code := cmd.ProcessState.ExitCode(); code != 1 {
				t.Fatalf("exit %d (%v), want 1:\n%s", code, err, log)
			}
			if strings.Contains(log.String(), "\npanic: ") {
				t.Errorf("the process crashed:\n%s", log)
			}
			if strings.Contains(log.String(), "panic") || strings.Contains(log.String(), "goroutine ") {
				t.Errorf("a panic or a stack in the log, not the cause:\n%s", log)
			}
			if !regexp.MustCompile(tc.cause).MatchString(log.String()) || !regexp.MustCompile(`sellers_[0-9-]+_run-[0-9a-f]{8}\.(csv|ndjson|parquet)`).MatchString(log.String()) {
				t.Errorf("the error does not name the key and %q:\n%s", tc.cause, log)
			}
			got := readTree(t, dir)
			if len(got.temps) > 0 {
				t.Errorf("temporary files left: %v", got.temps)
			}
			checkNoOrphans(t, dir)
			for mk, m := range got.manifests {
				for _, f := range m.Files {
					b := got.files[f.Key]
					sum := sha256.Sum256(b)
					if int64(len(b)) != f.Bytes || hex.EncodeToString(sum[:]) != f.SHA256 {
						t.Errorf("published %s (manifest %s) damaged", f.Key, mk)
					}
				}
			}
			t.Logf("%d runs published before the disk filled; error: %s", len(got.manifests), lastLine(log.String()))
		})
	}
}

// TestRowsChangedDuringAnExport updates, inserts and soft-deletes sellers
// of a run while `rerun` is reading it (a view that sleeps per row keeps
// the read open). Pass: the files are byte-identical to an export taken
// before the changes (one snapshot), and a later export shows every change.
func TestRowsChangedDuringAnExport(t *testing.T) {
	dbURL, conn, runID, n := slowSellers(t)
	ctx := context.Background()
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	yaml := fmt.Sprintf("source: {dsn: %q, sellers_table: slow_sellers}\njobs:\n  - {name: new, mode: per_run, destination: 'file://${OUT}', formats: [csv, ndjson, parquet]}\n", dbURL)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	rerun := func(out string) *exec.Cmd {
		cmd, log := runProcess(t, []string{"OUT=" + out}, "rerun", "-config", cfg, "-job", "new", "-run", runID)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("rerun into %s:\n%s", out, log)
			}
		})
		return cmd
	}
	before := t.TempDir()
	if err := rerun(before).Wait(); err != nil {
		t.Fatal(err)
	}

	during := t.TempDir()
	cmd := rerun(during)
	// Wait until the export's query is running (its snapshot is taken).
	for deadline := time.Now().Add(20 * time.Second); ; {
		var active bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'sellersnap' AND state = 'active' AND query LIKE '%slow_sellers%')`).Scan(&active); err != nil {
			t.Fatal(err)
		}
		if active {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the export's query never showed up in pg_stat_activity")
		}
		time.Sleep(10 * time.Millisecond)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`UPDATE sellers SET display_name = 'CHANGED MID-EXPORT', feedback_percent = 1.23 WHERE id IN (SELECT id FROM sellers WHERE first_seen_run_id = $1 AND deleted_at IS NULL ORDER BY id LIMIT 5)`,
		`INSERT INTO sellers SELECT gen_random_uuid(), org_id, 'INSERTED MID-EXPORT', normalized_name, platform, platform_id, feedback_score, feedback_percent, feedback_count, times_seen, flagged, first_seen_run_id, last_seen_run_id, now(), updated_at, NULL
			FROM sellers WHERE first_seen_run_id = $1 AND deleted_at IS NULL LIMIT 3`,
		`UPDATE sellers SET deleted_at = now() WHERE id IN (SELECT id FROM sellers WHERE first_seen_run_id = $1 AND deleted_at IS NULL AND display_name <> 'CHANGED MID-EXPORT' ORDER BY id DESC LIMIT 2)`,
	} {
		if _, err := tx.Exec(ctx, q, runID); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var still bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'sellersnap' AND state = 'active' AND query LIKE '%slow_sellers%')`).Scan(&still); err != nil || !still {
		t.Fatalf("the export's query ended before the changes were committed (%v); slow the view down", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	b, d := readTree(t, before), readTree(t, during)
	if len(b.files) != 4 { // three formats and _SUCCESS
		t.Fatalf("%d files before", len(b.files))
	}
	for k, want := range b.files {
		if !bytes.Equal(d.files[k], want) {
			t.Errorf("%s exported during the changes differs from the one before them", k)
		}
	}

	after := t.TempDir()
	if err := rerun(after).Wait(); err != nil {
		t.Fatal(err)
	}
	for k, data := range readTree(t, after).files {
		if strings.HasSuffix(k, ".csv.gz") || strings.HasSuffix(k, ".csv") {
			if !strings.Contains(string(gunzipIf(t, k, data)), "CHANGED MID-EXPORT") || !strings.Contains(string(gunzipIf(t, k, data)), "INSERTED MID-EXPORT") {
				t.Errorf("%s exported afterwards does not show the changes", k)
			}
		}
	}
	t.Logf("run %s (%d sellers) exported while 5 rows changed, 3 were inserted and 2 deleted: files identical to before", runID, n)
}

// slowSellers makes a demo database with a view, slow_sellers, that
// sleeps 2 ms per row, and returns it, a connection to it, and its largest
// completed run with its number of live sellers.
func slowSellers(t *testing.T) (dbURL string, conn *pgx.Conn, runID string, n int) {
	t.Helper()
	dbURL = pgtest.NewDatabase(t)
	pgtest.Exec(t, dbURL, `CREATE FUNCTION slow(uuid) RETURNS bool LANGUAGE plpgsql VOLATILE AS $$ BEGIN PERFORM pg_sleep(0.002); RETURN true; END $$;
		CREATE VIEW slow_sellers AS SELECT * FROM sellers WHERE slow(id)`)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	if err := conn.QueryRow(ctx, `SELECT s.first_seen_run_id::text, count(*) FROM sellers s JOIN collection_runs r ON r.id = s.first_seen_run_id
		WHERE r.status = 'completed' AND s.deleted_at IS NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1`).Scan(&runID, &n); err != nil {
		t.Fatal(err)
	}
	return dbURL, conn, runID, n
}

func gunzipIf(t *testing.T, key string, b []byte) []byte {
	t.Helper()
	if !strings.HasSuffix(key, ".gz") {
		return b
	}
	r, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestFaultTerminatedBackendPerFormat terminates the export's backend
// (pg_terminate_backend) while it streams a run, for each format alone.
// Pass: `rerun` exits 1 with the server's reason, no object and no
// manifest exist; the next attempt succeeds and is byte-identical to a
// clean export.
func TestFaultTerminatedBackendPerFormat(t *testing.T) {
	skipShort(t)
	dbURL, conn, runID, _ := slowSellers(t)
	ctx := context.Background()
	for _, format := range []string{"csv", "ndjson", "parquet"} {
		t.Run(format, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "p.yaml")
			yaml := fmt.Sprintf("source: {dsn: %q, sellers_table: slow_sellers}\ndaemon: {retry: {attempts: 1}}\njobs:\n  - {name: new, mode: per_run, destination: 'file://${OUT}', formats: [%s]}\n", dbURL, format)
			if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			rerun := func(out string) (*exec.Cmd, *lockedBuffer) {
				return runProcess(t, []string{"OUT=" + out}, "rerun", "-config", cfg, "-job", "new", "-run", runID)
			}
			clean := t.TempDir()
			if cmd, log := rerun(clean); cmd.Wait() != nil {
				t.Fatalf("clean export:\n%s", log)
			}

			dir := t.TempDir()
			cmd, log := rerun(dir)
			for deadline := time.Now().Add(20 * time.Second); ; {
				var n int
				if err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'sellersnap' AND state = 'active' AND query LIKE '%slow_sellers%'`).Scan(&n); err != nil {
					t.Fatal(err)
				}
				if n > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the export's query never showed up")
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err := cmd.Wait(); cmd.ProcessState.ExitCode() != 1 || !strings.Contains(log.String(), "terminating connection due to administrator command") {
				t.Fatalf("exit %d (%v), want 1 naming the termination:\n%s", cmd.ProcessState.ExitCode(), err, log)
			}
			if got := readTree(t, dir); len(got.files)+len(got.manifests)+len(got.temps) != 0 {
				t.Fatalf("left behind: %d files, %d manifests, %d temporary", len(got.files), len(got.manifests), len(got.temps))
			}
			if cmd, log := rerun(dir); cmd.Wait() != nil {
				t.Fatalf("next attempt:\n%s", log)
			}
			sameTree(t, readTree(t, dir), readTree(t, clean))
		})
	}
}

// TestFaultReadOnlyBucketFailsAtOnce exports into a bucket directory on a
// read-only file system (a tmpfs mounted ro; needs root). Pass: the
// permanent error is not retried (retries are configured), `once` exits 1,
// and each failure's log line names the key once and the cause.
func TestFaultReadOnlyBucketFailsAtOnce(t *testing.T) {
	skipShort(t)
	dbURL := loadDemo(t, 2000, 2)
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_RDONLY, "size=1m"); err != nil {
		t.Skipf("cannot mount a read-only tmpfs here (%v)", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, 0) })
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	yaml := fmt.Sprintf("source: {dsn: %q}\ndaemon: {retry: {attempts: 5, initial: 2s}}\njobs:\n  - {name: new, mode: per_run, destination: 'file://%s'}\n", dbURL, dir)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd, log := runProcess(t, nil, "once", "-config", cfg)
	err := cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit %d (%v), want 1:\n%s", code, err, log)
	}
	out := log.String()
	if strings.Contains(out, "retrying") {
		t.Errorf("a read-only file system was retried as transient:\n%s", out)
	}
	failures := 0
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, `msg="export failed"`) {
			continue
		}
		failures++
		keys := regexp.MustCompile(`sellers_[0-9-]+_run-[0-9a-f]{8}\.[a-z]+`).FindAllString(line, -1)
		if len(keys) != 1 || !strings.Contains(line, "read-only file system") || strings.Count(line, "run_id=") != 1 || strings.Contains(line, "job new, run") {
			t.Errorf("want the key once, the cause, and the unit only in the attributes:\n%s", line)
		}
	}
	if failures == 0 {
		t.Errorf("no export failure was logged:\n%s", out)
	}
}

// TestFaultReleaseBinaryIgnoresFailpoints: the kill switch of the fault
// tests lives in the test binary only. A binary built as users build it
// exports normally with SELLERSNAP_FAILPOINT set.
func TestFaultReleaseBinaryIgnoresFailpoints(t *testing.T) {
	skipShort(t)
	bin := filepath.Join(t.TempDir(), "sellersnap")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out := t.TempDir()
	cmd := exec.Command(bin, "once", "-config", filepath.Join("..", "..", "pipeline.yaml"), "-job", "new-sellers")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+pgtest.NewDatabase(t), "SELLERSNAP_BUCKET=file://"+out, "SELLERSNAP_FAILPOINT=before-commit")
	if log, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("once with SELLERSNAP_FAILPOINT set: %v\n%s", err, log)
	}
	if n := countManifests(out); n != 10 {
		t.Errorf("%d manifests, want 10", n)
	}
}
