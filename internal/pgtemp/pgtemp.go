package pgtemp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options tune a throwaway cluster. The zero value works.
type Options struct {
	// BinDir holds initdb and postgres. Default: the newest
	// /usr/lib/postgresql/*/bin, else the directory of initdb on PATH.
	BinDir string
	// Settings are extra server settings (name → value) passed as -c flags.
	Settings map[string]string
	// StartTimeout bounds how long Start waits for the server to accept
	// connections. Default: 60s.
	StartTimeout time.Duration
	// Dir, when set, keeps the cluster in this directory instead of a
	// temporary one: an existing cluster there is started again with its
	// data, and Stop leaves the directory in place. For benchmark data
	// that takes minutes to load.
	Dir string
	// Port is the TCP port to listen on; 0 picks a free one. Set it with
	// Dir to restart a cluster where its clients expect it.
	Port int
}

// Server is a running throwaway cluster.
type Server struct {
	dir  string
	keep bool
	port int
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// Start initialises a new cluster in a temporary directory and starts it.
// The caller must call Stop.
func Start(ctx context.Context, opts Options) (*Server, error) {
	binDir, err := findBinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	dir, err := clusterDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, keep: opts.Dir != "", log: filepath.Join(dir, "postgres.log")}
	ok := false
	defer func() {
		if !ok && !s.keep {
			os.RemoveAll(dir)
		}
	}()

	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("pgtemp: chown %s: %w", dir, err)
		}
	}
	data := filepath.Join(dir, "data")
	if err := initCluster(ctx, binDir, data, cred); err != nil {
		return nil, err
	}

	port, err := opts.Port, error(nil)
	if port == 0 {
		port, err = freePort()
	}
	if err != nil {
		return nil, err
	}
	s.port = port
	args := []string{"-D", data, "-p", strconv.Itoa(port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "shared_buffers=128MB",
	}
	keys := make([]string, 0, len(opts.Settings))
	for k := range opts.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+opts.Settings[k])
	}
	logf, err := os.Create(s.log)
	if err != nil {
		return nil, fmt.Errorf("pgtemp: %w", err)
	}
	defer logf.Close()
	s.cmd = exec.Command(filepath.Join(binDir, "postgres"), args...)
	s.cmd.Stdout = logf
	s.cmd.Stderr = logf
	// SIGQUIT is PostgreSQL's immediate shutdown: if this process dies
	// without calling Stop, the server goes with it.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("pgtemp: start postgres: %w", err)
	}
	s.done = make(chan struct{})
	go func() {
		_ = s.cmd.Wait()
		close(s.done)
	}()

	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	if err := s.waitReady(ctx, timeout); err != nil {
		s.kill()
		return nil, err
	}
	ok = true
	return s, nil
}

// clusterDir returns the directory of the cluster: dir, made absolute and
// created, or a new temporary one.
func clusterDir(dir string) (string, error) {
	if dir == "" {
		dir, err := os.MkdirTemp("", "sellersnap-pg-")
		if err != nil {
			return "", fmt.Errorf("pgtemp: %w", err)
		}
		return dir, nil
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("pgtemp: %w", err)
	}
	// The parents must stay traversable for the postgres user.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("pgtemp: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return "", fmt.Errorf("pgtemp: %w", err)
	}
	return dir, nil
}

// initCluster runs initdb into data unless a cluster is there already.
func initCluster(ctx context.Context, binDir, data string, cred *syscall.Credential) error {
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err == nil {
		return nil
	}
	os.RemoveAll(data) // a half-made cluster from an interrupted initdb
	initdb := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"),
		"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
		"--locale=C", "--no-sync", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("pgtemp: initdb: %w\n%s", err, out)
	}
	return nil
}

// URL returns a connection URL for database db (TCP on 127.0.0.1, user postgres).
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// Port is the TCP port the server listens on.
func (s *Server) Port() int { return s.port }

// Dir is the cluster's directory.
func (s *Server) Dir() string { return s.dir }

// Stop shuts the server down (fast mode) and removes its directory unless
// Options.Dir chose it.
func (s *Server) Stop() error {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			s.kill()
		}
	}
	if s.keep {
		return nil
	}
	return os.RemoveAll(s.dir)
}

func (s *Server) kill() {
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
}

func (s *Server) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("pgtemp: postgres exited during start-up:\n%s", s.logTail())
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, s.URL("postgres"))
		cancel()
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("pgtemp: server not ready after %s: %v\n%s", timeout, last, s.logTail())
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(bytes.TrimSpace(b))
}

// serverCredential returns the postgres user's credential when running as
// root, nil otherwise.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtemp: running as root needs a \"postgres\" user to run the server: %w", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func findBinDir(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool { return pgVersion(matches[i]) > pgVersion(matches[j]) })
	if len(matches) > 0 {
		return filepath.Dir(matches[0]), nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		return filepath.Dir(p), nil
	}
	return "", errors.New("pgtemp: no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin and PATH); install the postgresql package or set DATABASE_URL")
}

func pgVersion(initdbPath string) int {
	parts := strings.Split(initdbPath, string(filepath.Separator))
	for i, p := range parts {
		if p == "postgresql" && i+1 < len(parts) {
			v, _ := strconv.Atoi(parts[i+1])
			return v
		}
	}
	return 0
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtemp: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
