package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// rerunView is what the backfill test reads of a manifest.
type rerunView struct {
	RunID      string    `json:"run_id"`
	RerunID    string    `json:"rerun_id"`
	ExportedAt time.Time `json:"exported_at"`
}

func readRerunViews(t *testing.T, dir string) map[string]rerunView {
	t.Helper()
	out := map[string]rerunView{}
	for key := range readTree(t, dir).manifests {
		data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(key)))
		if err != nil {
			t.Fatal(err)
		}
		var v rerunView
		if err := json.Unmarshal(data, &v); err != nil {
			t.Fatal(err)
		}
		out[v.RunID] = v
	}
	return out
}

// TestFaultSIGKILLDuringABackfillResumes declares a rerun of 200 runs in
// pipeline.yaml and SIGKILLs `sellersnap once` at five moments of it.
// Pass: after every kill every published manifest is whole; a unit the
// backfill rewrote keeps that export through every later attempt (never
// redone); the last `once` completes it and records it applied; three
// processes started at once then, and a fourth after them, apply nothing
// again.
func TestFaultSIGKILLDuringABackfillResumes(t *testing.T) {
	skipShort(t)
	dbURL := loadDemo(t, 20000, 240)
	dir := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	job := fmt.Sprintf("source: {dsn: %q}\ndaemon: {notify_channel: ''}\njobs:\n  - {name: new, mode: per_run, destination: 'file://%s', formats: [csv, parquet]}\n", dbURL, dir)
	write := func(yaml string) {
		if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(job)
	once := func() (*lockedBuffer, error) {
		cmd, log := runProcess(t, nil, "once", "-config", cfg)
		return log, cmd.Wait()
	}
	if log, err := once(); err != nil {
		t.Fatalf("first export: %v\n%s", err, log)
	}
	runs := len(readRerunViews(t, dir)) // the completed ones
	if runs < 200 {
		t.Fatalf("%d runs exported, want at least 200", runs)
	}
	ref := readTree(t, dir)

	write(job + "reruns:\n  - {id: backfill-1, job: new, from: '2000-01-01', to: '2100-12-31', reason: 'collector fix'}\n")
	start := time.Now()
	cmd, log := runProcess(t, nil, "once", "-config", cfg, "-job", "new")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("a clean backfill (to time it): %v\n%s", err, log)
	}
	took := time.Since(start)
	t.Logf("clean backfill of %d runs: %s", runs, took)
	// Again from the start: a new id.
	write(job + "reruns:\n  - {id: backfill-2, job: new, from: '2000-01-01', to: '2100-12-31', reason: 'collector fix, again'}\n")

	done := map[string]time.Time{} // run → its export by the backfill
	for i := 1; i <= 5; i++ {
		cmd, log := runProcess(t, nil, "once", "-config", cfg, "-job", "new")
		time.Sleep(took / 7)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Logf("kill %d: finished first (%v)\n%s", i, err, log)
		}
		checkPublished(t, readTree(t, dir), ref)
		views := readRerunViews(t, dir)
		rewritten := 0
		for id, v := range views {
			if v.RerunID != "backfill-2" {
				continue
			}
			rewritten++
			if at, ok := done[id]; ok && !at.Equal(v.ExportedAt) {
				t.Errorf("kill %d: run %s rewritten again (exported at %s, then %s)", i, id, at, v.ExportedAt)
			}
			done[id] = v.ExportedAt
		}
		t.Logf("after kill %d: %d of %d runs rewritten by the backfill", i, rewritten, runs)
	}
	if len(done) == 0 || len(done) == runs {
		t.Logf("the kills fell at the very start or after the end (%d rewritten): timing only", len(done))
	}

	// Three at once, then one more: the backfill completes once.
	var logs []*lockedBuffer
	var cmds []interface{ Wait() error }
	for range 3 {
		c, l := runProcess(t, nil, "once", "-config", cfg, "-job", "new")
		cmds, logs = append(cmds, c), append(logs, l)
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("replica %d: %v\n%s", i, err, logs[i])
		}
	}
	views := readRerunViews(t, dir)
	for id, v := range views {
		if v.RerunID != "backfill-2" {
			t.Errorf("run %s not rewritten by the backfill", id)
		}
		if at, ok := done[id]; ok && !at.Equal(v.ExportedAt) {
			t.Errorf("run %s rewritten again after the kills", id)
		}
		done[id] = v.ExportedAt
	}
	recKey := filepath.Join(dir, "sellers", "new", "_sellersnap", "new", "reruns", "backfill-2.json")
	var rec struct {
		Status    string `json:"status"`
		Units     int    `json:"units"`
		Rewritten int    `json:"rewritten"`
		Attempts  int    `json:"attempts"`
	}
	data, err := os.ReadFile(recKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rec); err != nil || rec.Status != "applied" || rec.Units != runs {
		t.Fatalf("record %s: %s, %v", recKey, data, err)
	}
	if rec.Rewritten != runs {
		t.Errorf("record says %d units rewritten, want all %d", rec.Rewritten, runs)
	}
	t.Logf("record: %d attempts, %d units, %d rewritten", rec.Attempts, rec.Units, rec.Rewritten)

	if log, err := once(); err != nil {
		t.Fatalf("once after it: %v\n%s", err, log)
	} else if strings.Contains(log.String(), "applying a declared rerun") {
		t.Errorf("an applied rerun was applied again:\n%s", log)
	}
	for id, v := range readRerunViews(t, dir) {
		if !done[id].Equal(v.ExportedAt) {
			t.Errorf("run %s rewritten after the backfill was applied", id)
		}
	}
}
