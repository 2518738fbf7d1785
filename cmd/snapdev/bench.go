package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/internal/demodata"
	"github.com/sellersnap/sellersnap/internal/pgtemp"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sources"
)

// benchCase is one thing measured: sellersnap exporting some rows, and
// psql's binary \copy of the very same query as the baseline.
type benchCase struct {
	name    string
	args    []string // sellersnap arguments after -config
	query   string   // baseline query
	rows    int64
	db, cfg string // "" for the 16-column database and its config
	base    []sample
	snap    []sample
	formats string
	// table: the job commits to an Iceberg table whose catalog is in db;
	// it is dropped before each repetition, as the bucket folder is.
	table bool
}

type sample struct {
	wall   time.Duration
	cpu    time.Duration // user + system of the child process
	maxRSS int64         // KiB
}

// bench loads (once, cached under cacheDir) N sellers of one org over 20
// runs, then alternates baseline and sellersnap runs reps times.
func bench(ctx context.Context, bin, shippedConfig string, n, reps int, cacheDir string, hold bool) error {
	dir := filepath.Join(cacheDir, fmt.Sprintf("bench-pg-%d", n))
	srv, err := pgtemp.Start(ctx, pgtemp.Options{Dir: dir})
	if err != nil {
		return err
	}
	defer srv.Stop()
	in, err := benchData(ctx, srv, n, shippedConfig)
	if err != nil {
		return err
	}
	psql, err := findPsql()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "sellersnap-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	in.cfg = filepath.Join(work, "bench.yaml")
	if err := os.WriteFile(in.cfg, []byte(benchConfig(in.url, filepath.Join(work, "out"))), 0o644); err != nil {
		return err
	}
	in.narrowCfg = filepath.Join(work, "narrow.yaml")
	if err := os.WriteFile(in.narrowCfg, []byte(narrowConfig(in.narrowURL, in.narrowCols, filepath.Join(work, "out"))), 0o644); err != nil {
		return err
	}
	if hold {
		fmt.Printf("DATABASE_URL=%s\nconfig: %s (jobs full-csv, full-ndjson, full-parquet, full-all, run-all; run %s)\nnarrow: %s, config %s (jobs narrow-csv, -ndjson, -parquet, -all; run %s)\nCtrl-C stops it.\n",
			in.url, in.cfg, in.runID, in.narrowURL, in.narrowCfg, in.narrowRun)
		<-ctx.Done()
		return nil
	}
	cases := benchCases(in)
	fmt.Printf("data: %d sellers (%d live in the org, %d in the run closest to 50k), 16 columns; narrow: %d sellers in one run, the %d columns of %s; %d repetitions, baseline and sellersnap alternating\n\n",
		n, in.fullRows, in.runRows, in.narrowRows, len(in.narrowCols), shippedConfig, reps)
	if err := runBench(ctx, psql, bin, in, cases, reps, filepath.Join(work, "out")); err != nil {
		return err
	}
	printBench(cases)
	return nil
}

// benchInputs are the bench's two databases and what it reads of them.
type benchInputs struct {
	url, narrowURL    string // the 16-column data (20 runs) and the narrow one (one run)
	cfg, narrowCfg    string // their configs
	org, runID        string
	fullRows, runRows int64
	narrowCols        []string
	narrowOrg         string
	narrowRun         string
	narrowRows        int64
}

