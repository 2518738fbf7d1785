package main

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/google/uuid"

	"github.com/sellersnap/sellersnap/internal/pgtemp"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sinks/iceberg"
)

// icebergScale makes n commits to one table (a run a minute of a clock
// that starts on 2026-01-01, 10 orgs, 10 rows each, every 50th a rerun of
// an earlier run: an overwrite) through a PostgreSQL SQL catalog into a
// file:// bucket, with the default retention (24h, 10 kept), and reports
// at checkpoints: commit time (median, p90, max), bucket requests per
// commit, the metadata file's and the manifest list's sizes, the
// manifests listed, the snapshots kept, and a cold commit (a new process's
// first: nothing cached) at the end.
func icebergScale(ctx context.Context, n int) error {
	fmt.Println("starting a throwaway PostgreSQL from the system's binaries (initdb and start: ~5 s)…")
	srv, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		return err
	}
	defer srv.Stop()
	dir, err := os.MkdirTemp("", "sellersnap-iceberg-scale-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bucket, err := sinks.OpenBucket(ctx, "file://"+dir)
	if err != nil {
		return err
	}
	defer bucket.Close()
	cat, err := iceberg.OpenCatalog(ctx, srv.URL("postgres"), "sellersnap")
	if err != nil {
		return err
	}
	defer cat.Close()
	if err := cat.Ensure(ctx, "sellersnap"); err != nil {
		return err
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	open := func() (*iceberg.Table, error) {
		return iceberg.Open(iceberg.Options{Catalog: cat, Ident: iceberg.Ident{Namespace: "sellersnap", Table: "new_sellers"},
			Bucket: bucket, KeyPrefix: "iceberg/sellersnap/new_sellers", Location: "file://" + dir + "/iceberg/sellersnap/new_sellers",
			Now: func() time.Time { return now }, Retention: iceberg.Retention{MaxAge: 24 * time.Hour, Keep: 10}})
	}
	tb, err := open()
	if err != nil {
		return err
	}
	rig := newScaleRig(bucket, &now)
	var units [][]iceberg.Value
	commit := func(tb *iceberg.Table, values []iceberg.Value) (time.Duration, int64, *iceberg.Commit, error) {
		return rig.commit(ctx, tb, values)
	}
	orgs := make([]string, 10)
	for i := range orgs {
		orgs[i] = uuid.NewString()
	}
	checkpoints := map[int]bool{100: true, 1000: true, 2000: true, 5000: true, n: true}
	fmt.Printf("\n%d commits, a run a minute (clock from 2026-01-01), every 50th an overwrite; retention 24h, 10 kept; file:// bucket, catalog in a local PostgreSQL\n\n", n)
	fmt.Println("| commits | commit ms median (p90, max) over the last 100 | bucket requests per commit, median (max) | metadata.json | manifest list (entries) | snapshots kept | files in metadata/ | data files |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	var walls []time.Duration
	var reqs []int64
	var last *iceberg.Commit
	for i := 1; i <= n; i++ {
		now = now.Add(time.Minute)
		u := []iceberg.Value{orgs[i%len(orgs)], now.Truncate(24 * time.Hour), uuid.NewString()}
		if i%50 == 0 && len(units) > 10 {
			u = units[len(units)-10] // a rerun of a run ten minutes old
		} else {
			units = append(units, u)
		}
		w, r, c, err := commit(tb, u)
		if err != nil {
			return fmt.Errorf("commit %d: %w", i, err)
		}
		walls, reqs, last = append(walls, w), append(reqs, r), c
		if len(walls) > 100 {
			walls, reqs = walls[1:], reqs[1:]
		}
		if checkpoints[i] {
			if err := report(dir, i, walls, reqs, last); err != nil {
				return err
			}
		}
	}
	// A cold commit: a new process (nothing cached) at the end.
	cold, err := open()
	if err != nil {
		return err
	}
	now = now.Add(time.Minute)
	w, r, _, err := commit(cold, []iceberg.Value{orgs[0], now.Truncate(24 * time.Hour), uuid.NewString()})
	if err != nil {
		return err
	}
	fmt.Printf("\ncold commit after %d (a new process, nothing cached): %.1f ms, %d bucket requests\n", n, float64(w.Microseconds())/1000, r)
	return nil
}

func report(dir string, i int, walls []time.Duration, reqs []int64, c *iceberg.Commit) error {
	ws := slices.Clone(walls)
	slices.Sort(ws)
	rs := slices.Clone(reqs)
	slices.Sort(rs)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b, err := os.ReadFile(strings.TrimPrefix(c.Metadata, "file://"))
	if err != nil {
		return err
	}
	m, err := iceberg.ParseMetadata(b)
	if err != nil {
		return err
	}
	list, err := os.Stat(strings.TrimPrefix(m.Current().ManifestList, "file://"))
	if err != nil {
		return err
	}
	contents, err := iceberg.ReadContents(m, func(l string) ([]byte, error) { return os.ReadFile(strings.TrimPrefix(l, "file://")) })
	if err != nil {
		return err
	}
	var metaFiles, dataFiles int
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if strings.Contains(p, "/metadata/") {
				metaFiles++
			} else if strings.Contains(p, "/data/") {
				dataFiles++
			}
		}
		return err
	})
	fmt.Printf("| %d | %.1f (%.1f, %.1f) | %d (%d) | %d KiB | %.1f KiB (%d) | %d | %d | %d (%d live) |\n",
		i, ms(ws[len(ws)/2]), ms(ws[len(ws)*9/10]), ms(ws[len(ws)-1]), rs[len(rs)/2], rs[len(rs)-1],
		len(b)>>10, float64(list.Size())/1024, contents.Manifests, len(m.Snapshots), metaFiles, dataFiles, len(contents.Live))
	return nil
}

