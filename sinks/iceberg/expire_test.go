package iceberg

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestExpiryRemovesOnlyWhatNoKeptSnapshotReads commits for ten hours of
// a clock, replacing partitions as it goes, with a one-hour retention:
// every file a kept snapshot reads still exists, and no data file is
// left that none reads.
func TestExpiryRemovesOnlyWhatNoKeptSnapshotReads(t *testing.T) {
	f := newFixture(t)
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	tb := f.table(t, func(o *Options) {
		o.Now = func() time.Time { return now }
		o.Retention = Retention{MaxAge: time.Hour, Keep: 3, Batch: 2}
		o.MergeMin = 3
		o.Properties = map[string]string{"write.metadata.previous-versions-max": "5"}
	})
	expired := 0
	for i := 0; i < 40; i++ {
		now = now.Add(15 * time.Minute)
		c := write(t, tb, layout, []Value{"org", day("2026-12-01"), fmt.Sprintf("run-%d", i%7)}, 2, nil)
		expired += c.Expired
	}
	ctx := context.Background()
	md, _, err := tb.head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if expired == 0 || len(md.Snapshots) > 3+4+1 {
		t.Fatalf("%d snapshots kept, %d expired", len(md.Snapshots), expired)
	}
	// Every file any kept snapshot reads exists.
	referenced := map[string]bool{}
	exists := func(loc string) {
		referenced[loc] = true
		if _, err := os.Stat(strings.TrimPrefix(loc, "file://")); err != nil {
			t.Errorf("a kept snapshot reads %s: %v", loc, err)
		}
	}
	for _, s := range md.Snapshots {
		exists(s.ManifestList)
		list, err := tb.manifestList(ctx, s.ManifestList)
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range list {
			exists(mf.Path)
			entries, err := tb.manifest(ctx, mf)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				if e.Status != statusDeleted {
					exists(e.DataFile.FilePath)
				}
			}
		}
	}
	for _, e := range md.MetadataLog {
		exists(e.MetadataFile)
	}
	// No data file, manifest or list is left that no kept snapshot reads.
	root := filepath.Join(f.dir, "iceberg/ns/sellers")
	var left []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(p, ".metadata.json") || strings.HasSuffix(p, "version-hint.text") {
			return err
		}
		if !referenced["file://"+p] {
			left = append(left, strings.TrimPrefix(p, root))
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("%d files no kept snapshot reads: %v", len(left), left)
	}
	metas, _ := filepath.Glob(filepath.Join(root, "metadata", "*.metadata.json"))
	if len(metas) > 2*(5+1) {
		t.Errorf("%d metadata files after trimming the log to 5", len(metas))
	}
}
