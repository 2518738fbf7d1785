package pipeline_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sellersnap/sellersnap/config"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestMetricsStatusPageAndProbes(t *testing.T) {
	f := newFixture(t, "")
	_, stop := f.daemon("@yearly", "sellers", false, 5*time.Second)
	waitFor(t, "start-up catch-up", 30*time.Second, func() bool { return len(f.manifests()) == 10 })
	base := "http://" + f.daemons[0].Addr().String()

	code, body := get(t, base+"/healthz")
	if code != 200 {
		t.Errorf("/healthz: %d %s", code, body)
	}
	code, body = get(t, base+"/readyz")
	if code != 200 {
		t.Errorf("/readyz: %d %s", code, body)
	}
	code, body = get(t, base+"/metrics")
	for _, want := range []string{
		`sellersnap_runs_total{job="new-sellers",outcome="success"} 10`,
		`sellersnap_rows_total{format="parquet",job="new-sellers"}`,
		`sellersnap_bytes_total{format="csv",job="new-sellers"}`,
		`sellersnap_run_duration_seconds_count{job="new-sellers"} 10`,
		`sellersnap_last_success_timestamp_seconds{job="new-sellers"}`,
		`sellersnap_backlog_runs{job="new-sellers"} 0`,
		`sellersnap_oldest_pending_run_age_seconds{job="new-sellers"} 0`,
		`sellersnap_exports_in_flight{job="new-sellers"} 0`,
		`go_goroutines`,
	} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	code, body = get(t, base+"/")
	if code != 200 || strings.Count(body, `class="export success"`) != 10 || !strings.Contains(body, `<code>@yearly</code>`) ||
		!strings.Contains(body, `class="backlog">0<`) || !strings.Contains(body, "/manifest?key=sellers%2fnew%2forg%3d") {
		t.Errorf("status page: %d (%d exports, yearly %v, backlog %v, link %v)\n%.3000s", code, strings.Count(body, `class="export success"`), strings.Contains(body, `<code>@yearly</code>`), strings.Contains(body, `class="backlog">0<`), strings.Contains(body, "/manifest?key=sellers%2fnew%2forg%3d"), body)
	}
	i := strings.Index(body, `/manifest?key=`)
	link := strings.ReplaceAll(body[i:i+strings.Index(body[i:], `"`)], "&amp;", "&")
	if code, m := get(t, base+link); code != 200 || !strings.Contains(m, `"manifest_version": 1`) {
		t.Errorf("manifest link %s: %d %s", link, code, m)
	}
	if code, _ := get(t, base+"/manifest?job=new-sellers&key=../../etc/passwd"); code != 404 {
		t.Errorf("arbitrary key: %d, want 404", code)
	}

	// What a person sees: the page in a real headless browser.
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Log("chromium is not installed (.ci/run installs it): skipping the browser check")
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
			"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--user-data-dir="+t.TempDir(), "--dump-dom", base+"/").Output()
		if err != nil {
			t.Fatalf("chromium: %v", err)
		}
		dom := string(out)
		if !strings.Contains(dom, `id="job-new-sellers"`) || strings.Count(dom, `class="export success"`) != 10 || !strings.Contains(dom, "<title>sellersnap</title>") {
			t.Errorf("the browser rendered:\n%s", dom)
		}
	}
	stop()
}

// TestMetricsExistFromTheStartAndCountFailures: every series of every job
// exists at start-up (so rate() and absence alerts work), a job whose
// bucket cannot be opened counts failed passes with reason "bucket" and
// shows its bucket down, and a restarted daemon reads the last success
// from the bucket instead of starting empty.
func TestMetricsExistFromTheStartAndCountFailures(t *testing.T) {
	f := newFixture(t, "")
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := *f.job("new-sellers")
	broken := *f.job("new-sellers")
	broken.Name, broken.Destination = "broken", "file://"+notADir+"/bucket"
	_, stop := f.daemonFor([]*config.Job{&good, &broken}, "sellers", false, 5*time.Second)
	waitFor(t, "the HTTP server", 10*time.Second, func() bool { return f.daemons[0].Addr() != nil })
	base := "http://" + f.daemons[0].Addr().String()
	var body string
	waitFor(t, "exports and a failed pass", 30*time.Second, func() bool {
		_, body = get(t, base+"/metrics")
		return len(f.manifests()) == 10 && strings.Contains(body, `sellersnap_pass_failures_total{job="broken",reason="bucket"} 1`)
	})
	for _, job := range []string{"new-sellers", "broken"} {
		for _, series := range []string{
			`sellersnap_runs_total{job="%s",outcome="success"}`, `sellersnap_runs_total{job="%s",outcome="failure"}`,
			`sellersnap_runs_total{job="%s",outcome="skipped"}`, `sellersnap_rows_total{format="csv",job="%s"}`,
			`sellersnap_bytes_total{format="parquet",job="%s"}`, `sellersnap_run_duration_seconds_count{job="%s"}`,
			`sellersnap_last_success_timestamp_seconds{job="%s"}`, `sellersnap_backlog_runs{job="%s"}`,
			`sellersnap_oldest_pending_run_age_seconds{job="%s"}`, `sellersnap_retries_total{job="%s"}`,
			`sellersnap_exports_in_flight{job="%s"}`, `sellersnap_panics_total{job="%s"}`,
			`sellersnap_ticks_coalesced_total{job="%s"}`, `sellersnap_latest_failures_total{job="%s"}`,
			`sellersnap_pass_failures_total{job="%s",reason="database"}`, `sellersnap_pass_failures_total{job="%s",reason="other"}`,
			`sellersnap_dependency_up{dependency="bucket",job="%s"}`,
		} {
			if want := fmt.Sprintf(series, job); !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	}
	for _, want := range []string{
		`sellersnap_dependency_up{dependency="bucket",job="broken"} 0`,
		`sellersnap_dependency_up{dependency="bucket",job="new-sellers"} 1`,
		`sellersnap_dependency_up{dependency="postgres",job=""} 1`,
		`sellersnap_runs_total{job="new-sellers",outcome="success"} 10`,
		`sellersnap_last_success_timestamp_seconds{job="broken"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	stop()

	// A restart: nothing is pending, and the last success comes from the bucket.
	_, stop = f.daemonFor([]*config.Job{&good}, "sellers", false, 5*time.Second)
	waitFor(t, "the HTTP server", 10*time.Second, func() bool { return f.daemons[1].Addr() != nil })
	base = "http://" + f.daemons[1].Addr().String()
	waitFor(t, "the last success read from the bucket", 10*time.Second, func() bool {
		_, body = get(t, base+"/metrics")
		return regexp.MustCompile(`sellersnap_last_success_timestamp_seconds\{job="new-sellers"\} [1-9]`).MatchString(body)
	})
	stop()
}
