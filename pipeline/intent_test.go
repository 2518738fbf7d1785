package pipeline_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/internal/pipelinetest"
	"github.com/sellersnap/sellersnap/pipeline"
)

// diffFiles lists the keys whose bytes differ between two listings of a
// bucket.
func diffFiles(before, after map[string][]byte) []string {
	var out []string
	for k, b := range before {
		a, ok := after[k]
		switch {
		case !ok:
			out = append(out, "removed "+k)
		case !bytes.Equal(a, b):
			out = append(out, "changed "+k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			out = append(out, "added "+k)
		}
	}
	slices.Sort(out)
	return out
}

// TestFailedTableCommitKeepsThePublishedExport reruns a published run
// while its table commit fails in each way a PostgreSQL catalog makes it
// fail: the catalog refusing the new metadata (a trigger raising), a race
// lost past every retry (a trigger that makes every compare-and-swap
// match no row), the catalog database going down just before the commit.
// Every time the bucket is byte for byte what it was (data files,
// manifest, _SUCCESS, latest.json, schema.json, the table's files: no
// orphan data file) and so is the table; the error says the old export is
// kept. Then the fault goes and the rerun goes through.
func TestFailedTableCommitKeepsThePublishedExport(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	catURL := pgtest.NewEmptyDatabase(t)
	u, _ := url.Parse(catURL)
	catDB := strings.TrimPrefix(u.Path, "/")
	dir := t.TempDir()
	f := &fixture{pipelinetest.NewOn(t, dbURL, "file://"+dir, dir, icebergYAML(catURL))}
	res, _ := f.Once("new-sellers")
	var run string
	for _, m := range res.Exported {
		if m.Rows > 0 {
			run = m.RunID
		}
	}
	if run == "" {
		t.Fatal("no run with rows")
	}
	job := f.Job("new-sellers")
	before := f.AllFiles()
	tbBefore := pipelinetest.ReadTable(t, catURL, "snap", "new_sellers", nil)

	faults := []struct{ name, arm, disarm string }{
		{"the catalog refuses the metadata",
			`CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'new metadata refused'; END $$;
			 CREATE TRIGGER refuse BEFORE UPDATE ON iceberg_tables FOR EACH ROW EXECUTE FUNCTION refuse()`,
			`DROP TRIGGER refuse ON iceberg_tables; DROP FUNCTION refuse()`},
		{"a race lost past every retry",
			`CREATE FUNCTION lose() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
			 CREATE TRIGGER lose BEFORE UPDATE ON iceberg_tables FOR EACH ROW EXECUTE FUNCTION lose()`,
			`DROP TRIGGER lose ON iceberg_tables; DROP FUNCTION lose()`},
		{"the catalog is down", "", ""},
	}
	for _, fault := range faults {
		t.Run(fault.name, func(t *testing.T) {
			down := fault.arm == ""
			pipeline.SetBeforeCommit(f.Runner, func() {
				if down {
					pgtest.Exec(t, dbURL, fmt.Sprintf(`ALTER DATABASE %q ALLOW_CONNECTIONS false`, catDB))
					pgtest.Exec(t, dbURL, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, catDB)
				} else {
					pgtest.Exec(t, catURL, fault.arm)
				}
			})
			_, err := f.Runner.RerunRun(context.Background(), job, run)
			pipeline.SetBeforeCommit(f.Runner, nil)
			if down {
				pgtest.Exec(t, dbURL, fmt.Sprintf(`ALTER DATABASE %q ALLOW_CONNECTIONS true`, catDB))
			} else {
				pgtest.Exec(t, catURL, fault.disarm)
			}
			if err == nil || !strings.Contains(err.Error(), "the published export is kept") {
				t.Errorf("rerun: %v, want a table error saying the published export is kept", err)
			}
			if d := diffFiles(before, f.AllFiles()); len(d) > 0 {
				t.Errorf("the bucket changed:\n%s", strings.Join(d, "\n"))
			}
			tb := pipelinetest.ReadTable(t, catURL, "snap", "new_sellers", nil)
			if tb.Location != tbBefore.Location || !maps.Equal(tb.Live, tbBefore.Live) {
				t.Errorf("the table changed: %s %v, was %s %v", tb.Location, tb.Live, tbBefore.Location, tbBefore.Live)
			}
		})
	}

	// Without the fault the rerun replaces the export, once.
	if _, err := f.Runner.RerunRun(context.Background(), job, run); err != nil {
		t.Fatal(err)
	}
	after := f.AllFiles()
	tb := pipelinetest.ReadTable(t, catURL, "snap", "new_sellers", nil)
	pipelinetest.CheckTableHolds(t, tb, pipelinetest.ManifestsIn(t, after))
	for k := range after {
		if strings.Contains(k, "/staging/") || strings.Contains(k, "/intents/") {
			t.Errorf("left after a rerun: %s", k)
		}
	}
}
