package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/internal/pipelinetest"
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

// unitOutputs is what the kill test reads of one run's export.
type unitOutputs struct {
	manifest []byte
	view     struct {
		Files []struct {
			Key    string `json:"key"`
			Bytes  int64  `json:"bytes"`
			SHA256 string `json:"sha256"`
		} `json:"files"`
		Rows  int64 `json:"rows"`
		Table *struct {
			DataFile string `json:"data_file"`
			Rows     int64  `json:"rows"`
		} `json:"table"`
	}
	intents, staged []string
	states          []string // of the intents (check fills it)
}

// readUnit reads the export of run from dir: its manifest, and the
// intents and staged files of the job.
func readUnit(t *testing.T, dir, run string) unitOutputs {
	t.Helper()
	var u unitOutputs
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case strings.Contains(rel, "/intents/") && strings.HasSuffix(rel, ".tmp"):
			// A Put a kill cut short: no reader sees it.
		case strings.Contains(rel, "/intents/"):
			u.intents = append(u.intents, rel)
		case strings.Contains(rel, "/staging/"):
			u.staged = append(u.staged, rel)
		case d.Name() == "manifest.json" && strings.Contains(rel, "run="+run):
			u.manifest, err = os.ReadFile(p)
		}
		return err
	})
	if err == nil {
		err = json.Unmarshal(u.manifest, &u.view)
	}
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestFaultRerunKilledAtRandomIsOldOrNew reruns one run of ~20k sellers
// of a job with an Iceberg table again and again, one seller's name
// changed before each rerun (so each rerun's files differ from the
// export it replaces), and SIGKILLs the process at a random moment of its
// whole length (half of the kills anywhere, half in its last fifth, where
// the commits are), until 50 kills have landed. Pass, after every kill:
// the manifest lists exactly the bytes of the files at its keys (the old
// export or the new one, never a mix); either no intent is left, no
// staged file either, and the table's one data file of the run is the
// one the manifest names, with its rows; or an intent is left, `status
// -verify` names it and exits 1, and the next `once` settles it, after
// which the same holds.
func TestFaultRerunKilledAtRandomIsOldOrNew(t *testing.T) {
	skipShort(t)
	dbURL := loadDemo(t, 60000, 3)
	dir := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "p.yaml")
	yaml := fmt.Sprintf(`source: {dsn: %q}
daemon: {notify_channel: ''}
jobs:
  - name: new-sellers
    mode: per_run
    destination: 'file://%s'
    iceberg: {catalog: sql, uri: %q, namespace: kill, table: new_sellers}
`, dbURL, dir, dbURL)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	if cmd, log := runProcess(t, nil, "once", "-config", cfg); cmd.Wait() != nil {
		t.Fatalf("first export:\n%s", log)
	}
	conn := pgtest.Connect(t, dbURL)
	ctx := context.Background()
	var run, seller string
	var rows int64
	err := conn.QueryRow(ctx, `SELECT first_seen_run_id::text, count(*), min(id::text) FROM sellers
		WHERE first_seen_run_id IS NOT NULL AND NOT flagged GROUP BY 1 ORDER BY 2 DESC LIMIT 1`).Scan(&run, &rows, &seller)
	if err != nil {
		t.Fatal(err)
	}
	rerun := func(env ...string) (*exec.Cmd, *lockedBuffer) {
		return runProcess(t, env, "rerun", "-config", cfg, "-job", "new-sellers", "-run", run)
	}
	start := time.Now()
	if cmd, log := rerun(); cmd.Wait() != nil {
		t.Fatalf("clean rerun:\n%s", log)
	}
	took := time.Since(start)
	t.Logf("run %s: %d rows, a clean rerun takes %s", run, rows, took.Round(time.Millisecond))

	// check holds after every kill, with no intent pending.
	check := func(i int) unitOutputs {
		t.Helper()
		u := readUnit(t, dir, run)
		// Between two exports (an intent left), a file may hold the
		// bytes its intent moves there.
		staged := map[string]string{}
		for _, k := range u.intents {
			var in struct {
				State string
				Moves []struct{ To, SHA256 string }
			}
			b, _ := os.ReadFile(filepath.Join(dir, k))
			if err := json.Unmarshal(b, &in); err != nil {
				t.Fatalf("kill %d: intent %s: %v", i, k, err)
			}
			for _, mv := range in.Moves {
				staged[mv.To] = mv.SHA256
			}
			u.states = append(u.states, in.State)
		}
		for _, f := range u.view.Files {
			b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.Key)))
			sum := sha256.Sum256(b)
			got := hex.EncodeToString(sum[:])
			if err != nil || (int64(len(b)) != f.Bytes || got != f.SHA256) && (staged[f.Key] == "" || got != staged[f.Key]) {
				t.Fatalf("kill %d: the manifest lists %s with %d bytes %s; the bucket has %d bytes %s (%v), intents %v: a mix of two exports",
					i, f.Key, f.Bytes, f.SHA256[:12], len(b), got[:12], err, u.intents)
			}
		}
		if len(u.intents) > 0 {
			return u
		}
		if len(u.staged) > 0 {
			t.Fatalf("kill %d: staged files without an intent: %v", i, u.staged)
		}
		tb := pipelinetest.ReadTable(t, dbURL, "kill", "new_sellers", nil)
		var live []string
		for loc, n := range tb.Live {
			if unitOf(loc) == "run="+run {
				live = append(live, fmt.Sprintf("%s (%d rows)", loc, n))
			}
		}
		if u.view.Table == nil || len(live) != 1 || live[0] != fmt.Sprintf("%s (%d rows)", u.view.Table.DataFile, u.view.Rows) {
			t.Fatalf("kill %d: the table holds %v of the run; its manifest names %+v with %d rows", i, live, u.view.Table, u.view.Rows)
		}
		return u
	}
	check(0)

	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d", seed)
	var kills, old, replaced, finished int
	between := map[string]int{}
	for i := 1; kills < 50 && i <= 120; i++ {
		if _, err := conn.Exec(ctx, `UPDATE sellers SET display_name = $1 WHERE id = $2`, fmt.Sprintf("Renamed %d", i), seller); err != nil {
			t.Fatal(err)
		}
		before := readUnit(t, dir, run)
		frac := rng.Float64()
		if i%2 == 0 {
			frac = 0.8 + 0.25*rng.Float64()
		}
		cmd, log := rerun()
		time.Sleep(time.Duration(frac * float64(took)))
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			if err != nil {
				t.Fatalf("rerun %d failed: %v\n%s", i, err, log)
			}
			finished++
			check(i)
			continue
		}
		kills++
		u := check(i)
		switch {
		case len(u.intents) > 0:
			between[strings.Join(u.states, ",")]++
			st, slog := runProcess(t, nil, "status", "-verify", "-config", cfg)
			serr := st.Wait()
			if serr == nil || !strings.Contains(slog.String(), "between two exports") || !strings.Contains(slog.String(), run) {
				t.Fatalf("kill %d left %v; status -verify (%v) does not name it:\n%s", i, u.intents, serr, slog)
			}
			once, olog := runProcess(t, nil, "once", "-config", cfg)
			if err := once.Wait(); err != nil {
				t.Fatalf("once after kill %d: %v\n%s", i, err, olog)
			}
			if u := check(i); len(u.intents) > 0 {
				t.Fatalf("once after kill %d left %v", i, u.intents)
			}
		case bytes.Equal(u.manifest, before.manifest):
			old++
		default:
			replaced++
		}
	}
	t.Logf("%d kills: %d left the old export, %d the new one, %v between the two by intent state (settled by the next once); %d reruns finished first",
		kills, old, replaced, between, finished)
	if kills < 50 {
		t.Fatalf("only %d kills landed", kills)
	}
	// The run as the database has it now, once in the table.
	if cmd, log := rerun(); cmd.Wait() != nil {
		t.Fatalf("last rerun:\n%s", log)
	}
	check(-1)
}
