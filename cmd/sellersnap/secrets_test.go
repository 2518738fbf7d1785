package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sellersnap/sellersnap/internal/pgtest"
)

// TestBucketSecretsNeverPrinted: the README recommends ${ENV} in bucket
// URLs, so a URL may carry credentials: userinfo, secret query values, or
// userinfo inside a query value (endpoint=http://user:secret@host). None of
// them may appear in command output, logs, the status page or the probes,
// including inside the drivers' own error messages.
func TestBucketSecretsNeverPrinted(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	dead := freeAddr(t) // nothing listens there
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-we-look-for")
	leaked := func(what, out string) {
		t.Helper()
		if strings.Contains(out, "hunter2secret") {
			t.Errorf("%s printed a secret of the bucket URL:\n%s", what, out)
		}
	}
	t.Setenv("AWS_MAX_ATTEMPTS", "1")
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	yaml := "source: {dsn: '${DATABASE_URL}'}\ndaemon: {retry: {attempts: 1}}\n" +
		"jobs:\n  - {name: new-sellers, mode: per_run, destination: '${SELLERSNAP_BUCKET}'}\n  - {name: full-nightly, mode: full, destination: '${SELLERSNAP_BUCKET}'}\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	destinations := []string{
		"s3://bkt?region=us-east-1&use_path_style=true&endpoint=http://AKID:hunter2secret@" + dead,
		"s3://AKID:hunter2secret@bkt?region=us-east-1&use_path_style=true&endpoint=http://" + dead,
		"s3://bkt?region=us-east-1&use_path_style=true&endpoint=http://" + dead + "&sse_key=hunter2secret",
		"file://u:hunter2secret@example/tmp/x",
		"azblob://c?protocol=http&domain=" + dead + "&sas=hunter2secret",
		// Spellings url.Parse does not read as the driver does.
		"s3://bkt?endpoint=usr:hunter2secret@" + dead + "&region=us-east-1&use_path_style=true",
		"s3://bkt?endpoint=http://usr:hunter2secret@[::1&region=us-east-1",
	}
	for i, d := range destinations {
		env := map[string]string{"DATABASE_URL": dbURL, "SELLERSNAP_BUCKET": d}
		cmds := []string{"validate", "once"}
		if i == 0 {
			// A dead S3 endpoint costs seconds a command: every command
			// once, the others validate and once.
			cmds = append(cmds, "plan", "status")
		}
		for _, cmd := range cmds {
			code, stdout, stderr := cli(t, env, cmd, "-config", cfg, "-log-level", "debug")
			if code == 0 && cmd != "plan" {
				t.Errorf("%s with %s: exit 0", cmd, d)
			}
			leaked(cmd+" "+d, stdout+stderr)
		}
	}

	// The daemon: logs, status page and probes with a bucket that fails.
	addr := freeAddr(t)
	cmd, log := runProcess(t, []string{"DATABASE_URL=" + dbURL, "SELLERSNAP_BUCKET=" + destinations[0]},
		"run", "-config", cfg, "-listen", addr, "-log-level", "debug")
	waitHealthy(t, addr, log)
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(log.String(), "WARN") && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	for path, body := range getAll(t, addr, "/", "/metrics", "/healthz", "/readyz") {
		leaked("GET "+path, body)
		if path == "/" && !strings.Contains(body, "s3://bkt") {
			t.Errorf("the status page does not show the (redacted) destination:\n%s", body)
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	leaked("the daemon's log", log.String())
	if !strings.Contains(log.String(), "WARN") {
		t.Errorf("the daemon logged no bucket failure, so its output proves little:\n%s", log)
	}
}