// benchData loads (or reuses) the two data sets and finds the org, the run
// closest to 50,000 sellers and the narrow case's run.
func benchData(ctx context.Context, srv *pgtemp.Server, n int, shippedConfig string) (*benchInputs, error) {
	in := &benchInputs{url: srv.URL("bench"), narrowURL: srv.URL("bench_narrow")}
	if err := ensureBenchData(ctx, srv, "bench", demodata.Options{Sellers: n, Runs: 20, Orgs: 1, Seed: 7}); err != nil {
		return nil, err
	}
	// The narrow case: every seller in one run, read with the shipped
	// config's columns, where PostgreSQL's own work per row is small and
	// sellersnap's shows.
	if err := ensureBenchData(ctx, srv, "bench_narrow", demodata.Options{Sellers: n, Runs: 1, Orgs: 1, Seed: 7}); err != nil {
		return nil, err
	}
	var err error
	if in.narrowCols, err = shippedColumns(shippedConfig); err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, in.url)
	if err != nil {
		return nil, err
	}
	err = conn.QueryRow(ctx, `SELECT org_id::text FROM sellers LIMIT 1`).Scan(&in.org)
	if err == nil {
		err = conn.QueryRow(ctx, `SELECT s.first_seen_run_id::text, count(*) FROM sellers s JOIN collection_runs r ON r.id = s.first_seen_run_id
			WHERE r.status = 'completed' AND s.deleted_at IS NULL GROUP BY 1 ORDER BY abs(count(*) - 50000), 1 LIMIT 1`).Scan(&in.runID, &in.runRows)
	}
	if err == nil {
		err = conn.QueryRow(ctx, `SELECT count(*) FROM sellers WHERE deleted_at IS NULL AND org_id = $1`, in.org).Scan(&in.fullRows)
	}
	conn.Close(ctx)
	if err == nil {
		if conn, err = pgx.Connect(ctx, in.narrowURL); err == nil {
			err = conn.QueryRow(ctx, `SELECT s.org_id::text, s.first_seen_run_id::text, count(*) FROM sellers s WHERE s.deleted_at IS NULL GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 1`).Scan(&in.narrowOrg, &in.narrowRun, &in.narrowRows)
			conn.Close(ctx)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("inspect bench data: %w", err)
	}
	return in, nil
}

// benchCases are the measured exports, each with the query its baseline
// copies.
func benchCases(in *benchInputs) []*benchCase {
	sqlFor := func(q sources.Query) string {
		s, params, _ := q.SQL(sources.DefaultSchema, sources.DefaultSellersTable)
		for i := len(params); i >= 1; i-- {
			s = strings.ReplaceAll(s, fmt.Sprintf("$%d", i), "'"+params[i-1]+"'")
		}
		return s
	}
	cols := demodata.SellerColumns
	fullSQL := sqlFor(sources.Query{Columns: cols, OrgID: in.org})
	runSQL := sqlFor(sources.Query{Columns: cols, OrgID: in.org, RunID: in.runID})
	narrowSQL := sqlFor(sources.Query{Columns: in.narrowCols, OrgID: in.narrowOrg, RunID: in.narrowRun})
	date := time.Now().UTC().Format(time.DateOnly) // the jobs are in UTC; rerun refuses other dates without -allow-past
	cases := []*benchCase{
		{name: "full, csv", formats: "csv", args: []string{"rerun", "-job", "full-csv", "-date", date}, query: fullSQL, rows: in.fullRows},
		{name: "full, ndjson", formats: "ndjson", args: []string{"rerun", "-job", "full-ndjson", "-date", date}, query: fullSQL, rows: in.fullRows},
		{name: "full, parquet", formats: "parquet", args: []string{"rerun", "-job", "full-parquet", "-date", date}, query: fullSQL, rows: in.fullRows},
		{name: "full, all three", formats: "csv+ndjson+parquet", args: []string{"rerun", "-job", "full-all", "-date", date}, query: fullSQL, rows: in.fullRows},
		{name: "one run, all three", formats: "csv+ndjson+parquet", args: []string{"rerun", "-job", "run-all", "-run", in.runID}, query: runSQL, rows: in.runRows},
		{name: "one run, all three + table", formats: "csv+ndjson+parquet+iceberg", args: []string{"rerun", "-job", "run-table", "-run", in.runID}, query: runSQL, rows: in.runRows, table: true},
	}
	for _, f := range []string{"csv", "ndjson", "parquet", "all"} {
		name := "narrow run, " + f
		if f == "all" {
			name = "narrow run, all three"
		}
		cases = append(cases, &benchCase{name: name, formats: f, query: narrowSQL, rows: in.narrowRows, db: in.narrowURL, cfg: in.narrowCfg,
			args: []string{"rerun", "-job", "narrow-" + f, "-run", in.narrowRun}})
	}
	cases = append(cases, &benchCase{name: "narrow run, all three + table", formats: "csv+ndjson+parquet+iceberg", query: narrowSQL, rows: in.narrowRows,
		db: in.narrowURL, cfg: in.narrowCfg, args: []string{"rerun", "-job", "narrow-table", "-run", in.narrowRun}, table: true})
	return cases
}

