package pipeline_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/internal/pipelinetest"
	"github.com/sellersnap/sellersnap/pipeline"
)

// rewriteHead points the catalog at a copy of the table's current
// metadata as change leaves it: another writer's commit.
func rewriteHead(t *testing.T, dbURL string, change func(md map[string]any)) {
	t.Helper()
	ctx := context.Background()
	conn := pgtest.Connect(t, dbURL)
	var loc string
	if err := conn.QueryRow(ctx, `SELECT metadata_location FROM iceberg_tables WHERE table_name = 'new_sellers'`).Scan(&loc); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(strings.TrimPrefix(loc, "file://"))
	if err != nil {
		t.Fatal(err)
	}
	var md map[string]any
	if err := json.Unmarshal(b, &md); err != nil {
		t.Fatal(err)
	}
	change(md)
	b, _ = json.Marshal(md)
	next := filepath.Join(filepath.Dir(strings.TrimPrefix(loc, "file://")), "00900-another-writer.metadata.json")
	if err := os.WriteFile(next, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2`, "file://"+next, loc); err != nil {
		t.Fatal(err)
	}
}

// metadataFiles are the table's metadata files, by name, with their bytes.
func metadataFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	es, _ := os.ReadDir(filepath.Join(dir, "iceberg/snap/new_sellers/metadata"))
	for _, e := range es {
		b, _ := os.ReadFile(filepath.Join(dir, "iceberg/snap/new_sellers/metadata", e.Name()))
		out[e.Name()] = string(b)
	}
	return out
}

// TestTableIsNeverSilentlyRecreated: a table dropped from the catalog
// (its files kept, or purged), replaced by another table, or emptied
// fails the next export with a TableError naming the cause and the
// repair; nothing is created or committed; repair-table rebuilds it from
// the manifests (every unit once, with its data file or one rebuilt from
// the export's Parquet file), and the job goes on.
func TestTableIsNeverSilentlyRecreated(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dbURL, dir string)
		want   string
		reused bool // repair-table can commit the earlier data files
	}{
		{"dropped", func(t *testing.T, dbURL, dir string) {
			pgtest.Connect(t, dbURL).Exec(context.Background(), `DELETE FROM iceberg_tables`)
		}, "is not in the catalog", true},
		{"dropped and purged", func(t *testing.T, dbURL, dir string) {
			pgtest.Connect(t, dbURL).Exec(context.Background(), `DELETE FROM iceberg_tables`)
			os.RemoveAll(filepath.Join(dir, "iceberg"))
		}, "is not in the catalog", false},
		{"replaced", func(t *testing.T, dbURL, dir string) {
			rewriteHead(t, dbURL, func(md map[string]any) {
				md["table-uuid"] = "0b0b0b0b-1111-4222-8333-444444444444"
				md["current-snapshot-id"], md["snapshots"], md["snapshot-log"], md["refs"] = -1, []any{}, []any{}, map[string]any{}
			})
		}, "was replaced", true},
		{"emptied", func(t *testing.T, dbURL, dir string) {
			rewriteHead(t, dbURL, func(md map[string]any) {
				md["current-snapshot-id"], md["refs"] = -1, map[string]any{}
			})
		}, "was emptied", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dbURL := pgtest.NewDatabase(t)
			dir := t.TempDir()
			f := &fixture{pipelinetest.NewOn(t, dbURL, "file://"+dir, dir, icebergYAML(dbURL))}
			res, files := f.Once("new-sellers")
			exported := pipelinetest.ManifestsIn(t, files)
			if len(res.Exported) < 3 {
				t.Fatalf("%d exported", len(res.Exported))
			}
			tc.damage(t, dbURL, dir)
			before, catalogBefore := metadataFiles(t, dir), pipelinetest.ReadTable(t, dbURL, "snap", "new_sellers", nil).Location

			run := pipelinetest.InsertRun(t, dbURL, f.AnyOrg(), 7, false)
			_, err := f.Runner.Once(ctx, f.Job("new-sellers"))
			var te *pipeline.TableError
			if !errors.As(err, &te) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "sellersnap repair-table") {
				t.Fatalf("once after the table was %s: %v; want a TableError saying it %s and naming repair-table", tc.name, err, tc.want)
			}
			if got := pipelinetest.ReadTable(t, dbURL, "snap", "new_sellers", nil).Location; got != catalogBefore {
				t.Errorf("the catalog now names %q, it named %q: something was committed", got, catalogBefore)
			}
			for _, m := range pipelinetest.ManifestsIn(t, f.Files()) {
				if m.RunID == run {
					t.Errorf("run %s published though its table commit could not be made", run)
				}
			}

			rep, err := f.Runner.RepairTable(ctx, f.Job("new-sellers"), false)
			if err != nil || len(rep.Failed) > 0 {
				t.Fatalf("repair-table: %v, %+v", err, rep)
			}
			nonEmpty := 0
			for _, m := range exported {
				if m.Rows > 0 {
					nonEmpty++
				}
			}
			if done := rep.Reused + rep.Rebuilt; done != nonEmpty || tc.reused != (rep.Rebuilt == 0) || rep.Units != len(exported) {
				t.Errorf("repair %+v: want %d units with rows committed (reused: %v) of %d", rep, nonEmpty, tc.reused, len(exported))
			}
			files = f.Files()
			pipelinetest.CheckTableHolds(t, pipelinetest.ReadTable(t, dbURL, "snap", "new_sellers", nil), pipelinetest.ManifestsIn(t, files))
			for name, b := range before {
				if now, ok := metadataFiles(t, dir)[name]; name != "version-hint.text" && (!ok || now != b) {
					t.Errorf("metadata file %s removed or written over by the repair", name)
				}
			}
			// A repair run again commits nothing.
			if again, err := f.Runner.RepairTable(ctx, f.Job("new-sellers"), false); err != nil || again.Live != nonEmpty || again.Reused+again.Rebuilt != 0 {
				t.Errorf("repair-table again: %v, %+v; want every unit live already", err, again)
			}

			res, files = f.Once("new-sellers")
			if len(res.Exported) != 1 || res.Exported[0].RunID != run {
				t.Fatalf("after the repair: exported %d, want run %s", len(res.Exported), run)
			}
			all := pipelinetest.ManifestsIn(t, files)
			if len(all) != len(exported)+1 {
				t.Errorf("%d manifests, want %d", len(all), len(exported)+1)
			}
			pipelinetest.CheckTableHolds(t, pipelinetest.ReadTable(t, dbURL, "snap", "new_sellers", nil), all)
		})
	}
}

// TestATableCreatedBeforeItsRecordIsAdopted: a job that committed before
// table.json existed (an upgrade) goes on committing to its table; once
// the catalog loses it, the manifests say it existed.
func TestATableCreatedBeforeItsRecordIsAdopted(t *testing.T) {
	ctx := context.Background()
	dbURL := pgtest.NewDatabase(t)
	dir := t.TempDir()
	f := &fixture{pipelinetest.NewOn(t, dbURL, "file://"+dir, dir, icebergYAML(dbURL))}
	f.Once("new-sellers")
	rec := filepath.Join(dir, "sellers/new/_sellersnap/new-sellers/table.json")
	if _, err := os.Stat(rec); err != nil {
		t.Fatalf("no table record after the first commit: %v", err)
	}
	os.Remove(rec)
	pipelinetest.InsertRun(t, dbURL, f.AnyOrg(), 3, false)
	if res, _ := f.Once("new-sellers"); len(res.Exported) != 1 {
		t.Fatalf("exported %d, want the new run", len(res.Exported))
	}
	if _, err := os.Stat(rec); err != nil {
		t.Errorf("the table was not adopted: %v", err)
	}
	os.Remove(rec)
	pgtest.Connect(t, dbURL).Exec(ctx, `DELETE FROM iceberg_tables`)
	pipelinetest.InsertRun(t, dbURL, f.AnyOrg(), 3, false)
	if _, err := f.Runner.Once(ctx, f.Job("new-sellers")); err == nil || !strings.Contains(err.Error(), "is not in the catalog") {
		t.Errorf("once with the table dropped and no record: %v; want it refused", err)
	}
	if loc := pipelinetest.ReadTable(t, dbURL, "snap", "new_sellers", nil).Location; loc != "" {
		t.Errorf("the table was created again: %s", loc)
	}
}