// scaleRig writes the scale test's data files: ten rows of three columns
// per commit, timestamped by the test's clock.
type scaleRig struct {
	bucket *sinks.Bucket
	now    *time.Time
	layout iceberg.Layout
	schema *arrow.Schema
}

func newScaleRig(bucket *sinks.Bucket, now *time.Time) *scaleRig {
	ts := &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}
	return &scaleRig{bucket: bucket, now: now,
		layout: iceberg.Layout{
			Columns:   []iceberg.Column{{Name: "display_name", Type: arrow.BinaryTypes.String}, {Name: "times_seen", Type: arrow.PrimitiveTypes.Int32}, {Name: "created_at", Type: ts}},
			Partition: []iceberg.Column{{Name: "org", Type: arrow.BinaryTypes.String}, {Name: "date", Type: arrow.FixedWidthTypes.Date32}, {Name: "run", Type: arrow.BinaryTypes.String}},
		},
		schema: arrow.NewSchema([]arrow.Field{{Name: "display_name", Type: arrow.BinaryTypes.String, Nullable: true},
			{Name: "times_seen", Type: arrow.PrimitiveTypes.Int32, Nullable: true},
			{Name: "created_at", Type: ts, Nullable: true}}, nil),
	}
}

// commit writes a data file of the partition values, then prepares and
// commits it: the time and requests reported are the prepare (a catalog
// read, the head's metadata) and the commit, not the data file.
func (s *scaleRig) commit(ctx context.Context, tb *iceberg.Table, values []iceberg.Value) (time.Duration, int64, *iceberg.Commit, error) {
	var buf bytes.Buffer
	mem := memory.NewGoAllocator()
	nb, tbd, cb := array.NewStringBuilder(mem), array.NewInt32Builder(mem), array.NewTimestampBuilder(mem, s.schema.Field(2).Type.(*arrow.TimestampType))
	for i := 0; i < 10; i++ {
		nb.Append(fmt.Sprintf("seller %d", i))
		tbd.Append(int32(i))
		cb.Append(arrow.Timestamp(s.now.UnixMicro()))
	}
	rec := array.NewRecord(s.schema, []arrow.Array{nb.NewArray(), tbd.NewArray(), cb.NewArray()}, 10)
	defer rec.Release()
	before := s.bucket.Requests()
	start := time.Now()
	p, err := tb.Prepare(ctx, s.layout)
	if err != nil {
		return 0, 0, nil, err
	}
	prepared := time.Since(start)
	enc, err := p.NewEncoder(&buf, values, sinks.ParquetOptions{})
	if err != nil {
		return 0, 0, nil, err
	}
	if err := enc.Write(rec); err != nil {
		return 0, 0, nil, err
	}
	if err := enc.Close(); err != nil {
		return 0, 0, nil, err
	}
	key := p.DataKey(values)
	if err := s.bucket.Put(ctx, key, buf.Bytes(), "application/vnd.apache.parquet", nil); err != nil {
		return 0, 0, nil, err
	}
	start = time.Now()
	c, err := p.Commit(ctx, iceberg.DataFile{Key: key, Bytes: int64(buf.Len()), Rows: 10, Values: values}, nil)
	return prepared + time.Since(start), s.bucket.Requests() - before - 1, c, err
}
