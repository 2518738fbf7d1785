package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestDriverLeftOutIsAConfigError: a binary built without a driver (-tags
// nogcs, noazure) refuses a job that needs it when it loads the config
// (exit 2, naming the field and the tag), and the default build has every
// driver.
func TestDriverLeftOutIsAConfigError(t *testing.T) {
	for scheme := range optionalDrivers {
		if !slices.Contains(drivers, scheme) {
			t.Errorf("the default build lacks %s://", scheme)
		}
	}
	saved := drivers
	t.Cleanup(func() { drivers = saved })
	for _, tc := range []struct{ dest, scheme, tag string }{
		{"gs://bucket/x", "gs", "nogcs"},
		{"azblob://container", "azblob", "noazure"},
	} {
		drivers = slices.DeleteFunc(slices.Clone(saved), func(s string) bool { return s == tc.scheme })
		cfg := filepath.Join(t.TempDir(), "p.yaml")
		yaml := fmt.Sprintf("source: {dsn: 'postgres://127.0.0.1:1/x'}\njobs:\n  - {name: j, mode: full, destination: %q}\n", tc.dest)
		if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, stderr := cli(t, nil, "validate", "-config", cfg)
		if code != 2 || !strings.Contains(stderr, "jobs[0].destination") || !strings.Contains(stderr, "-tags "+tc.tag) {
			t.Errorf("%s without its driver: exit %d\n%s", tc.dest, code, stderr)
		}
	}
}
