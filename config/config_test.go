package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sellersnap/sellersnap/config"
)

const base = `source:
  dsn: postgres://x@127.0.0.1/db
jobs:
  - name: j
    mode: per_run
`

func TestShippedConfigLoads(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:secret@127.0.0.1/db")
	t.Setenv("SELLERSNAP_BUCKET", "")
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
	if f.Jobs[0].Destination != "file://./snapshots" {
		t.Errorf("destination default: %q", f.Jobs[0].Destination)
	}
	if got := strings.Join(f.Jobs[1].SourceColumns(), ","); got != strings.Join(config.DefaultColumns, ",") {
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
`))
	if err != nil {
		t.Fatal(err)
	}
	j := f.Jobs[0]
	if j.BatchRows != 500 || *j.CSV.FormulaGuard || j.CSV.Compression != "gzip" {
		t.Errorf("expansion: rows=%d guard=%v comp=%s", j.BatchRows, *j.CSV.FormulaGuard, j.CSV.Compression)
	}
	if j.Destination != "s3://b?region=${x}" {
		t.Errorf("$$ escape: %q", j.Destination)
	}
	if j.Columns[1].Output() != "discovered_at" || j.Columns[1].Name != "created_at" {
		t.Errorf("rename: %+v", j.Columns)
	}
	if j.Path != config.DefaultPerRunPath || j.Schedule != config.DefaultPerRunSchedule || j.Parquet.Compression != "zstd" {
		t.Errorf("defaults: %+v", j)
	}
	if f.Source.StatementTimeout.Duration != config.DefaultStatementTimeout {
		t.Errorf("statement timeout default %v", f.Source.StatementTimeout)
	}
	if next := j.Cron.Next(time.Date(2026, 1, 1, 0, 7, 0, 0, time.UTC)); next != time.Date(2026, 1, 1, 0, 15, 0, 0, time.UTC) {
		t.Errorf("cron next = %v", next)
	}
}

func TestErrorsNameFieldAndLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want []string // each must appear in the error
	}{
		{"unknown top key", base + "extra: 1\n", []string{"p.yaml:6: extra: unknown key"}},
		{"unknown job key", base + "    shedule: '* * * * *'\n", []string{"p.yaml:6: jobs[0].shedule: unknown key \"shedule\""}},
		{"wrong type", base + "    batch_rows: many\n", []string{"p.yaml:6: jobs[0].batch_rows: want a whole number, got \"many\""}},
		{"bool type", base + "    flagged: maybe\n", []string{"p.yaml:6: jobs[0].flagged: want a boolean"}},
		{"bad cron", base + "    schedule: '61 * * * *'\n", []string{"p.yaml:6: jobs[0].schedule: invalid cron expression"}},
		{"never fires", base + "    schedule: '0 0 31 2 *'\n", []string{"p.yaml:6: jobs[0].schedule: cron expression \"0 0 31 2 *\" never fires"}},
		{"bad tz", base + "    timezone: Mars/Olympus\n", []string{"p.yaml:6: jobs[0].timezone: unknown time zone \"Mars/Olympus\""}},
		{"unknown format", base + "    formats: [csv, xlsx]\n", []string{"p.yaml:6: jobs[0].formats[1]: unknown format \"xlsx\""}},
		{"duplicate format", base + "    formats: [csv, csv]\n", []string{"jobs[0].formats[1]: format \"csv\" is listed twice"}},
		{"unknown mode", strings.Replace(base, "per_run", "hourly", 1), []string{"p.yaml:5: jobs[0].mode: unknown mode \"hourly\""}},
		{"duplicate job", base + "  - name: j\n    mode: full\n", []string{"p.yaml:6: jobs[1].name: duplicate job name \"j\" (also jobs[0], line 4)"}},
		{"bad placeholder", base + "    path: a/{run_id}/{nope}.{ext}\n", []string{"jobs[0].path: unknown placeholder {nope}"}},
		{"no run in path", base + "    path: a/{org_id}/x.{ext}\n", []string{"jobs[0].path: a per_run path needs {run_id}"}},
		{"no ext", base + "    path: a/{run_id}/x\n", []string{"jobs[0].path: the file name must contain {ext}"}},
		{"bad bucket", base + "    destination: ftp://x\n", []string{"jobs[0].destination: unknown bucket scheme \"ftp\""}},
		{"bad compression", base + "    csv: {compression: rar}\n", []string{"jobs[0].csv.compression: unknown compression \"rar\""}},
		{"bad delimiter", base + "    csv: {delimiter: '\"'}\n", []string{"jobs[0].csv.delimiter"}},
		{"duplicate output", base + "    columns: [a, {name: b, as: a}]\n", []string{"jobs[0].columns[1]: output column \"a\" appears twice"}},
		{"column key", base + "    columns: [{name: a, rename: b}]\n", []string{"jobs[0].columns[0]: unknown key \"rename\""}},
		{"duplicate key", base + "    mode: full\n", []string{"p.yaml:6: jobs[0].mode: duplicate key (first set on line 5)"}},
		{"bad duration", "source: {dsn: x, statement_timeout: forever}\njobs: [{name: j, mode: full}]\n", []string{"p.yaml:1: source.statement_timeout: want a duration"}},
		{"unset dsn var", "source: {dsn: '${SELLERSNAP_TEST_UNSET}'}\njobs: [{name: j, mode: full}]\n", []string{"source.dsn: is empty: environment variable SELLERSNAP_TEST_UNSET is not set"}},
		{"no jobs", "source: {dsn: x}\n", []string{"jobs: at least one job is required"}},
		{"bad job name", strings.Replace(base, "name: j", "name: 'Bad Name'", 1), []string{"jobs[0].name: \"Bad Name\""}},
		{"batch range", base + "    batch_rows: -1\n", []string{"jobs[0].batch_rows: must be between"}},
		{"syntax", base + "    columns: [a\n", []string{"p.yaml: "}},
		{"several at once", base + "    timezone: Nowhere\n    formats: [tsv]\n", []string{"jobs[0].timezone", "jobs[0].formats[0]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse("p.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain:\n%s", err, w)
				}
			}
		})
	}
}

func TestDSNNeverInErrors(t *testing.T) {
	secret := "postgres://u:hunter2@127.0.0.1/db"
	_, err := config.Parse("p.yaml", []byte("source: {dsn: '"+secret+"', bogus: 1}\njobs: [{name: j, mode: full}]\n"))
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("err = %v", err)
	}
}
