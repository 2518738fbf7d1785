package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/internal/pipelinetest"
	"github.com/sellersnap/sellersnap/pipeline"
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
	pipelinetest.WaitFor(t, "start-up catch-up", 30*time.Second, func() bool { return len(f.Manifests()) == 10 })
	base := "http://" + f.daemons[0].Addr().String()
	// A manifest is on disk a moment before its export is counted.
	pipelinetest.WaitFor(t, "the exports counted", 10*time.Second, func() bool {
		_, m := get(t, base+"/metrics")
		return strings.Contains(m, `sellersnap_runs_total{job="new-sellers",outcome="success"} 10`)
	})

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
	if !strings.Contains(body, `<svg class="chart"`) || strings.Count(body, `<rect class="bar"`) != 10 || !strings.Contains(body, `<polyline class="duration"`) {
		t.Errorf("the status page has no chart of the 10 exports")
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
	if err != nil && os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed; CI must install it (Debian package chromium)")
	}
	if err != nil {
		t.Log("SKIPPED: chromium is not installed (apt-get install chromium): the browser check")
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
		checkLayout(t, chromium, base+"/", "healthy")
	}
	stop()
}

// checkLayout renders the status page in Chromium at a desktop and a phone
// width and fails if it is wider than the window (a horizontal scroll bar:
// long ids that do not wrap, a table that does not fit). The page has no
// JavaScript; the test serves a copy with a measuring script added, and
// keeps a screenshot of each width (SELLERSNAP_SCREENSHOTS=dir).
func checkLayout(t *testing.T, chromium, pageURL, name string) {
	t.Helper()
	_, page := get(t, pageURL)
	measure := `<script>document.body.dataset.overflow = String(document.documentElement.scrollWidth > window.innerWidth);` +
		`document.body.dataset.width = String(window.innerWidth);</script></body>`
	copyOfPage := strings.Replace(page, "</body>", measure, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, copyOfPage)
	}))
	defer srv.Close()
	for _, width := range []int{1280, 390} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
			"--user-data-dir=" + t.TempDir(), fmt.Sprintf("--window-size=%d,1400", width)}
		out, err := exec.CommandContext(ctx, chromium, append(args, "--dump-dom", srv.URL)...).Output()
		if err != nil {
			cancel()
			t.Fatalf("chromium at %d px: %v", width, err)
		}
		if dom := string(out); !strings.Contains(dom, `data-overflow="false"`) {
			i := strings.Index(dom, "<body")
			t.Errorf("at %d px the status page is wider than the window: %.200s", width, dom[i:])
		}
		if dir := os.Getenv("SELLERSNAP_SCREENSHOTS"); dir != "" {
			shot := filepath.Join(dir, fmt.Sprintf("status-%s-%d.png", name, width))
			if out, err := exec.CommandContext(ctx, chromium, append(args, "--screenshot="+shot, srv.URL)...).CombinedOutput(); err != nil {
				t.Errorf("screenshot: %v\n%s", err, out)
			}
		}
		cancel()
	}
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
	good := *f.Job("new-sellers")
	broken := *f.Job("new-sellers")
	broken.Name, broken.Destination = "broken", "file://"+notADir+"/bucket"
	_, stop := f.daemonFor([]*pipeline.Job{&good, &broken}, "sellers", false, 5*time.Second)
	pipelinetest.WaitFor(t, "the HTTP server", 10*time.Second, func() bool { return f.daemons[0].Addr() != nil })
	base := "http://" + f.daemons[0].Addr().String()
	var body string
	pipelinetest.WaitFor(t, "exports and a failed pass", 30*time.Second, func() bool {
		_, body = get(t, base+"/metrics")
		// At least one failed pass (a quarter-hour tick may add one).
		// The metrics, not the manifests: a manifest is on disk before its export is counted.
		return strings.Contains(body, `sellersnap_runs_total{job="new-sellers",outcome="success"} 10`) && regexp.MustCompile(`sellersnap_pass_failures_total\{job="broken",reason="bucket"\} [1-9]`).MatchString(body)
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
	_, page := get(t, base+"/")
	broken0 := page[strings.Index(page, `id="job-broken"`):]
	good0 := page[strings.Index(page, `id="job-new-sellers"`):strings.Index(page, `id="job-broken"`)]
	if !strings.Contains(broken0, `class="health failing"`) || !strings.Contains(broken0, "open bucket") ||
		!strings.Contains(broken0, `class="bucket down"`) || !strings.Contains(broken0, `class="last-success">never`) {
		t.Errorf("the failing job's section:\n%s", broken0)
	}
	if !strings.Contains(good0, `class="health ok"`) || !strings.Contains(good0, `class="bucket up"`) || strings.Contains(good0, `class="last-success">never`) {
		t.Errorf("the healthy job's section:\n%s", good0)
	}
	if !strings.Contains(page, `class="db up"`) || !strings.Contains(page, `http-equiv="refresh"`) {
		t.Errorf("the page lacks the database state or its refresh")
	}
	if chromium, err := exec.LookPath("chromium"); err == nil {
		checkLayout(t, chromium, base+"/", "failing-and-healthy")
	}
	stop()

	// A restart: nothing is pending, and the last success comes from the bucket.
	_, stop = f.daemonFor([]*pipeline.Job{&good}, "sellers", false, 5*time.Second)
	pipelinetest.WaitFor(t, "the HTTP server", 10*time.Second, func() bool { return f.daemons[1].Addr() != nil })
	base = "http://" + f.daemons[1].Addr().String()
	pipelinetest.WaitFor(t, "the last success read from the bucket", 10*time.Second, func() bool {
		_, body = get(t, base+"/metrics")
		return regexp.MustCompile(`sellersnap_last_success_timestamp_seconds\{job="new-sellers"\} [1-9]`).MatchString(body)
	})
	// … and the page shows the exports before the restart, read from the bucket.
	pipelinetest.WaitFor(t, "the exports read from the bucket", 10*time.Second, func() bool {
		_, page = get(t, base+"/")
		return strings.Count(page, `class="export success"`) == 10
	})
	if strings.Contains(page, "No exports yet") {
		t.Errorf("the restarted page says there are no exports")
	}
	stop()
}

// TestDaemonAppliesADeclaredRerunAndShowsIt: a reruns: entry is applied by
// the daemon's start-up pass, shown on the status page with its record,
// and counted in sellersnap_reruns_total.
func TestDaemonAppliesADeclaredRerunAndShowsIt(t *testing.T) {
	f := newFixture(t, "")
	runs, err := f.Src.CompletedRuns(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	job := *f.Job("new-sellers")
	sched, err := config.ParseSchedule("@yearly")
	if err != nil {
		t.Fatal(err)
	}
	job.Cron, job.Schedule = sched, "@yearly"
	job.Reruns = []pipeline.DeclaredRerun{{ID: "page-check", Reason: "collector fix <b>#7</b>",
		Selection: pipeline.Selection{Runs: []string{runs[0].ID, runs[1].ID}}, Selectors: "v1"}}
	f.daemonFor([]*pipeline.Job{&job}, "sellers", false, 5*time.Second)
	pipelinetest.WaitFor(t, "the HTTP server", 10*time.Second, func() bool { return f.daemons[0].Addr() != nil })
	base := "http://" + f.daemons[0].Addr().String()
	pipelinetest.WaitFor(t, "the rerun applied", 30*time.Second, func() bool {
		_, m := get(t, base+"/metrics")
		return strings.Contains(m, `sellersnap_reruns_total{job="new-sellers",status="applied"} 1`)
	})
	code, body := get(t, base+"/")
	if code != 200 || !strings.Contains(body, `<tr class="rerun applied"><td class="id">page-check</td>`) ||
		!strings.Contains(body, "2 of 2") || !strings.Contains(body, "collector fix &lt;b&gt;#7&lt;/b&gt;") {
		i := max(strings.Index(body, "Declared reruns")-100, 0)
		t.Errorf("status page: %d\n%.2000s", code, body[i:])
	}
}

// TestAReadOnlyBucketIsDown: a job whose bucket can be read but not
// written (a read-only file system) is down everywhere an operator looks:
// sellersnap_dependency_up{dependency="bucket"} is 0, /readyz is 503
// naming the job and the cause, and the status page says the bucket is
// down; the healthy job's bucket stays up.
func TestAReadOnlyBucketIsDown(t *testing.T) {
	f := newFixture(t, "")
	ro := t.TempDir()
	if err := syscall.Mount("tmpfs", ro, "tmpfs", syscall.MS_RDONLY, "size=1m"); err != nil {
		t.Skipf("cannot mount a read-only tmpfs here (%v)", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(ro, 0) })
	good := *f.Job("new-sellers")
	broken := *f.Job("new-sellers")
	broken.Name, broken.Destination = "read-only", "file://"+ro
	_, stop := f.daemonFor([]*pipeline.Job{&good, &broken}, "sellers", false, 5*time.Second)
	defer stop()
	pipelinetest.WaitFor(t, "the HTTP server", 10*time.Second, func() bool { return f.daemons[0].Addr() != nil })
	base := "http://" + f.daemons[0].Addr().String()
	pipelinetest.WaitFor(t, "the bucket check", 20*time.Second, func() bool {
		_, m := get(t, base+"/metrics")
		return strings.Contains(m, `sellersnap_dependency_up{dependency="bucket",job="read-only"} 0`) &&
			strings.Contains(m, `sellersnap_dependency_up{dependency="bucket",job="new-sellers"} 1`)
	})
	code, body := get(t, base+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "read-only") || !strings.Contains(body, "not writable") {
		t.Errorf("/readyz: %d %s; want 503 naming the job and why", code, body)
	}
	if code, body := get(t, base+"/"); code != 200 || !strings.Contains(body, `<span class="bucket down">down</span>`) {
		i := max(strings.Index(body, "read-only")-200, 0)
		t.Errorf("status page: %d\n%.1500s", code, body[i:])
	}
}

// TestTheTableOnTheStatusPageAndItsCatalogAsADependency: a job with an
// Iceberg table shows its current snapshot on the status page, and its
// catalog is a dependency (sellersnap_dependency_up), down when the
// catalog's database cannot be reached.
func TestTheTableOnTheStatusPageAndItsCatalogAsADependency(t *testing.T) {
	f := newFixture(t, "")
	f.Load(fmt.Sprintf("    iceberg: {catalog: sql, uri: %q, table: new_sellers}\n", f.DBURL))
	_, stop := f.daemon("@yearly", "sellers", false, 5*time.Second)
	defer stop()
	pipelinetest.WaitFor(t, "start-up catch-up", 30*time.Second, func() bool { return len(f.Manifests()) == 10 })
	base := "http://" + f.daemons[0].Addr().String()
	pipelinetest.WaitFor(t, "the catalog checked", 30*time.Second, func() bool {
		_, m := get(t, base+"/metrics")
		return strings.Contains(m, `sellersnap_dependency_up{dependency="iceberg_catalog",job="new-sellers"} 1`)
	})
	// The status page reads the table at the checks (every 15 s); the
	// first check may have seen it before the last commit.
	pipelinetest.WaitFor(t, "the table on the status page", 40*time.Second, func() bool {
		_, body := get(t, base+"/")
		return strings.Contains(body, `Iceberg table <code>sellersnap.sellersnap.new_sellers</code>, catalog <span class="catalog up">up</span>`) &&
			regexp.MustCompile(`snapshot <span class="snapshot">\d+</span> \((append|overwrite|delete), [^)]*\): \d+ records in \d+ files`).MatchString(body)
	})
	_, m := get(t, base+"/metrics")
	if !regexp.MustCompile(`sellersnap_table_commits_total\{job="new-sellers"\} [1-9]`).MatchString(m) {
		t.Errorf("no table commit counted:\n%s", m)
	}
	stop()

	// A catalog nobody answers for: the dependency is down.
	f.Load("    iceberg: {catalog: sql, uri: 'postgres://u@127.0.0.1:1/catalog?connect_timeout=1', table: new_sellers}\n")
	_, stop2 := f.daemon("@yearly", "sellers", false, 5*time.Second)
	defer stop2()
	pipelinetest.WaitFor(t, "the second daemon listening", 10*time.Second, func() bool { return f.daemons[1].Addr() != nil })
	base = "http://" + f.daemons[1].Addr().String()
	pipelinetest.WaitFor(t, "the catalog down", 30*time.Second, func() bool {
		_, m := get(t, base+"/metrics")
		return strings.Contains(m, `sellersnap_dependency_up{dependency="iceberg_catalog",job="new-sellers"} 0`)
	})
}
