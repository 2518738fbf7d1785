package iceberg

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Catalog is a SQL catalog in PostgreSQL: the tables the Java JDBC
// catalog (schema V1), pyiceberg's SQL catalog and iceberg-go share, so
// that Spark, Trino, pyiceberg and iceberg-go open the tables sellersnap
// commits.
type Catalog struct {
	pool *pgxpool.Pool
	name string
}

// Ident names a table of a catalog.
type Ident struct {
	Namespace, Table string
}

func (i Ident) String() string { return i.Namespace + "." + i.Table }

// catalogDDL creates the catalog's tables where they are missing, as the
// Java JDBC catalog (V1 schema, with iceberg_type) creates them.
const catalogDDL = `
CREATE TABLE IF NOT EXISTS iceberg_tables (
	catalog_name VARCHAR(255) NOT NULL,
	table_namespace VARCHAR(255) NOT NULL,
	table_name VARCHAR(255) NOT NULL,
	metadata_location VARCHAR(1000),
	previous_metadata_location VARCHAR(1000),
	iceberg_type VARCHAR(5),
	PRIMARY KEY (catalog_name, table_namespace, table_name));
CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
	catalog_name VARCHAR(255) NOT NULL,
	namespace VARCHAR(255) NOT NULL,
	property_key VARCHAR(255),
	property_value VARCHAR(1000),
	PRIMARY KEY (catalog_name, namespace, property_key))`

// OpenCatalog connects to the catalog database at dsn (a role that may
// create and write the catalog's tables) for the catalog named name. The
// pool connects on first use.
func OpenCatalog(ctx context.Context, dsn, name string) (*Catalog, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx redacts passwords only on a best-effort basis: never echo the DSN.
		return nil, errors.New("iceberg catalog: invalid connection string (check iceberg.uri)")
	}
	cfg.MaxConns = 4
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 15 * time.Second
	}
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "sellersnap-iceberg"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("iceberg catalog: %w", err)
	}
	return &Catalog{pool: pool, name: name}, nil
}

// Name is the catalog's name (catalog_name).
func (c *Catalog) Name() string { return c.name }

// Close closes the catalog's connections.
func (c *Catalog) Close() { c.pool.Close() }

// Ensure creates the catalog's tables and the namespace where missing.
//
// CREATE TABLE IF NOT EXISTS is not safe against itself: two sessions
// creating the same table at once can fail on pg_type's unique index.
// Replicas (and a daemon's check beside its exports) take an advisory lock
// around it; a writer that takes none (a Java catalog creating the tables
// at the same moment) is answered by trying once more, when the tables
// exist.
func (c *Catalog) Ensure(ctx context.Context, ns string) error {
	err := c.createTables(ctx)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "42P07") { // unique_violation, duplicate_table
		err = c.createTables(ctx)
	}
	if err != nil {
		return fmt.Errorf("iceberg catalog: create its tables: %w", err)
	}
	// The namespace exists when it has a property (the Java catalog's
	// "exists" marker) or a table.
	_, err = c.pool.Exec(ctx, `INSERT INTO iceberg_namespace_properties (catalog_name, namespace, property_key, property_value)
		VALUES ($1, $2, 'exists', 'true') ON CONFLICT DO NOTHING`, c.name, ns)
	if err != nil {
		return fmt.Errorf("iceberg catalog: create namespace %s: %w", ns, err)
	}
	return nil
}

