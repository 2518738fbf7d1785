package pipelinetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sinks/iceberg"
)

// Table is an Iceberg table as the checks read it: what the catalog
// points at, and the data files its current snapshot reads.
type Table struct {
	Location string            // the catalog's metadata_location; "" without a table
	Metadata *iceberg.Metadata // nil without a table
	Live     map[string]int64  // data file → record count
}

// ReadTable reads the table namespace.name of the SQL catalog in dbURL,
// reading its files with read (nil: file:// locations from disk). A table
// the catalog does not have reads as empty; one that cannot be read (a
// file it names missing, a data file live twice) fails the test.
func ReadTable(t testing.TB, dbURL, namespace, name string, read func(loc string) ([]byte, error)) *Table {
	t.Helper()
	if read == nil {
		read = func(loc string) ([]byte, error) { return os.ReadFile(strings.TrimPrefix(loc, "file://")) }
	}
	tb := &Table{Live: map[string]int64{}}
	err := pgtest.Connect(t, dbURL).QueryRow(context.Background(), `SELECT metadata_location FROM iceberg_tables
		WHERE table_namespace = $1 AND table_name = $2`, namespace, name).Scan(&tb.Location)
	if errors.Is(err, pgx.ErrNoRows) {
		return tb
	}
	if err != nil {
		t.Fatal(err)
	}
	b, err := read(tb.Location)
	if err != nil {
		t.Fatalf("the catalog names metadata that cannot be read: %v", err)
	}
	if tb.Metadata, err = iceberg.ParseMetadata(b); err != nil {
		t.Fatal(err)
	}
	c, err := iceberg.ReadContents(tb.Metadata, read)
	if err != nil {
		t.Fatalf("the table cannot be read: %v", err)
	}
	tb.Live = c.Live
	return tb
}

// ManifestsIn are the manifests among files (by key).
func ManifestsIn(t testing.TB, files map[string][]byte) []*pipeline.Manifest {
	t.Helper()
	var out []*pipeline.Manifest
	for k, b := range files {
		if !strings.HasSuffix(k, "/"+pipeline.ManifestName) {
			continue
		}
		var m pipeline.Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		out = append(out, &m)
	}
	return out
}

// CheckTableHolds checks that the table holds the exports of ms and
// nothing else: each manifest names its table commit, the data file of an
// export with rows is live with the manifest's rows, no other file is
// live, and the current snapshot's total-records is their sum.
func CheckTableHolds(t testing.TB, tb *Table, ms []*pipeline.Manifest) {
	t.Helper()
	want, rows := 0, int64(0)
	for _, m := range ms {
		what := fmt.Sprintf("run %s (org %s, date %s)", m.RunID, m.OrgID, m.Date)
		switch {
		case m.Table == nil:
			t.Errorf("%s: the manifest names no table commit", what)
		case m.Rows == 0:
			if m.Table.DataFile != "" {
				t.Errorf("%s: an empty export added %s", what, m.Table.DataFile)
			}
		case tb.Live[m.Table.DataFile] != m.Rows:
			t.Errorf("%s: the manifest names %s with %d rows; the table has %d rows live in it", what, m.Table.DataFile, m.Rows, tb.Live[m.Table.DataFile])
		}
		if m.Rows > 0 {
			want++
			rows += m.Rows
		}
	}
	if len(tb.Live) != want {
		t.Errorf("%d data files live in the table, %d exports with rows", len(tb.Live), want)
	}
	if tb.Metadata != nil && tb.Metadata.Current() != nil {
		if got := tb.Metadata.Current().Summary["total-records"]; got != fmt.Sprint(rows) {
			t.Errorf("the table has %s records, the manifests %d", got, rows)
		}
	}
}
