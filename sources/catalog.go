package sources

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Column describes one column of a table, from the catalog.
type Column struct {
	Name     string
	Type     string // the (base) type's name: text, int4, numeric, timestamptz, …
	Nullable bool
	// Readable says whether the role may SELECT the column.
	Readable bool
}

// Columns returns the columns of table (in the configured schema), in
// table order, including those the role may not read (information_schema
// hides them, which would report a missing grant as a missing column). A
// missing table is an error naming it.
func (p *Postgres) Columns(ctx context.Context, table string) ([]Column, error) {
	rows, err := p.pool.Query(ctx, `SELECT a.attname, CASE WHEN t.typtype = 'd' THEN bt.typname ELSE t.typname END, NOT a.attnotnull,
			has_schema_privilege(n.oid, 'USAGE') AND has_column_privilege(c.oid, a.attnum, 'SELECT')
		FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
		LEFT JOIN pg_catalog.pg_type bt ON bt.oid = t.typbasetype
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
		ORDER BY a.attnum`,
		pgx.QueryExecModeExec, p.cfg.Schema, table) // one round trip, text and bool results
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", p.cfg.Schema, table, err)
	}
	cols, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Column, error) {
		var c Column
		err := row.Scan(&c.Name, &c.Type, &c.Nullable, &c.Readable)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", p.cfg.Schema, table, err)
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("table %s.%s does not exist", p.cfg.Schema, table)
	}
	return cols, nil
}

// idColumns must be uuid wherever they are required (id and org_id in
// both tables, first_seen_run_id in sellers): ids are compared, locked and
// put into keys as text, which is one spelling per id only for uuid.
var idColumns = []string{"id", "org_id", "first_seen_run_id"}

// Catalog is what the catalog says about the runs and sellers tables, read
// once to check any number of jobs against.
type Catalog struct {
	p                   *Postgres
	runCols, sellerCols []Column
}

// Catalog reads the columns of both tables. A missing table is an error
// naming it.
func (p *Postgres) Catalog(ctx context.Context) (*Catalog, error) {
	runCols, err := p.Columns(ctx, p.cfg.RunsTable)
	if err != nil {
		return nil, err
	}
	sellerCols, err := p.Columns(ctx, p.cfg.SellersTable)
	if err != nil {
		return nil, err
	}
	return &Catalog{p: p, runCols: runCols, sellerCols: sellerCols}, nil
}

// Sellers returns the columns of the sellers table, in table order.
func (c *Catalog) Sellers() []Column { return c.sellerCols }

// Check verifies that both tables exist with the columns the exporter needs
// and that every column in export exists with a supported type. The error
// names each offending column.
func (p *Postgres) Check(ctx context.Context, export []string) error {
	c, err := p.Catalog(ctx)
	if err != nil {
		return err
	}
	return c.Check(ctx, export)
}

// Check is Postgres.Check against the catalog already read.
func (c *Catalog) Check(ctx context.Context, export []string) error {
	p, runCols, sellerCols := c.p, c.runCols, c.sellerCols
	var errs []error
	missing := func(table string, have []Column, want []string, what string) {
		for _, w := range want {
			if !slices.ContainsFunc(have, func(c Column) bool { return c.Name == w }) {
				errs = append(errs, fmt.Errorf("%s: column %q does not exist in %s.%s (columns: %s)", what, w, p.cfg.Schema, table, columnNames(have)))
			}
		}
	}
	missing(p.cfg.RunsTable, runCols, requiredRunColumns, "runs table")
	missing(p.cfg.SellersTable, sellerCols, requiredSellerColumns, "sellers table")
	missing(p.cfg.SellersTable, sellerCols, export, "columns")
	if err := p.checkGrants(ctx, p.cfg.RunsTable, runCols, requiredRunColumns); err != nil {
		errs = append(errs, err)
	}
	if err := p.checkGrants(ctx, p.cfg.SellersTable, sellerCols, append(slices.Clone(requiredSellerColumns), export...)); err != nil {
		errs = append(errs, err)
	}
	wantUUID := func(table string, have []Column, what string) {
		for _, c := range have {
			if slices.Contains(idColumns, c.Name) && c.Type != "uuid" && (table == p.cfg.SellersTable || c.Name != "first_seen_run_id") {
				errs = append(errs, fmt.Errorf("%s: column %q of %s.%s has type %s: sellersnap needs uuid ids, since a text id has many spellings of one run or org (A0EE…, a0ee…, {a0ee…}) that would be exported as different units (ALTER TABLE %s ALTER COLUMN %s TYPE uuid USING %s::uuid)",
					what, c.Name, p.cfg.Schema, table, c.Type, pgx.Identifier{p.cfg.Schema, table}.Sanitize(), pgx.Identifier{c.Name}.Sanitize(), pgx.Identifier{c.Name}.Sanitize()))
			}
		}
	}
	wantUUID(p.cfg.RunsTable, runCols, "runs table")
	wantUUID(p.cfg.SellersTable, sellerCols, "sellers table")
	for _, c := range sellerCols {
		if slices.Contains(export, c.Name) && !SupportedType(c.Type) {
			errs = append(errs, fmt.Errorf("columns: column %q has type %s, which sellersnap cannot export (supported: %s)", c.Name, c.Type, strings.Join(supportedTypes, ", ")))
		}
	}
	return errors.Join(errs...)
}

// checkGrants returns an error carrying the GRANT statement that would let
// the role read the columns of table it needs, or nil.
func (p *Postgres) checkGrants(ctx context.Context, table string, cols []Column, need []string) error {
	var denied []string
	all := true
	for _, c := range cols {
		if !c.Readable {
			if slices.Contains(need, c.Name) {
				denied = append(denied, pgx.Identifier{c.Name}.Sanitize())
			}
		} else {
			all = false
		}
	}
	if len(denied) == 0 {
		return nil
	}
	var role string
	if err := p.pool.QueryRow(ctx, `SELECT current_user`).Scan(&role); err != nil {
		return fmt.Errorf("read current role: %w", err)
	}
	qt, qr := pgx.Identifier{p.cfg.Schema, table}.Sanitize(), pgx.Identifier{role}.Sanitize()
	var schemaOK bool
	if err := p.pool.QueryRow(ctx, `SELECT has_schema_privilege($1, 'USAGE')`, p.cfg.Schema).Scan(&schemaOK); err == nil && !schemaOK {
		return fmt.Errorf("role %s may not use schema %s: GRANT USAGE ON SCHEMA %s TO %s, and SELECT on its tables",
			role, p.cfg.Schema, pgx.Identifier{p.cfg.Schema}.Sanitize(), qr)
	}
	if all {
		return fmt.Errorf("role %s may not read %s.%s: GRANT SELECT ON %s TO %s", role, p.cfg.Schema, table, qt, qr)
	}
	return fmt.Errorf("role %s may not read columns of %s.%s it needs: GRANT SELECT (%s) ON %s TO %s",
		role, p.cfg.Schema, table, strings.Join(denied, ", "), qt, qr)
}

func columnNames(cols []Column) string {
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}
