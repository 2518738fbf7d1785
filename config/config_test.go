package config_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/pipeline"
)

const base = `source:
  dsn: postgres://x@127.0.0.1/db
jobs:
  - name: j
    mode: per_run
`

func TestShippedConfigLoads(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:secret@127.0.0.1/db")
	// Unset or empty, the destination is an error naming the variable,
	// never a folder in the working directory.
	t.Setenv("SELLERSNAP_BUCKET", "")
	if _, err := config.Load("../pipeline.yaml"); err == nil || !strings.Contains(err.Error(), "SELLERSNAP_BUCKET") {
		t.Errorf("SELLERSNAP_BUCKET empty: %v; want an error naming it", err)
	}
	os.Unsetenv("SELLERSNAP_BUCKET")
	if _, err := config.Load("../pipeline.yaml"); err == nil || !strings.Contains(err.Error(), "SELLERSNAP_BUCKET") {
		t.Errorf("SELLERSNAP_BUCKET unset: %v; want an error naming it", err)
	}
	t.Setenv("SELLERSNAP_BUCKET", "s3://b?region=eu-west-1")
	f, err := config.Load("../pipeline.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Jobs) != 2 || f.Jobs[0].Name != "new-sellers" || f.Jobs[1].Name != "full-nightly" {
		t.Fatalf("jobs: %+v", f.Jobs)
	}
	nightly := f.Jobs[1]
	if nightly.Mode != config.ModeFull || nightly.Schedule != "0 2 * * *" || nightly.Location.String() != "UTC" {
		t.Errorf("full-nightly: %+v", nightly)
	}
	if f.Jobs[0].Destination != "s3://b?region=eu-west-1" || f.Jobs[1].Destination != "s3://b?region=eu-west-1" {
		t.Errorf("destination: %q", f.Jobs[0].Destination)
	}
	if got := strings.Join(f.Jobs[1].SourceColumns(), ","); got != strings.Join(config.DefaultColumns(), ",") {
		t.Errorf("default columns: %s", got)
	}
}

func TestDefaultsAndExpansion(t *testing.T) {
	t.Setenv("ROWS", "500")
	t.Setenv("GUARD", "false")
	f, err := config.Parse("p.yaml", []byte(base+`    batch_rows: ${ROWS}
    csv:
      formula_guard: ${GUARD}
      compression: "${COMP:-gzip}"
    columns: [display_name, {name: created_at, as: discovered_at}]
    destination: "s3://b?region=$${x}"
    flagged: ${SELLERSNAP_TEST_NO_SUCH_VAR:-}
`))
	if err != nil {
		t.Fatal(err)
	}
	j := f.Jobs[0]
	if j.BatchRows != 500 || *j.CSV.FormulaGuard || j.CSV.Compression != "gzip" {
		t.Errorf("expansion: rows=%d guard=%v comp=%s", j.BatchRows, *j.CSV.FormulaGuard, j.CSV.Compression)
	}
	if j.Flagged != nil {
		t.Errorf("${VAR:-} is the explicit empty value: flagged = %v", *j.Flagged)
	}
	if j.Destination != "s3://b?region=${x}" {
		t.Errorf("$$ escape: %q", j.Destination)
	}
	if j.Columns[1].Output() != "discovered_at" || j.Columns[1].Name != "created_at" {
		t.Errorf("rename: %+v", j.Columns)
	}
	if j.Path != config.DefaultPerRunPath || j.Schedule != config.DefaultPerRunSchedule || j.Parquet.Compression != "" { // "": the format's default (sinks)
		t.Errorf("defaults: %+v", j)
	}
	if f.Source.StatementTimeout.Duration != config.DefaultStatementTimeout {
		t.Errorf("statement timeout default %v", f.Source.StatementTimeout)
	}
	if next := j.Cron.Next(time.Date(2026, 1, 1, 0, 7, 0, 0, time.UTC)); next != time.Date(2026, 1, 1, 0, 15, 0, 0, time.UTC) {
		t.Errorf("cron next = %v", next)
	}
}

// TestErrorsNameFieldAndLine loads every file in testdata/invalid: each
// is one kind of operator mistake, and its trailing "# want:" lines are
// what the error must say ({file} is the file's path).
func TestErrorsNameFieldAndLine(t *testing.T) {
	t.Setenv("SELLERSNAP_TEST_UNSET", "")
	os.Unsetenv("SELLERSNAP_TEST_UNSET")
	t.Setenv("SELLERSNAP_TEST_EMPTY", "")
	files, err := filepath.Glob("testdata/invalid/*.yaml")
	if err != nil || len(files) < 20 {
		t.Fatalf("%d invalid configs (%v)", len(files), err)
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".yaml"), func(t *testing.T) {
			wants := invalidWants(t, path)
			_, err := config.Load(path, pipeline.CheckConfig)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain:\n%s", err, w)
				}
			}
		})
	}
	for _, path := range []string{"testdata/no-such-file.yaml", "testdata"} {
		_, err := config.Load(path, pipeline.CheckConfig)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("Load(%q) = %v, want an error naming the file", path, err)
		}
	}
}

