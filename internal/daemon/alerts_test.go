package daemon_test

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sellersnap/sellersnap/internal/daemon"
)

// TestAlertRulesUseRealSeries checks docs/alerts.yaml: valid YAML in the
// Prometheus rule-file shape, every rule with an expression, a duration
// that parses, a severity and a summary, and every sellersnap_* series it
// names among those a daemon exports at start-up (a renamed metric would
// otherwise silently disarm an alert).
func TestAlertRulesUseRealSeries(t *testing.T) {
	data, err := os.ReadFile("../../docs/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		t.Fatal(err)
	}

	m := daemon.NewMetrics()
	f := newFixture(t, "")
	m.InitJobs(f.Jobs())
	daemon.MarkDependency(m, "postgres", "", true) // the daemon's first check, at start-up
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, fam := range families {
		known[fam.GetName()] = true
		for _, suffix := range []string{"_count", "_sum", "_bucket"} {
			known[fam.GetName()+suffix] = true
		}
	}
	series := regexp.MustCompile(`sellersnap_[a-z_]+`)
	rules := 0
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			rules++
			if r.Alert == "" || strings.TrimSpace(r.Expr) == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %q: needs alert, expr and a summary", r.Alert)
			}
			if sev := r.Labels["severity"]; sev != "page" && sev != "ticket" {
				t.Errorf("rule %s: severity %q, want page or ticket", r.Alert, sev)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("rule %s: for: %v", r.Alert, err)
				}
			}
			if strings.Count(r.Expr, "(") != strings.Count(r.Expr, ")") {
				t.Errorf("rule %s: unbalanced parentheses", r.Alert)
			}
			for _, name := range series.FindAllString(r.Expr+" "+r.Annotations["description"], -1) {
				if !known[name] {
					t.Errorf("rule %s names %s, which sellersnap does not export", r.Alert, name)
				}
			}
		}
	}
	if rules < 5 {
		t.Errorf("%d rules", rules)
	}

	// Prometheus's own check parses every expression (.ci/run installs it).
	if out, err := exec.Command(needPromtool(t), "check", "rules", "../../docs/alerts.yaml").CombinedOutput(); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
}

// needPromtool returns promtool's path. Without it the test is skipped
// loudly on a developer's machine (make test must pass with only Go and
// PostgreSQL) and fails in CI, which installs it.
func needPromtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatal("promtool is not installed; CI must install it (Debian package prometheus)")
	}
	t.Skip("SKIPPED: promtool is not installed (apt-get install prometheus): the alert rules were not checked")
	return ""
}

// TestAlertScenarios runs promtool test rules on docs/alerts_test.yaml:
// with three replicas' series, each failure an operator must hear about
// pages by its deadline (a nightly job failing, a job that never
// succeeded, a stuck backlog, a bucket that cannot be written, the
// database down for 5 minutes, every pod gone) and the cases that must stay
// quiet do (one pod of three gone, a 10 s database blip, a rerun in
// progress, a nightly job the day after its snapshot).
func TestAlertScenarios(t *testing.T) {
	if out, err := exec.Command(needPromtool(t), "test", "rules", "../../docs/alerts_test.yaml").CombinedOutput(); err != nil {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
}
