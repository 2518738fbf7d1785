package main

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	osexec "os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/internal/daemon"
	"github.com/sellersnap/sellersnap/pipeline"
)

// obj is a decoded Kubernetes manifest.
type obj map[string]any

// at follows a path of map keys; "" when absent.
func (o obj) at(keys ...string) any {
	var v any = map[string]any(o)
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func asObj(v any) obj { m, _ := v.(map[string]any); return m }

func list(v any) []obj {
	var out []obj
	s, _ := v.([]any)
	for _, e := range s {
		out = append(out, asObj(e))
	}
	return out
}

// TestKubernetesManifestsMatchTheBinary parses every manifest in
// deploy/kubernetes and checks it against what the binary does: the
// container arguments parse as a command line, the config in the ConfigMap
// loads, the probes ask paths and the port `run` serves, the grace period
// outlasts shutdown_grace, and the pods run as the image's non-root user
// with a read-only root file system and no capabilities.
func TestKubernetesManifestsMatchTheBinary(t *testing.T) {
	files, _ := filepath.Glob("../../deploy/kubernetes/*.yaml")
	if len(files) < 4 {
		t.Fatalf("%d manifests", len(files))
	}
	byKind := map[string][]obj{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		for {
			var o map[string]any
			if err := dec.Decode(&o); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if o["apiVersion"] == nil || o["kind"] == nil || asObj(o["metadata"])["name"] == nil {
				t.Errorf("%s: a document without apiVersion, kind or metadata.name", f)
			}
			byKind[o["kind"].(string)] = append(byKind[o["kind"].(string)], o)
		}
	}
	for _, kind := range []string{"ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceMonitor", "CronJob"} {
		if len(byKind[kind]) != 1 {
			t.Fatalf("%d %s manifests, want 1", len(byKind[kind]), kind)
		}
	}
	// kubectl apply -f deploy/kubernetes/ must not overwrite the real
	// Secret with an example's CHANGE-ME.
	if len(byKind["Secret"]) != 0 {
		t.Errorf("a Secret among the applied manifests: keep examples in deploy/kubernetes/examples/")
	}

	// The config loads, with the variables the pods set.
	t.Setenv("DATABASE_URL", "postgres://u@127.0.0.1/db")
	t.Setenv("SELLERSNAP_BUCKET", "s3://b?region=eu-west-1")
	yml, _ := byKind["ConfigMap"][0].at("data", "pipeline.yaml").(string)
	cfg, err := config.Parse("configmap pipeline.yaml", []byte(yml), pipeline.CheckConfig)
	if err != nil {
		t.Fatalf("the ConfigMap's pipeline.yaml: %v", err)
	}
	_, port, _ := strings.Cut(*cfg.Daemon.Listen, ":")
	grace := cfg.Daemon.ShutdownGrace.Duration

	dep := byKind["Deployment"][0]
	cron := byKind["CronJob"][0]
	pods := map[string]obj{"Deployment": asObj(dep.at("spec", "template", "spec")), "CronJob": asObj(cron.at("spec", "jobTemplate", "spec", "template", "spec"))}
	for kind, pod := range pods {
		if g, _ := pod["terminationGracePeriodSeconds"].(int); time.Duration(g)*time.Second < grace+5*time.Second {
			t.Errorf("%s: terminationGracePeriodSeconds %d, want at least shutdown_grace (%s) + 5s", kind, g, grace)
		}
		if pod.at("securityContext", "runAsNonRoot") != true || pod.at("securityContext", "runAsUser") != 65532 {
			t.Errorf("%s: the pod must run as non-root user 65532", kind)
		}
		mounts := map[string]string{}
		for _, v := range list(pod["volumes"]) {
			if name, _ := v.at("configMap", "name").(string); name != "" {
				mounts[v["name"].(string)] = "configmap"
			}
		}
		containers := list(pod["containers"])
		if len(containers) != 1 {
			t.Fatalf("%s: %d containers", kind, len(containers))
		}
		c := containers[0]
		image, _ := c["image"].(string)
		if !strings.Contains(image, "@sha256:") && (!strings.Contains(image, ":") || strings.HasSuffix(image, ":latest")) {
			t.Errorf("%s: image %q is not pinned (a version tag or a digest)", kind, image)
		}
		var args []string
		for _, a := range c["args"].([]any) {
			args = append(args, a.(string))
		}
		cmd, o, done, err := parseArgs(args, io.Discard, io.Discard)
		if err != nil || done {
			t.Errorf("%s: args %q do not parse: %v", kind, args, err)
		}
		want := map[string]string{"Deployment": "run", "CronJob": "once"}[kind]
		if cmd != want {
			t.Errorf("%s: runs %q, want %q", kind, cmd, want)
		}
		configMounted := false
		for _, m := range list(c["volumeMounts"]) {
			if mounts[m["name"].(string)] == "configmap" && strings.HasPrefix(o.config, m["mountPath"].(string)+"/") {
				configMounted = true
			}
		}
		if !configMounted {
			t.Errorf("%s: -config %s is not in a mounted ConfigMap", kind, o.config)
		}
		var env []string
		for _, e := range list(c["env"]) {
			env = append(env, e["name"].(string))
			if e["name"] == "DATABASE_URL" && e.at("valueFrom", "secretKeyRef", "name") == nil {
				t.Errorf("%s: DATABASE_URL must come from a Secret", kind)
			}
		}
		if !slices.Contains(env, "DATABASE_URL") || !slices.Contains(env, "SELLERSNAP_BUCKET") {
			t.Errorf("%s: env %v, want DATABASE_URL and SELLERSNAP_BUCKET", kind, env)
		}
		sc := asObj(c["securityContext"])
		if sc["readOnlyRootFilesystem"] != true || sc["allowPrivilegeEscalation"] != false || !slices.Contains(sc.at("capabilities", "drop").([]any), any("ALL")) {
			t.Errorf("%s: want a read-only root file system, no privilege escalation, capabilities dropped", kind)
		}
		if c.at("resources", "limits", "memory") == nil || c.at("resources", "requests", "memory") == nil {
			t.Errorf("%s: memory request and limit required", kind)
		}
	}

	// The probes ask what `run` serves, on its port.
	c := list(pods["Deployment"]["containers"])[0]
	ports := map[string]string{}
	for _, p := range list(c["ports"]) {
		ports[p["name"].(string)] = itoa(p["containerPort"])
	}
	if ports["http"] != port {
		t.Errorf("containerPort %s, daemon.listen port %s", ports["http"], port)
	}
	mux := (&daemon.Daemon{Runner: &pipeline.Runner{}}).Handler().(*http.ServeMux)
	// Readiness must not depend on PostgreSQL or the bucket: an outage
	// would make every pod unready and block node drains (the PDB).
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/healthz"} {
		got, _ := c.at(probe, "httpGet", "path").(string)
		if got != path {
			t.Errorf("%s asks %q, want %q", probe, got, path)
		}
		if _, pattern := mux.Handler(httptest.NewRequest("GET", got, nil)); pattern == "" {
			t.Errorf("%s: the daemon serves nothing at %s", probe, got)
		}
		if p := itoa(c.at(probe, "httpGet", "port")); p != port && ports[p] != port {
			t.Errorf("%s asks port %s, the daemon listens on %s", probe, p, port)
		}
	}
	// One way to scrape: the ServiceMonitor (annotations would scrape twice
	// and rename the job label the alert rules match on).
	if ann, _ := dep.at("spec", "template", "metadata", "annotations").(map[string]any); len(ann) > 0 {
		for k := range ann {
			if strings.HasPrefix(k, "prometheus.io/") {
				t.Errorf("pod annotation %s: scrape through the ServiceMonitor only", k)
			}
		}
	}
	if r, _ := dep.at("spec", "replicas").(int); r < 2 {
		t.Errorf("%d replicas", r)
	} else if m, _ := byKind["PodDisruptionBudget"][0].at("spec", "maxUnavailable").(int); m != 1 {
		t.Errorf("PodDisruptionBudget maxUnavailable %d, want 1", m)
	}
	if byKind["ServiceMonitor"][0].at("spec", "endpoints") == nil || list(byKind["ServiceMonitor"][0].at("spec", "endpoints"))[0]["honorLabels"] != true {
		t.Errorf("the ServiceMonitor must honor sellersnap's job label")
	}
}

