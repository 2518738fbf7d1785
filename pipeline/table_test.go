package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/internal/pipelinetest"
	"github.com/sellersnap/sellersnap/pipeline"
)

// icebergYAML is the new-sellers job's table, its catalog in dbURL.
func icebergYAML(dbURL string) string {
	return fmt.Sprintf(`    iceberg:
      catalog: sql
      uri: %q
      namespace: snap
      table: new_sellers
`, dbURL)
}

// tableFiles lists the data files of the table's current snapshot, with
// their row counts, and the snapshot's summary.
func tableFiles(t *testing.T, dbURL string) (map[string]int64, map[string]string) {
	t.Helper()
	tb := pipelinetest.ReadTable(t, dbURL, "snap", "new_sellers", nil)
	return tb.Live, tb.Metadata.Current().Summary
}

func TestIcebergTableFollowsEveryExport(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	dir := t.TempDir()
	f := &fixture{pipelinetest.NewOn(t, dbURL, "file://"+dir, dir, icebergYAML(dbURL))}
	res, files := f.Once("new-sellers")
	if len(res.Exported) == 0 {
		t.Fatal("nothing exported")
	}
	live, sum := tableFiles(t, dbURL)
	nonEmpty := 0
	for _, m := range res.Exported {
		if m.Rows > 0 {
			nonEmpty++
		}
	}
	if len(live) != nonEmpty {
		t.Fatalf("%d data files in the table, %d units with rows exported", len(live), nonEmpty)
	}
	var rows int64
	var manifests int
	for k, b := range files {
		if filepath.Base(k) != pipeline.ManifestName {
			continue
		}
		manifests++
		var m pipeline.Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		if m.Rows == 0 {
			// An empty run adds no file to the table.
			if m.Table == nil || m.Table.Operation != "none" || m.Table.DataFile != "" {
				t.Errorf("%s: an empty run's table commit %+v", k, m.Table)
			}
			continue
		}
		if m.Table == nil || m.Table.Operation != "append" || live[m.Table.DataFile] != m.Rows {
			t.Errorf("%s: table %+v, the table has %d rows in that file", k, m.Table, live[m.Table.DataFile])
		}
		rows += m.Rows
		// The data file holds the partition columns, as the path has them.
		pf, err := os.ReadFile(strings.TrimPrefix(m.Table.DataFile, "file://"))
		if err != nil {
			t.Fatal(err)
		}
		rd, err := file.NewParquetReader(bytes.NewReader(pf))
		if err != nil {
			t.Fatal(err)
		}
		fr, _ := pqarrow.NewFileReader(rd, pqarrow.ArrowReadProperties{}, memory.DefaultAllocator)
		tbl, err := fr.ReadTable(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if got := tbl.Schema().Field(int(tbl.NumCols()) - 1).Name; got != "run" || tbl.NumRows() != m.Rows {
			t.Errorf("%s: last column %s, %d rows", m.Table.DataFile, got, tbl.NumRows())
		}
		tbl.Release()
		rd.Close()
	}
	if sum["total-records"] != fmt.Sprint(rows) {
		t.Errorf("table has %s records, the manifests %d", sum["total-records"], rows)
	}

	// A rerun replaces the run's partition: the table still holds it once.
	var run string
	for k, b := range files {
		if filepath.Base(k) == pipeline.ManifestName {
			var m pipeline.Manifest
			json.Unmarshal(b, &m)
			if m.Rows > 0 {
				run = m.RunID
				break
			}
		}
	}
	if _, err := f.Runner.RerunRun(context.Background(), f.Job("new-sellers"), run); err != nil {
		t.Fatal(err)
	}
	live2, sum2 := tableFiles(t, dbURL)
	if len(live2) != len(live) || sum2["operation"] != "overwrite" || sum2["total-records"] != fmt.Sprint(rows) || sum2["sellersnap.unit"] != "run:new-sellers:"+run {
		t.Errorf("after a rerun: %d files (was %d), summary %v", len(live2), len(live), sum2)
	}

	// A kill after the table commit, before the manifest (and so before
	// the export state records the run): the next pass exports the run
	// again, and the table still holds it once.
	states, _ := filepath.Glob(filepath.Join(dir, "*", "*", "_sellersnap"))
	for _, s := range states {
		os.RemoveAll(s)
	}
	for k := range files {
		if filepath.Base(k) == pipeline.ManifestName && strings.Contains(k, run) {
			os.Remove(filepath.Join(dir, k))
		}
	}
	res, _ = f.Once("new-sellers")
	live3, sum3 := tableFiles(t, dbURL)
	if len(res.Exported) != 1 || len(live3) != len(live) || sum3["total-records"] != fmt.Sprint(rows) {
		t.Errorf("after re-exporting a run whose manifest was missing: exported %d, %d files (want %d), summary %v", len(res.Exported), len(live3), len(live), sum3)
	}
}

// TestIcebergOverEveryBucket commits a backlog and a rerun through every
// bucket protocol (S3, GCS and Azure emulators on loopback, file, mem):
// the catalog names metadata in the bucket, whose current snapshot holds
// each run with rows once, in the file its manifest names.
func TestIcebergOverEveryBucket(t *testing.T) {
	for _, d := range bucketDrivers() {
		t.Run(d.name, func(t *testing.T) {
			dest, dir := d.open(t)
			dbURL := pgtest.NewDatabase(t)
			f := &fixture{pipelinetest.NewOn(t, dbURL, dest, dir, icebergYAML(dbURL))}
			f.ReadObject = d.read
			res, _ := f.Once("new-sellers")
			if len(res.Exported) != 10 {
				t.Fatalf("%d exported", len(res.Exported))
			}
			if _, err := f.Runner.RerunRun(context.Background(), f.Job("new-sellers"), res.Exported[0].RunID); err != nil {
				t.Fatal(err)
			}
			files := f.Files()
			read := func(l string) ([]byte, error) {
				i := strings.Index(l, "iceberg/snap/new_sellers/")
				if i < 0 {
					return nil, fmt.Errorf("%s is not in the table", l)
				}
				b, ok := files[l[i:]]
				if !ok {
					return nil, fmt.Errorf("%s: not in the bucket", l)
				}
				return b, nil
			}
			tb := pipelinetest.ReadTable(t, dbURL, "snap", "new_sellers", read)
			wantScheme := map[string]string{"mem": "mem://", "file": "file://", "s3": "s3://snap/", "azure": "abfss://snap", "gcs": "gs://snap/", "s3-external": "s3://"}[d.name]
			if !strings.HasPrefix(tb.Location, wantScheme) {
				t.Errorf("metadata location %s, want it under %s", tb.Location, wantScheme)
			}
			// Every data file the table reads is in the bucket.
			for file := range tb.Live {
				if _, err := read(file); err != nil {
					t.Error(err)
				}
			}
			pipelinetest.CheckTableHolds(t, tb, pipelinetest.ManifestsIn(t, files))
			if op := tb.Metadata.Current().Summary["operation"]; op != "overwrite" {
				t.Errorf("the rerun's commit is an %s, want overwrite", op)
			}
		})
	}
}

// TestObjectsInTheWayFailTheUnitBeforeTheTable puts a folder where a
// pending run's manifest (then its Parquet file) goes. Pass: the pass
// fails the run naming the folder, the table holds nothing of the run,
// the bucket nothing at its keys; once the folder is gone, the run is
// exported and in the table once.
func TestObjectsInTheWayFailTheUnitBeforeTheTable(t *testing.T) {
	for _, blocked := range []string{pipeline.ManifestName, ".parquet"} {
		t.Run(blocked, func(t *testing.T) {
			dbURL := pgtest.NewDatabase(t)
			dir := t.TempDir()
			f := &fixture{pipelinetest.NewOn(t, dbURL, "file://"+dir, dir, icebergYAML(dbURL))}
			job := f.Job("new-sellers")
			plan, err := f.Runner.Plan(context.Background(), job)
			if err != nil || len(plan) == 0 {
				t.Fatalf("plan: %v, %v", plan, err)
			}
			var unit pipeline.Planned
			for _, p := range plan {
				if p.Rows > 0 {
					unit = p
				}
			}
			var key string
			for _, k := range unit.Keys {
				if strings.HasSuffix(k, blocked) {
					key = k
				}
			}
			folder := filepath.Join(dir, filepath.FromSlash(key))
			if err := os.MkdirAll(filepath.Join(folder, "x"), 0o755); err != nil {
				t.Fatal(err)
			}
			_, err = f.Runner.Once(context.Background(), job)
			if err == nil || !strings.Contains(err.Error(), "a folder is in the way at "+key) || !strings.Contains(err.Error(), unit.RunID) {
				t.Errorf("once: %v, want the run failed naming the folder at %s", err, key)
			}
			tb := pipelinetest.ReadTable(t, dbURL, "snap", "new_sellers", nil)
			for loc := range tb.Live {
				if strings.Contains(loc, "run="+unit.RunID) {
					t.Errorf("the table holds %s of the failed run", loc)
				}
			}
			for k := range f.Files() {
				if strings.Contains(k, unit.RunID) && !strings.HasPrefix(k, key+"/") {
					t.Errorf("left at a key of the failed run: %s", k)
				}
			}
			if err := os.RemoveAll(folder); err != nil {
				t.Fatal(err)
			}
			res, files := f.Once("new-sellers")
			if len(res.Exported) != 1 || res.Exported[0].RunID != unit.RunID {
				t.Fatalf("after the folder went: %+v", res)
			}
			pipelinetest.CheckTableHolds(t, pipelinetest.ReadTable(t, dbURL, "snap", "new_sellers", nil), pipelinetest.ManifestsIn(t, files))
		})
	}
}