// invalidWants returns the "# want:" lines of an invalid config.
func invalidWants(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var wants []string
	for _, line := range strings.Split(string(data), "\n") {
		if w, ok := strings.CutPrefix(line, "# want: "); ok {
			wants = append(wants, strings.ReplaceAll(w, "{file}", path))
		}
	}
	if len(wants) == 0 {
		t.Fatalf("%s has no # want: line", path)
	}
	return wants
}

func TestDSNNeverInErrors(t *testing.T) {
	secret := "postgres://u:hunter2@127.0.0.1/db"
	_, err := config.Parse("p.yaml", []byte("source: {dsn: '"+secret+"', bogus: 1}\njobs: [{name: j, mode: full}]\n"))
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("err = %v", err)
	}
}

// TestAliasFanOutIsBounded: a few kilobytes of YAML aliases that fan out
// must fail fast with a bounded message, not decode to millions of values
// or print an error line for each of them.
func TestAliasFanOutIsBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("source: {dsn: postgres://x@127.0.0.1/db}\njobs:\n")
	b.WriteString("  - &j {name: j, mode: sideways, formats: [[tsv]], columns: &c [&x {name: a, as: b}")
	for i := 0; i < 300; i++ {
		b.WriteString(", *x")
	}
	b.WriteString("]}\n")
	for i := 0; i < 2000; i++ {
		b.WriteString("  - *j\n")
	}
	if b.Len() > 32<<10 {
		t.Fatalf("the file should be small: %d bytes", b.Len())
	}
	_, err := config.Parse("fan.yaml", []byte(b.String()))
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) > 21 {
		t.Errorf("%d error lines, want at most 21 (20 and a count)", len(lines))
	}
	if !strings.Contains(err.Error(), "more than 50000 values") {
		t.Errorf("error does not say what happened:\n%v", err)
	}
}

// TestManyMistakesAreCounted: a file with hundreds of mistakes lists the first
// 20 and says how many more there are.
func TestManyMistakesAreCounted(t *testing.T) {
	var b strings.Builder
	b.WriteString("source: {dsn: postgres://x@127.0.0.1/db}\njobs:\n")
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, "  - {name: j%d, mode: per_run, formats: [tsv]}\n", i)
	}
	_, err := config.Parse("many.yaml", []byte(b.String()), pipeline.CheckConfig)
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 21 || lines[20] != "… and 80 more problems" {
		t.Errorf("%d lines, last %q", len(lines), lines[len(lines)-1])
	}
}

// TestDeclaredRerunOfAnEarlierDayStillLoads: an entry for yesterday (or
// tomorrow) is not a configuration error: its date rules are judged when
// it is applied, so a file that held a valid entry yesterday still loads
// today and a restarted daemon does not crash-loop on it.
func TestDeclaredRerunOfAnEarlierDayStillLoads(t *testing.T) {
	for _, day := range []time.Time{time.Now().AddDate(0, 0, -1), time.Now().AddDate(0, 0, 1)} {
		d := day.UTC().Format(time.DateOnly)
		yaml := `source: {dsn: "postgres://x@localhost/db"}
jobs:
  - {name: full, mode: full, destination: "file:///tmp/full", schedule: "0 2 * * *", timezone: UTC}
reruns:
  - {id: fix-1, job: full, from: "` + d + `", to: "` + d + `", reason: "collector bug"}
`
		if _, err := config.Parse("p.yaml", []byte(yaml)); err != nil {
			t.Errorf("an entry for %s: %v", d, err)
		}
	}
}

// TestRerunEntriesAreBounded: a reruns: entry with more run ids than an
// entry takes, a reason of a few pages, and a file of megabytes each get
// their own message, not the alias guard's, and cost little memory.
func TestRerunEntriesAreBounded(t *testing.T) {
	head := `source: {dsn: "postgres://x@localhost/db"}
jobs:
  - {name: runs, mode: per_run, destination: "file:///tmp/runs"}
reruns:
`
	ids := make([]string, 20000)
	for i := range ids {
		ids[i] = fmt.Sprintf("%08x-0000-4000-8000-000000000000", i)
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"20,000 run ids", head + "  - {id: many, job: runs, reason: r, runs: [" + strings.Join(ids, ", ") + "]}\n",
			"reruns[0].runs: lists 20000 items; at most 10000 (for reruns: runs, select a date range"},
		{"a reason of 5,000 characters", head + "  - {id: long, job: runs, runs: [" + ids[0] + "], reason: " + strings.Repeat("x", 5000) + "}\n",
			"reruns[0].reason: is 5000 characters; at most 2000"},
		{"a file of 2 MiB", head + "# " + strings.Repeat("x", 2<<20) + "\n", "the file is larger than 1024 KiB"},
	} {
		_, err := config.Parse("p.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want %q", tc.name, err, tc.want)
		}
	}
}