// runBench measures each case reps times, its baseline and its export
// alternating.
func runBench(ctx context.Context, psql, bin string, in *benchInputs, cases []*benchCase, reps int, out string) error {
	for rep := 0; rep < reps; rep++ {
		for _, c := range cases {
			db := in.url
			if c.db != "" {
				db = c.db
			}
			s, err := measure(ctx, psql, db, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", `\copy (`+c.query+`) TO '/dev/null' WITH (FORMAT binary)`)
			if err != nil {
				return fmt.Errorf("baseline %s: %w", c.name, err)
			}
			c.base = append(c.base, s)
			// Each export writes new files, as in production: replacing the
			// previous repetition's would add the filesystem's unlink of
			// hundreds of megabytes to the time (measured 0.15 s for NDJSON).
			if err := os.RemoveAll(out); err != nil {
				return err
			}
			cfg := in.cfg
			if c.cfg != "" {
				cfg = c.cfg
			}
			if c.table {
				if _, err := measure(ctx, psql, db, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", `DROP TABLE IF EXISTS iceberg_tables, iceberg_namespace_properties`); err != nil {
					return fmt.Errorf("reset the catalog of %s: %w", c.name, err)
				}
			}
			s, err = measure(ctx, bin, append([]string{c.args[0], "-config", cfg, "-log-level", "warn"}, c.args[1:]...)...)
			if err != nil {
				return fmt.Errorf("sellersnap %s: %w", c.name, err)
			}
			c.snap = append(c.snap, s)
		}
		fmt.Fprintf(os.Stderr, "repetition %d/%d done\n", rep+1, reps)
	}
	return nil
}

func printBench(cases []*benchCase) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\trows\t\\copy binary median (min–max)\tsellersnap median (min–max)\tratio\textra\tsellersnap CPU median (min–max)\tCPU µs/row\trows/s\tpeak RSS\t")
	for _, c := range cases {
		b, s := wallStats(c.base), wallStats(c.snap)
		cpu := stats(c.snap, func(x sample) float64 { return x.cpu.Seconds() })
		var rss int64
		for _, x := range c.snap {
			rss = max(rss, x.maxRSS)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.2fs (%.2f–%.2f)\t%.2fs (%.2f–%.2f)\t%.2f×\t%+.2fs\t%.2fs (%.2f–%.2f)\t%.2f\t%.0f\t%.0f MiB\t\n",
			c.name, c.rows, b[1], b[0], b[2], s[1], s[0], s[2], s[1]/b[1], s[1]-b[1], cpu[1], cpu[0], cpu[2], cpu[1]*1e6/float64(c.rows), float64(c.rows)/s[1], float64(rss)/1024)
	}
	tw.Flush()
}

// wallStats returns min, median and max wall time in seconds.
func wallStats(ss []sample) [3]float64 {
	return stats(ss, func(s sample) float64 { return s.wall.Seconds() })
}

// stats returns min, median and max of f over ss.
func stats(ss []sample, f func(sample) float64) [3]float64 {
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	slices.Sort(v)
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return [3]float64{v[0], med, v[len(v)-1]}
}

func measure(ctx context.Context, bin string, args ...string) (sample, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if err != nil {
		return sample{}, fmt.Errorf("%w: %s", err, stderr.String())
	}
	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	var rss int64
	if ru != nil {
		rss = ru.Maxrss
	}
	return sample{wall: wall, cpu: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), maxRSS: rss}, nil
}

