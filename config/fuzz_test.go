package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/pipeline"
)

// FuzzParse feeds the loader arbitrary bytes, seeded with the shipped
// config and every invalid one. Invariants: it never panics, and it either
// returns a config with at least one job or an error naming the file.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/invalid/*.yaml")
	seeds = append(seeds, "../pipeline.yaml")
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(base + "    schedule: '@every 1s'\n    columns: [{name: a, as: b}]\n"))
	f.Add([]byte("&a [*a]"))
	f.Add([]byte("a: &x {b: *x}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var cfg *config.File
		var err error
		done := make(chan struct{})
		go func() { cfg, err = config.Parse("fuzz.yaml", data, pipeline.CheckConfig); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("Parse hangs on %q", data)
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") && !strings.Contains(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if cfg == nil || len(cfg.Jobs) == 0 {
			t.Fatalf("no error and no jobs for %q", data)
		}
	})
}
