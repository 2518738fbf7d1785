package pipeline

import (
	"testing"

	"github.com/sellersnap/sellersnap/config"
)

// TestConfigFingerprintFollowsWhatShapesTheFiles: the manifests'
// config_fingerprint changes with the columns, a transform, a format or
// its options, and not with the schedule, the time zone of the schedule,
// or the bucket.
func TestConfigFingerprintFollowsWhatShapesTheFiles(t *testing.T) {
	t.Setenv("SELLERSNAP_MASK_KEY", "0123456789abcdef0123456789abcdef")
	fp := func(job string) string {
		t.Helper()
		f, err := config.Parse("t.yaml", []byte("source: {dsn: 'postgres://x@127.0.0.1/db'}\njobs:\n  - "+job+"\n"), CheckConfig)
		if err != nil {
			t.Fatal(err)
		}
		j, err := NewJob(f.Jobs[0])
		if err != nil {
			t.Fatal(err)
		}
		return j.configFingerprint
	}
	base := fp("{name: j, mode: per_run, columns: [display_name, created_at]}")
	for _, tc := range []struct {
		job  string
		same bool
	}{
		{"{name: j, mode: per_run, columns: [display_name, created_at]}", true},
		{"{name: j, mode: per_run, columns: [display_name, created_at], schedule: '0 * * * *'}", true},
		{"{name: j, mode: per_run, columns: [display_name, created_at], destination: 'file:///elsewhere'}", true},
		{"{name: j, mode: per_run, columns: [display_name, created_at, platform]}", false},
		{"{name: j, mode: per_run, columns: [{name: display_name, mask: hmac-sha256}, created_at]}", false},
		{"{name: j, mode: per_run, columns: [{name: display_name, as: name}, created_at]}", false},
		{"{name: j, mode: per_run, columns: [display_name, created_at], formats: [csv]}", false},
		{"{name: j, mode: per_run, columns: [display_name, created_at], csv: {compression: gzip}}", false},
		{"{name: j, mode: per_run, columns: [display_name, created_at], flagged: false}", false},
	} {
		if got := fp(tc.job); (got == base) != tc.same {
			t.Errorf("%s: fingerprint same as the base: %v, want %v", tc.job, got == base, tc.same)
		}
	}
}