func (c *Catalog) createTables(ctx context.Context) error {
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('sellersnap.iceberg.catalog-tables', 0))`); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, catalogDDL); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// Location returns where the table's current metadata is, "" when the
// catalog has no such table.
func (c *Catalog) Location(ctx context.Context, id Ident) (string, error) {
	var loc *string
	err := c.pool.QueryRow(ctx, `SELECT metadata_location FROM iceberg_tables
		WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3 AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)`,
		c.name, id.Namespace, id.Table).Scan(&loc)
	if errors.Is(err, pgx.ErrNoRows) || err == nil && loc == nil {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("iceberg catalog: read %s: %w", id, err)
	}
	return *loc, nil
}

// ErrConflict is a commit whose base is no longer the table's current
// metadata: another writer committed first.
var ErrConflict = errors.New("the table's metadata changed since it was read")

// ErrOutcomeUnknown is a commit whose catalog transaction was sent but
// not answered (the connection broke in COMMIT): the table may or may not
// hold it. Table.FindSnapshot tells, by the commit's summary properties.
var ErrOutcomeUnknown = errors.New("the commit's outcome is unknown")

// commitTx is one commit in progress: the catalog row is locked until
// Commit or Rollback.
type commitTx struct {
	tx   pgx.Tx
	c    *Catalog
	id   Ident
	base string // metadata_location read under the lock, "" for a new table
	// nowMS is the catalog database's clock: one clock for every replica.
	nowMS int64
}

// begin locks the table's row (and, through an advisory lock, the table's
// creation) for one commit.
func (c *Catalog) begin(ctx context.Context, id Ident) (*commitTx, error) {
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("iceberg catalog: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	// A writer that holds the row (a stuck Spark transaction) fails the
	// commit after a minute, which the export retries, instead of
	// holding every export of the job.
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '60s'`); err != nil {
		return nil, fmt.Errorf("iceberg catalog: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('sellersnap.iceberg:' || $1 || '.' || $2 || '.' || $3, 0))`,
		c.name, id.Namespace, id.Table); err != nil {
		return nil, fmt.Errorf("iceberg catalog: lock %s: %w", id, err)
	}
	var loc, typ *string
	err = tx.QueryRow(ctx, `SELECT metadata_location, iceberg_type FROM iceberg_tables
		WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3 FOR UPDATE`,
		c.name, id.Namespace, id.Table).Scan(&loc, &typ)
	noRow := errors.Is(err, pgx.ErrNoRows)
	if err != nil && !noRow {
		return nil, fmt.Errorf("iceberg catalog: read %s: %w", id, err)
	}
	ct := &commitTx{tx: tx, c: c, id: id}
	if err := tx.QueryRow(ctx, `SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint`).Scan(&ct.nowMS); err != nil {
		return nil, fmt.Errorf("iceberg catalog: %w", err)
	}
	switch {
	case noRow:
	case typ != nil && *typ != "TABLE":
		return nil, fmt.Errorf("iceberg catalog: %s is a %s, not a table", id, strings.ToLower(*typ))
	case loc == nil || *loc == "":
		return nil, fmt.Errorf("iceberg catalog: %s has no metadata_location (a table another writer is creating, or a broken row): not committing over it", id)
	default:
		ct.base = *loc
	}
	ok = true
	return ct, nil
}

// swap points the table at next, if its metadata is still the base, and
// commits.
func (t *commitTx) swap(ctx context.Context, next string) error {
	var err error
	if t.base == "" {
		ct, e := t.tx.Exec(ctx, `INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, metadata_location, previous_metadata_location, iceberg_type)
			VALUES ($1, $2, $3, $4, NULL, 'TABLE') ON CONFLICT DO NOTHING`, t.c.name, t.id.Namespace, t.id.Table, next)
		err = e
		if err == nil && ct.RowsAffected() == 0 {
			return ErrConflict
		}
	} else {
		ct, e := t.tx.Exec(ctx, `UPDATE iceberg_tables SET metadata_location = $4, previous_metadata_location = $5
			WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3 AND metadata_location = $5`,
			t.c.name, t.id.Namespace, t.id.Table, next, t.base)
		err = e
		if err == nil && ct.RowsAffected() == 0 {
			return ErrConflict
		}
	}
	if err != nil {
		op := "update"
		if t.base == "" {
			op = "insert"
		}
		return fmt.Errorf("iceberg catalog: %s %s: %w", op, t.id, err)
	}
	if err := t.tx.Commit(ctx); err != nil {
		return fmt.Errorf("iceberg catalog: commit %s: %w: %w", t.id, ErrOutcomeUnknown, err)
	}
	return nil
}

func (t *commitTx) rollback(ctx context.Context) {
	t.tx.Rollback(context.WithoutCancel(ctx))
}
