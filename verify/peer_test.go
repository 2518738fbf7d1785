package verify

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
	"github.com/jackc/pgx/v5"

	"github.com/sellersnap/sellersnap/internal/demodata"
	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/sinks"
)

// BenchmarkParquetPeer writes the same rows to zstd Parquet with
// sellersnap's encoder and with DuckDB (threads=1), from memory: the
// Parquet writing alone, without PostgreSQL or the network, as a reference
// for what a mature writer costs per row (make bench-peer;
// docs/benchmarks.md). The rows are one run of PEER_ROWS demo sellers
// (default 200,000) with the shipped config's nine columns, exported by
// sellersnap and read back. Reported: ns of CPU per row (the process's
// user+system time, so GC and zstd count), and the file's bytes.
func BenchmarkParquetPeer(b *testing.B) {
	n := 200000
	if v := os.Getenv("PEER_ROWS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	parquetFile := peerData(b, n)
	records, schema, rows := readRecords(b, parquetFile)

	// The default level (zstd 3, as DuckDB's) and compression_level: 1.
	for _, level := range []int{0, 1} {
		name := "sellersnap"
		if level != 0 {
			name += fmt.Sprintf("-zstd%d", level)
		}
		b.Run(name, func(b *testing.B) {
			var size int64
			cpu := cpuTime()
			for b.Loop() {
				w := &countingWriter{}
				enc, err := sinks.NewParquet(w, schema, sinks.ParquetOptions{CompressionLevel: level})
				if err != nil {
					b.Fatal(err)
				}
				for _, rec := range records {
					if err := enc.Write(rec); err != nil {
						b.Fatal(err)
					}
				}
				if err := enc.Close(); err != nil {
					b.Fatal(err)
				}
				size = w.n
			}
			report(b, cpuTime()-cpu, rows, size)
		})
	}

	b.Run("duckdb", func(b *testing.B) {
		db, err := sql.Open("duckdb", "")
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		db.SetMaxOpenConns(1)
		for _, q := range []string{`SET threads = 1`, `SET preserve_insertion_order = true`,
			fmt.Sprintf(`CREATE TABLE t AS SELECT * FROM read_parquet('%s')`, parquetFile)} {
			if _, err := db.Exec(q); err != nil {
				b.Fatal(err)
			}
		}
		out := filepath.Join(b.TempDir(), "duck.parquet")
		var size int64
		cpu := cpuTime()
		for b.Loop() {
			if _, err := db.Exec(fmt.Sprintf(`COPY t TO '%s' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 3, ROW_GROUP_SIZE 65536)`, out)); err != nil {
				b.Fatal(err)
			}
			fi, err := os.Stat(out)
			if err != nil {
				b.Fatal(err)
			}
			size = fi.Size()
		}
		report(b, cpuTime()-cpu, rows, size)
	})
}

func report(b *testing.B, cpu time.Duration, rows, size int64) {
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/float64(rows), "cpu-ns/row")
	b.ReportMetric(float64(size), "bytes")
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// peerData exports one run of n demo sellers with the shipped columns
// (pipeline.yaml) to Parquet and returns the file.
func peerData(b *testing.B, n int) string {
	b.Helper()
	ctx := context.Background()
	dbURL := pgtest.NewEmptyDatabase(b)
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		b.Fatal(err)
	}
	err = demodata.Load(ctx, conn, demodata.Options{Sellers: n, Runs: 1, Orgs: 1, Seed: 7})
	conn.Close(ctx)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	bin := filepath.Join(dir, "sellersnap")
	if out, err := exec.Command("go", "build", "-C", "..", "-o", bin, "./cmd/sellersnap").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "once", "-config", "../pipeline.yaml", "-job", "new-sellers", "-log-level", "warn")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+dbURL, "SELLERSNAP_BUCKET=file://"+dir+"/out")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("export: %v\n%s", err, out)
	}
	var found string
	_ = filepath.WalkDir(dir+"/out", func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".parquet") {
			found = p
		}
		return err
	})
	if found == "" {
		b.Fatal("no Parquet file exported")
	}
	return found
}

// readRecords reads a Parquet file into Arrow records of at most 8,192
// rows (sellersnap's batch size).
func readRecords(b *testing.B, path string) ([]arrow.Record, *arrow.Schema, int64) {
	b.Helper()
	f, err := file.OpenParquetFile(path, false)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fr, err := pqarrow.NewFileReader(f, pqarrow.ArrowReadProperties{BatchSize: 8192}, memory.DefaultAllocator)
	if err != nil {
		b.Fatal(err)
	}
	rr, err := fr.GetRecordReader(context.Background(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer rr.Release()
	var recs []arrow.Record
	var rows int64
	for rr.Next() {
		rec := rr.Record()
		rec.Retain()
		recs = append(recs, rec)
		rows += rec.NumRows()
	}
	if err := rr.Err(); err != nil && err != io.EOF {
		b.Fatal(err)
	}
	return recs, rr.Schema(), rows
}
