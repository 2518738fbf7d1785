// Package pgtest gives each test its own PostgreSQL database holding the
// collector's schema and the demo data.
//
// A test binary calls Main from TestMain. When DATABASE_URL is set its server
// is used (the role needs CREATEDB); otherwise a throwaway cluster is started
// from the system's binaries (package pgtemp) and stopped when the tests end.
// NewDatabase clones a template database, which takes milliseconds.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/sellersnap/sellersnap/internal/demodata"
	"github.com/sellersnap/sellersnap/internal/pgtemp"
)

var (
	adminURL string // a URL to an existing database on the server
	template string // name of the template database holding the demo data
)

// DemoOptions size the demo data in every test database.
var DemoOptions = demodata.Options{Sellers: 3000, Runs: 12, Orgs: 3}

// Main starts (or connects to) the server, prepares the template database,
// runs the tests, fails them if goroutines leaked (goleak), and stops the
// server. Use it as `func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }`.
func Main(m *testing.M) int { return MainWith(m, nil) }

// MainWith is Main calling afterRun (when not nil) after the tests,
// before the leak check: to stop a server the tests shared, whose
// connections would otherwise show as leaked goroutines.
func MainWith(m *testing.M, afterRun func()) int {
	ctx := context.Background()
	var srv *pgtemp.Server
	if u := os.Getenv("DATABASE_URL"); u != "" {
		adminURL = u
	} else {
		var err error
		if srv, err = pgtemp.Start(ctx, pgtemp.Options{}); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
			return 1
		}
		adminURL = srv.URL("postgres")
	}
	template = "sellersnap_tmpl_" + randomSuffix()
	code := 1
	if err := createTemplate(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
	} else {
		code = m.Run()
	}
	if afterRun != nil {
		afterRun()
	}
	dropDatabase(ctx, template)
	if srv != nil {
		_ = srv.Stop()
	}
	if code == 0 {
		// opencensus (linked in by the cloud bucket drivers) starts a
		// worker in its package init that lives as long as the process.
		if err := goleak.Find(goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start")); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest: goroutines leaked:", err)
			code = 1
		}
	}
	return code
}

func createTemplate(ctx context.Context) error {
	if err := exec(ctx, fmt.Sprintf("CREATE DATABASE %s", pgx.Identifier{template}.Sanitize())); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, withDatabase(adminURL, template))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return demodata.Load(ctx, conn, DemoOptions)
}

// NewDatabase creates a database with the demo data for this test and
// returns its URL. It is dropped when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	return newDatabase(t, template)
}

// NewEmptyDatabase creates an empty database for this test.
func NewEmptyDatabase(t testing.TB) string {
	t.Helper()
	return newDatabase(t, "template0")
}

// NewSQLASCIIDatabase creates an empty database whose server encoding is
// SQL_ASCII: the server stores text bytes unchecked, as some old
// deployments do.
func NewSQLASCIIDatabase(t testing.TB) string {
	t.Helper()
	return newDatabase(t, "template0", "ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'")
}

func newDatabase(t testing.TB, from string, options ...string) string {
	t.Helper()
	if adminURL == "" {
		t.Fatal("pgtest: Main was not called from TestMain")
	}
	name := "t_" + randomSuffix()
	ctx := context.Background()
	if err := exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{from}.Sanitize(), strings.Join(options, " "))); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { dropDatabase(context.Background(), name) })
	return withDatabase(adminURL, name)
}

// Connect connects to the database at dbURL for the rest of the test.
func Connect(t testing.TB, dbURL string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Exec runs SQL statements against the database at url.
func Exec(t testing.TB, dbURL, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("pgtest: %s: %v", firstLine(sql), err)
	}
	FlushStats(ctx, conn)
}

// FlushStats makes PostgreSQL count conn's changes in its cumulative
// statistics before it returns, as a session that went idle a while ago
// or ended would have. Without it a change made less than a second after
// the session's last flush shows there only later (at the latest when the
// session ends, which PostgreSQL does after the client has gone), and a
// test that reads the statistics next would race. Before PostgreSQL 15
// there is no way to ask; it does nothing.
func FlushStats(ctx context.Context, conn *pgx.Conn) {
	_, _ = conn.Exec(ctx, `DO $$ BEGIN IF current_setting('server_version_num')::int >= 150000 THEN PERFORM pg_stat_force_next_flush(); END IF; END $$`)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + "…"
	}
	return s
}

func exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

func dropDatabase(ctx context.Context, name string) {
	_ = exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", pgx.Identifier{name}.Sanitize()))
}

func withDatabase(rawURL, db string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		// key=value connection strings: append dbname, which wins over an earlier one.
		return rawURL + " dbname=" + db
	}
	u.Path = "/" + db
	return u.String()
}

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
