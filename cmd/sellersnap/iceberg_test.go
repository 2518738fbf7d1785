package main

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sellersnap/sellersnap/internal/pgtest"
)

// TestIcebergThroughTheCommands: validate creates and checks the table,
// plan -v names the commit of every pending run, once commits, status
// shows the current snapshot; the catalog's password is never printed,

// shippedWithIceberg writes the shipped config with its iceberg block
// uncommented and returns its path.
func shippedWithIceberg(t *testing.T) string {
	t.Helper()
	shipped, err := os.ReadFile(filepath.Join("..", "..", "pipeline.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer("    # iceberg:", "    iceberg:", "    #   ", "      ").Replace(string(shipped))
	if !strings.Contains(cfg, "\n    iceberg:\n      catalog: sql") {
		t.Fatal("pipeline.yaml has no commented iceberg block to enable")
	}
	p := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// and an empty catalog DSN exits 2.
func TestIcebergThroughTheCommands(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	catalog := withPassword(t, dbURL)
	out := t.TempDir()
	cfgPath := shippedWithIceberg(t)
	env := map[string]string{"DATABASE_URL": dbURL, "SELLERSNAP_BUCKET": "file://" + out, "ICEBERG_CATALOG_URL": catalog}
	leaked := func(what, s string) {
		t.Helper()
		if strings.Contains(s, "hunter2secret") {
			t.Errorf("%s printed the catalog's password:\n%s", what, s)
		}
	}

	code, stdout, stderr := cli(t, env, "validate", "-config", cfgPath)
	leaked("validate", stdout+stderr)
	if code != 0 || !strings.Contains(stdout, "iceberg table sellersnap.sellersnap.new_sellers at file://"+out+"/iceberg/sellersnap/new_sellers: created (no snapshot yet)") {
		t.Fatalf("validate: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = cli(t, env, "validate", "-config", cfgPath)
	if code != 0 || !strings.Contains(stdout, "schema and partitioning match the job's") {
		t.Fatalf("validate again: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, _ = cli(t, env, "plan", "-config", cfgPath, "-job", "new-sellers", "-v")
	runs := strings.Count(stdout, "  - run ")
	if code != 0 || runs == 0 || strings.Count(stdout, "iceberg sellersnap.sellersnap.new_sellers: one snapshot replacing partition org=") != runs {
		t.Fatalf("plan -v: exit %d, %d runs\n%s", code, runs, stdout)
	}
	if code, stdout, stderr = cli(t, env, "once", "-config", cfgPath, "-job", "new-sellers"); code != 0 {
		t.Fatalf("once: exit %d\n%s%s", code, stdout, stderr)
	}
	leaked("once", stdout+stderr)
	code, stdout, stderr = cli(t, env, "status", "-config", cfgPath, "-job", "new-sellers")
	leaked("status", stdout+stderr)
	if code != 0 || !strings.Contains(stdout, "current snapshot ") || !strings.Contains(stdout, "retention 24h0m0s, keeping at least 10 snapshots") {
		t.Fatalf("status: exit %d\n%s%s", code, stdout, stderr)
	}

	// An empty catalog DSN is a configuration error, never a job without
	// its table; an unreachable catalog fails validate, naming the table.
	env["ICEBERG_CATALOG_URL"] = ""
	if code, _, stderr = cli(t, env, "validate", "-config", cfgPath); code != 2 || !strings.Contains(stderr, "ICEBERG_CATALOG_URL") {
		t.Errorf("empty catalog DSN: exit %d\n%s", code, stderr)
	}
	// Port 1 on loopback: a well-formed DSN nothing answers.
	u, err := url.Parse(catalog)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = "127.0.0.1:1"
	env["ICEBERG_CATALOG_URL"] = u.String()
	code, stdout, stderr = cli(t, env, "validate", "-config", cfgPath)
	leaked("validate with an unreachable catalog", stdout+stderr)
	if code == 0 || !strings.Contains(stderr, "iceberg") || !strings.Contains(stderr, "connect") {
		t.Errorf("unreachable catalog: exit %d\n%s%s", code, stdout, stderr)
	}
}
