package demodata_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sellersnap/sellersnap/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestLoadIsDeterministicAndHostile(t *testing.T) {
	ctx := context.Background()
	a, b := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	digest := func(url string) (string, int) {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var sum string
		var n int
		err = conn.QueryRow(ctx, `SELECT md5(string_agg(s::text, '|' ORDER BY id)), count(*) FROM sellers s`).Scan(&sum, &n)
		if err != nil {
			t.Fatal(err)
		}
		return sum, n
	}
	da, na := digest(a)
	db, _ := digest(b)
	if da != db || na != pgtest.DemoOptions.Sellers {
		t.Fatalf("digests %s vs %s, rows %d", da, db, na)
	}
	conn, err := pgx.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	checks := map[string]string{
		"CR/LF inside a value":          `SELECT count(*) FROM sellers WHERE display_name LIKE E'%\r\n%'`,
		"empty platform_id":             `SELECT count(*) FROM sellers WHERE platform_id = ''`,
		"NULL platform_id":              `SELECT count(*) FROM sellers WHERE platform_id IS NULL`,
		"int32 max":                     `SELECT count(*) FROM sellers WHERE feedback_count = 2147483647`,
		"int32 min":                     `SELECT count(*) FROM sellers WHERE feedback_count = -2147483648`,
		"pre-1970 created_at":           `SELECT count(*) FROM sellers WHERE created_at < '1970-01-01'`,
		"ties in created_at":            `SELECT count(*) FROM (SELECT created_at FROM sellers GROUP BY 1 HAVING count(*) > 1) x`,
		"soft deleted":                  `SELECT count(*) FROM sellers WHERE deleted_at IS NOT NULL`,
		"failed runs":                   `SELECT count(*) FROM collection_runs WHERE status = 'failed'`,
		"running runs":                  `SELECT count(*) FROM collection_runs WHERE status = 'running'`,
		"completed run with no sellers": `SELECT count(*) FROM collection_runs r WHERE status = 'completed' AND NOT EXISTS (SELECT 1 FROM sellers WHERE first_seen_run_id = r.id)`,
		"formula payloads":              `SELECT count(*) FROM sellers WHERE display_name ~ '^[=+@-]'`,
		"100 KB value":                  `SELECT count(*) FROM sellers WHERE octet_length(display_name) > 100000`,
	}
	for name, q := range checks {
		var n int
		if err := conn.QueryRow(ctx, q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if n == 0 {
			t.Errorf("demo data has no %s", name)
		}
	}
}
