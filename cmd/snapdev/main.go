// Command snapdev is the developers' helper behind make demo: it starts a
// throwaway PostgreSQL, fills it with demo data, runs the sellersnap binary
// against it and shows what landed in the bucket.
//
//	snapdev demo -bin bin/sellersnap [-config pipeline.yaml] [-out ./snapshots] [-sellers N -runs M -orgs K]
//	snapdev pg   [-sellers N …]   # start a loaded server, print DATABASE_URL, wait for Ctrl-C
//	snapdev load -dsn URL [-sellers N …]   # load the demo tables and data into a database of yours
//	snapdev bench -bin bin/sellersnap [-sellers 1000000] [-reps 5]   # sellersnap vs psql \copy (FORMAT binary)
//	snapdev bench -hold [-sellers N]   # only the loaded bench cluster and its config, for profiling
//	snapdev scale [-history 1000,10000,100000] [-orgs 1000]   # discovery and full snapshots as the history grows
package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"

	"github.com/sellersnap/sellersnap/internal/demodata"
	"github.com/sellersnap/sellersnap/internal/pgtemp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapdev:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: snapdev demo|pg|load|bench|scale|iceberg [flags]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	bin := fs.String("bin", "bin/sellersnap", "sellersnap binary")
	cfg := fs.String("config", "pipeline.yaml", "pipeline config")
	out := fs.String("out", "./snapshots", "directory of the file:// bucket")
	var opts demodata.Options
	fs.IntVar(&opts.Sellers, "sellers", 5000, "demo sellers")
	fs.IntVar(&opts.Runs, "runs", 12, "demo collection runs")
	fs.IntVar(&opts.Orgs, "orgs", 3, "demo orgs")
	reps := fs.Int("reps", 5, "bench: repetitions of each case")
	cache := fs.String("cache", ".cache", "bench: where the loaded cluster is kept between runs")
	history := fs.String("history", "1000,10000,100000", "scale: history sizes (completed runs), comma-separated")
	dsn := fs.String("dsn", "", "load: the database to load the demo data into (default $DATABASE_URL)")
	commits := fs.Int("commits", 10000, "iceberg: commits to make")
	hold := fs.Bool("hold", false, "bench: only start the loaded cluster, write the bench config, print both and wait for Ctrl-C (for profiling)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if args[0] == "iceberg" {
		return icebergScale(ctx, *commits)
	}
	if args[0] == "bench" {
		return bench(ctx, *bin, *cfg, opts.Sellers, *reps, *cache, *hold)
	}
	if args[0] == "scale" {
		var sizes []int
		for _, s := range strings.Split(*history, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n <= 0 {
				return fmt.Errorf("-history %q: want sizes such as 1000,10000", *history)
			}
			sizes = append(sizes, n)
		}
		orgs := opts.Orgs
		if !isFlagSet(fs, "orgs") {
			orgs = 1000
		}
		return scale(ctx, sizes, orgs)
	}
	if args[0] == "load" {
		return load(ctx, cmp.Or(*dsn, os.Getenv("DATABASE_URL")), opts)
	}
	fmt.Println("starting a throwaway PostgreSQL from the system's binaries (initdb and start: ~5 s)…")
	srv, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		return err
	}
	defer srv.Stop()
	dbURL := srv.URL("postgres")
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	fmt.Printf("loading %d demo sellers in %d runs of %d orgs…\n", opts.Sellers, opts.Runs, opts.Orgs)
	err = demodata.Load(ctx, conn, opts)
	conn.Close(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("throwaway PostgreSQL on 127.0.0.1:%d loaded with %d sellers, %d runs, %d orgs\n", srv.Port(), opts.Sellers, opts.Runs, opts.Orgs)

	switch args[0] {
	case "pg":
		fmt.Printf("DATABASE_URL=%s\nCtrl-C stops it.\n", dbURL)
		<-ctx.Done()
		return nil
	case "demo":
		return demo(ctx, *bin, *cfg, *out, dbURL)
	default:
		return fmt.Errorf("unknown command %q", args[0])
	}
}

// load creates the collector's two tables in the database at dsn and
// fills them with the demo data (the same as make demo's), for trying
// sellersnap against a PostgreSQL of one's own. It refuses a database that
// already has them.
func load(ctx context.Context, dsn string, opts demodata.Options) error {
	if dsn == "" {
		return errors.New("load: give the database with -dsn postgres://… (or DATABASE_URL)")
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('collection_runs') IS NOT NULL OR to_regclass('sellers') IS NOT NULL`).Scan(&exists); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	if exists {
		return errors.New("load: this database already has a collection_runs or sellers table; load into an empty database (CREATE DATABASE sellersnap_demo)")
	}
	if err := demodata.Load(ctx, conn, opts); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	fmt.Printf("loaded %d demo sellers in %d runs of %d orgs; now: DATABASE_URL=… SELLERSNAP_BUCKET=file://$PWD/snapshots ./bin/sellersnap once -config pipeline.yaml\n", opts.Sellers, opts.Runs, opts.Orgs)
	return nil
}

func demo(ctx context.Context, bin, cfg, out, dbURL string) error {
	abs, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	fmt.Println("The demo data is deliberately hostile: quotes, CR/LF, formula prefixes (=, +, -, @),")
	fmt.Println("HTML, emoji, right-to-left text, 100 KB values, extreme numbers and dates, NULL in every")
	fmt.Println("nullable column. The files below must still open in DuckDB, pandas, Spark and Excel.")
	env := append(os.Environ(), "DATABASE_URL="+dbURL, "SELLERSNAP_BUCKET=file://"+abs)
	for _, args := range [][]string{{"validate", "-config", cfg}, {"once", "-config", cfg}} {
		fmt.Printf("\n$ sellersnap %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env, cmd.Stdout, cmd.Stderr = env, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("sellersnap %s: %w", args[0], err)
		}
	}
	fmt.Printf("\nfiles in %s:\n", abs)
	var firstCSV string
	err = filepath.WalkDir(abs, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, _ := d.Info()
		rel, _ := filepath.Rel(abs, p)
		fmt.Printf("  %9d  %s\n", info.Size(), rel)
		if firstCSV == "" && strings.HasSuffix(p, ".csv") && strings.Contains(rel, "/new/") && info.Size() > 200 {
			firstCSV = p
		}
		return nil
	})
	if err != nil || firstCSV == "" {
		return err
	}
	fmt.Printf("\nfirst lines of %s:\n", firstCSV)
	f, err := os.Open(firstCSV)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for i := 0; i < 6 && sc.Scan(); i++ {
		line := sc.Text()
		if len(line) > 160 {
			line = line[:160] + "…"
		}
		fmt.Println("  " + line)
	}
	return nil
}

func isFlagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
