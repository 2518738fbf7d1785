package verify

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

// TestKubernetesManifestsAreValidObjects decodes every document in
// deploy/kubernetes (and examples/) strictly into the Kubernetes API's own
// Go types, as the API server's schema would: an unknown or misspelled
// field, a value of the wrong type or a kind/apiVersion the API does not
// serve fails. (Offline, so no kubeconform download of schemas; the
// ServiceMonitor is a CRD of the Prometheus Operator and only its shape is
// checked, by cmd/sellersnap's TestKubernetesManifestsMatchTheBinary.)
func TestKubernetesManifestsAreValidObjects(t *testing.T) {
	files, _ := filepath.Glob("../deploy/kubernetes/*.yaml")
	examples, _ := filepath.Glob("../deploy/kubernetes/examples/*.yaml")
	files = append(files, examples...)
	if len(files) < 5 {
		t.Fatalf("%d manifests", len(files))
	}
	typed := map[string]func() any{
		"apps/v1 Deployment":            func() any { return &appsv1.Deployment{} },
		"batch/v1 CronJob":              func() any { return &batchv1.CronJob{} },
		"v1 Service":                    func() any { return &corev1.Service{} },
		"v1 ConfigMap":                  func() any { return &corev1.ConfigMap{} },
		"v1 Secret":                     func() any { return &corev1.Secret{} },
		"v1 ServiceAccount":             func() any { return &corev1.ServiceAccount{} },
		"policy/v1 PodDisruptionBudget": func() any { return &policyv1.PodDisruptionBudget{} },
	}
	seen := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rd := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := rd.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := sigsyaml.Unmarshal(doc, &head); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			kind := head.APIVersion + " " + head.Kind
			if head.Kind == "ServiceMonitor" {
				continue
			}
			mk, ok := typed[kind]
			if !ok {
				t.Errorf("%s: %s is not a kind this test knows (or not one the API serves)", f, kind)
				continue
			}
			obj := mk()
			if err := sigsyaml.UnmarshalStrict(doc, obj); err != nil {
				t.Errorf("%s: %s: %v", filepath.Base(f), kind, err)
				continue
			}
			seen++
			checkRequired(t, filepath.Base(f), obj)
		}
	}
	if seen < 6 {
		t.Errorf("%d objects checked", seen)
	}
}

// checkRequired checks the fields the API server requires that a typed
// decode cannot: names, selectors that match their template, containers
// with names and images, probes with a handler.
func checkRequired(t *testing.T, file string, obj any) {
	t.Helper()
	pod := func(where string, spec corev1.PodSpec) {
		if len(spec.Containers) == 0 {
			t.Errorf("%s: %s has no containers", file, where)
		}
		for _, c := range spec.Containers {
			if c.Name == "" || c.Image == "" {
				t.Errorf("%s: %s: a container without name or image", file, where)
			}
			for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
				if p != nil && p.HTTPGet == nil && p.Exec == nil && p.TCPSocket == nil && p.GRPC == nil {
					t.Errorf("%s: %s: a probe without a handler", file, where)
				}
			}
		}
	}
	switch o := obj.(type) {
	case *appsv1.Deployment:
		if o.Spec.Selector == nil || !matches(o.Spec.Selector.MatchLabels, o.Spec.Template.Labels) {
			t.Errorf("%s: the Deployment's selector does not match its template's labels", file)
		}
		pod("Deployment", o.Spec.Template.Spec)
	case *batchv1.CronJob:
		if strings.TrimSpace(o.Spec.Schedule) == "" {
			t.Errorf("%s: CronJob without a schedule", file)
		}
		pod("CronJob", o.Spec.JobTemplate.Spec.Template.Spec)
	case *policyv1.PodDisruptionBudget:
		if (o.Spec.MinAvailable == nil) == (o.Spec.MaxUnavailable == nil) {
			t.Errorf("%s: a PodDisruptionBudget needs exactly one of minAvailable and maxUnavailable", file)
		}
	}
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return len(selector) > 0
}