func itoa(v any) string {
	switch x := v.(type) {
	case int:
		return strconv.Itoa(x)
	case string:
		return x
	}
	return ""
}

// TestSystemdUnitMatchesTheBinary checks deploy/systemd/sellersnap.service:
// ExecStart parses as a `run` command line, the stop timeout outlasts the
// default shutdown_grace, the sandboxing is there, and systemd-analyze
// verify (Debian's systemd package; CI installs it) finds nothing to say.
func TestSystemdUnitMatchesTheBinary(t *testing.T) {
	data, err := os.ReadFile("../../deploy/systemd/sellersnap.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			keys[k] = v
		}
	}
	exec := strings.Fields(keys["ExecStart"])
	if len(exec) < 2 || !filepath.IsAbs(exec[0]) {
		t.Fatalf("ExecStart=%s", keys["ExecStart"])
	}
	if cmd, _, done, err := parseArgs(exec[1:], io.Discard, io.Discard); err != nil || done || cmd != "run" {
		t.Errorf("ExecStart arguments %q: %q, %v", exec[1:], cmd, err)
	}
	if stop, err := time.ParseDuration(keys["TimeoutStopSec"]); err != nil || stop < config.DefaultShutdownGrace+5*time.Second {
		t.Errorf("TimeoutStopSec=%s, want at least shutdown_grace (%s) + 5s", keys["TimeoutStopSec"], config.DefaultShutdownGrace)
	}
	for k, want := range map[string]string{"DynamicUser": "yes", "ProtectSystem": "strict", "NoNewPrivileges": "yes", "Restart": "on-failure",
		"StateDirectory": "sellersnap", "EnvironmentFile": "/etc/sellersnap/env", "CapabilityBoundingSet": "",
		// exit 2 (usage or configuration) is not restarted for ever
		"RestartPreventExitStatus": "2", "ProtectClock": "yes", "ProtectKernelLogs": "yes", "RestrictRealtime": "yes"} {
		if v, ok := keys[k]; !ok || v != want {
			t.Errorf("%s=%q, want %q", k, v, want)
		}
	}
	analyze, err := osexec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze is not installed (Debian's systemd package)")
		}
		t.Skip("systemd-analyze is not installed")
	}
	// verify insists that ExecStart's program exists: check the rest with /bin/true in its place.
	unit := filepath.Join(t.TempDir(), "sellersnap.service")
	if err := os.WriteFile(unit, []byte(strings.Replace(string(data), "ExecStart="+exec[0], "ExecStart=/bin/true", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := osexec.Command(analyze, "verify", unit).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// systemd-analyze security scores the sandbox: at most 2.0 ("OK").
	out, err = osexec.Command(analyze, "security", "--offline=true", unit).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	if score, _ := strconv.ParseFloat(string(m[1]), 64); score > 2.0 {
		t.Errorf("systemd-analyze security scores the unit %.1f, want at most 2.0:\n%s", score, out)
	}
}