func ensureBenchData(ctx context.Context, srv *pgtemp.Server, db string, opts demodata.Options) error {
	n := opts.Sellers
	admin, err := pgx.Connect(ctx, srv.URL("postgres"))
	if err != nil {
		return err
	}
	defer admin.Close(ctx)
	var exists bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, db).Scan(&exists); err != nil {
		return err
	}
	if exists {
		conn, err := pgx.Connect(ctx, srv.URL(db))
		if err == nil {
			var loaded int
			err = conn.QueryRow(ctx, `SELECT n FROM bench_meta`).Scan(&loaded)
			conn.Close(ctx)
			if err == nil && loaded == n {
				fmt.Fprintf(os.Stderr, "reusing %d sellers of %s in %s\n", n, db, srv.Dir())
				return nil
			}
		}
		if _, err := admin.Exec(ctx, `DROP DATABASE `+db+` WITH (FORCE)`); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "loading %d sellers into %s of %s (once; later runs reuse them)\n", n, db, srv.Dir())
	start := time.Now()
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+db); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, srv.URL(db))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if err := demodata.Load(ctx, conn, opts); err != nil {
		return err
	}
	// Freeze and set hint bits now, so no measured scan pays for them.
	for _, q := range []string{`VACUUM (FREEZE, ANALYZE)`, `CHECKPOINT`, `CREATE TABLE bench_meta (n int)`} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return err
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO bench_meta VALUES ($1)`, n); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "loaded in %s\n", time.Since(start).Round(time.Second))
	return nil
}

func findPsql() (string, error) {
	if p, err := exec.LookPath("psql"); err == nil {
		return p, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql")
	if len(matches) > 0 {
		return matches[len(matches)-1], nil
	}
	return "", errors.New("psql not found: install postgresql-client")
}

// shippedColumns are the source columns of the first job of the shipped
// config (pipeline.yaml).
func shippedColumns(path string) ([]string, error) {
	// Only the columns are read: the config's required variables get
	// placeholders when unset.
	for k, v := range map[string]string{"DATABASE_URL": "postgres://unused", "SELLERSNAP_BUCKET": "mem://"} {
		if os.Getenv(k) == "" {
			os.Setenv(k, v)
		}
	}
	cfg, err := config.Load(path, pipeline.CheckConfig)
	if err != nil {
		return nil, err
	}
	job, err := pipeline.NewJob(cfg.Jobs[0])
	if err != nil {
		return nil, err
	}
	return job.SourceColumns(), nil
}

// narrowConfig has a per_run job per format over the narrow database,
// with the shipped config's columns.
func narrowConfig(dbURL string, cols []string, out string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "source:\n  dsn: %q\n  statement_timeout: 0s\njobs:\n", dbURL)
	for _, f := range []string{"csv", "ndjson", "parquet", "all", "table"} {
		formats := "[" + f + "]"
		if f == "all" || f == "table" {
			formats = "[csv, ndjson, parquet]"
		}
		fmt.Fprintf(&b, "  - name: narrow-%s\n    mode: per_run\n    destination: \"file://%s/narrow-%s\"\n    formats: %s\n    columns: [%s]\n",
			f, out, f, formats, strings.Join(cols, ", "))
		if f == "table" {
			fmt.Fprintf(&b, "    iceberg: {catalog: sql, uri: %q, table: narrow}\n", dbURL)
		}
	}
	return b.String()
}

func benchConfig(dbURL, out string) string {
	cols := "[" + strings.Join(demodata.SellerColumns, ", ") + "]"
	var b strings.Builder
	fmt.Fprintf(&b, "source:\n  dsn: %q\n  statement_timeout: 0s\njobs:\n", dbURL)
	for _, j := range []struct{ name, mode, formats string }{
		{"full-csv", "full", "[csv]"}, {"full-ndjson", "full", "[ndjson]"}, {"full-parquet", "full", "[parquet]"},
		{"full-all", "full", "[csv, ndjson, parquet]"}, {"run-all", "per_run", "[csv, ndjson, parquet]"}, {"run-table", "per_run", "[csv, ndjson, parquet]"},
	} {
		// A bucket folder per job: jobs writing the same keys are refused.
		fmt.Fprintf(&b, "  - name: %s\n    mode: %s\n    destination: \"file://%s/%s\"\n    formats: %s\n    columns: %s\n",
			j.name, j.mode, out, j.name, j.formats, cols)
		if j.name == "run-table" {
			fmt.Fprintf(&b, "    iceberg: {catalog: sql, uri: %q, table: run_table}\n", dbURL)
		}
	}
	return b.String()
}
