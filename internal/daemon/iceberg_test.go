package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sellersnap/sellersnap/internal/pipelinetest"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sinks/iceberg"
)

// TestThreeDaemonsCommitEachRunOnce: three replicas share a backlog and
// the runs notified meanwhile; the table ends with every run that has
// rows exactly once, as its manifest says, and the snapshots chain.
func TestThreeDaemonsCommitEachRunOnce(t *testing.T) {
	f := newFixture(t, "")
	f.Load(fmt.Sprintf("    iceberg: {catalog: sql, uri: %q, table: new_sellers}\n", f.DBURL))
	var stops []func()
	for i := 0; i < 3; i++ {
		_, stop := f.daemon("* * * * * *", "sellers", true, 5*time.Second)
		stops = append(stops, stop)
	}
	org := f.AnyOrg()
	for i := 0; i < 15; i++ {
		pipelinetest.InsertRun(t, f.DBURL, org, 7, i%2 == 0)
		time.Sleep(20 * time.Millisecond)
	}
	pipelinetest.WaitFor(t, "25 manifests", 60*time.Second, func() bool { return len(f.Manifests()) == 25 })
	for _, stop := range stops {
		stop()
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var loc string
	if err := conn.QueryRow(ctx, `SELECT metadata_location FROM iceberg_tables WHERE table_name = 'new_sellers'`).Scan(&loc); err != nil {
		t.Fatal(err)
	}
	read := func(l string) ([]byte, error) { return os.ReadFile(strings.TrimPrefix(l, "file://")) }
	b, err := read(loc)
	if err != nil {
		t.Fatal(err)
	}
	md, err := iceberg.ParseMetadata(b)
	if err != nil {
		t.Fatal(err)
	}
	live, err := iceberg.LiveFiles(md, read)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for k, data := range f.Files() {
		if !strings.HasSuffix(k, "/"+pipeline.ManifestName) {
			continue
		}
		var m pipeline.Manifest
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatal(err)
		}
		if m.Rows == 0 {
			continue
		}
		want++
		if m.Table == nil || live[m.Table.DataFile] != m.Rows {
			t.Errorf("run %s: the manifest names %+v; the table has %d rows in that file", m.RunID, m.Table, live[m.Table.DataFile])
		}
	}
	if len(live) != want {
		t.Errorf("%d data files live, %d runs with rows", len(live), want)
	}
	for i, s := range md.Snapshots[1:] {
		if s.ParentID == nil || *s.ParentID != md.Snapshots[i].ID {
			t.Errorf("snapshot %d's parent is not the one before it: a commit was lost", s.ID)
		}
	}
}
