package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/iceberg-go"
	"github.com/apache/iceberg-go/catalog"
	sqlcat "github.com/apache/iceberg-go/catalog/sql"
	"github.com/apache/iceberg-go/io"
	"github.com/apache/iceberg-go/table"
	_ "github.com/jackc/pgx/v5/stdlib"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "write" {
		if err := write(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "iceberg-write:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "iceberg-read:", err)
		os.Exit(1)
	}
}

func run() error {
	uri := flag.String("uri", "", "SQL catalog: PostgreSQL DSN")
	name := flag.String("catalog", "sellersnap", "SQL catalog: catalog_name")
	ident := flag.String("table", "", "SQL catalog: namespace.table")
	meta := flag.String("metadata", "", "instead of a catalog: the table's metadata file")
	where := flag.String("where", "", "a row filter col=value (a string column), pushed to the scan")
	flag.Parse()
	ctx := context.Background()
	var tbl *table.Table
	var err error
	switch {
	case *meta != "":
		tbl, err = table.NewFromLocation(ctx, table.Identifier{"static", "table"}, *meta, io.LoadFSFunc(nil, *meta), nil)
	case *uri != "" && *ident != "":
		db, e := sql.Open("pgx", *uri)
		if e != nil {
			return e
		}
		defer db.Close()
		cat, e := sqlcat.NewCatalog(*name, db, sqlcat.Postgres, iceberg.Properties{})
		if e != nil {
			return e
		}
		tbl, err = cat.LoadTable(ctx, catalog.ToIdentifier(strings.Split(*ident, ".")...))
	default:
		return errors.New("give -metadata, or -uri and -table")
	}
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	snap := tbl.CurrentSnapshot()
	head := map[string]any{"schema": tbl.Schema().String(), "spec": tbl.Spec().String()}
	if snap != nil {
		head["snapshot_id"] = snap.SnapshotID
		head["summary"] = snap.Summary
	}
	var opts []table.ScanOption
	if *where != "" {
		col, val, ok := strings.Cut(*where, "=")
		if !ok {
			return errors.New("-where: want col=value")
		}
		opts = append(opts, table.WithRowFilter(iceberg.EqualTo(iceberg.Reference(col), val)))
	}
	scan := tbl.Scan(opts...)
	tasks, err := scan.PlanFiles(ctx)
	if err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	var files []map[string]any
	for _, t := range tasks {
		part := map[string]string{}
		for id, v := range t.File.Partition() {
			part[fmt.Sprint(id)] = fmt.Sprint(v)
		}
		files = append(files, map[string]any{"path": t.File.FilePath(), "records": t.File.Count(), "partition": part})
	}
	head["files"] = files
	if err := enc.Encode(head); err != nil {
		return err
	}
	if snap == nil {
		return nil
	}
	schema, recs, err := scan.ToArrowRecords(ctx)
	if err != nil {
		return fmt.Errorf("scan: %w", err)
	}
	names := make([]string, schema.NumFields())
	for i, f := range schema.Fields() {
		names[i] = f.Name
	}
	if err := enc.Encode(map[string]any{"columns": names}); err != nil {
		return err
	}
	for rec, err := range recs {
		if err != nil {
			return fmt.Errorf("scan: %w", err)
		}
		for r := 0; r < int(rec.NumRows()); r++ {
			row := make([]any, rec.NumCols())
			for c := range row {
				row[c] = text(rec.Column(c), r)
			}
			if err := enc.Encode(row); err != nil {
				return err
			}
		}
		rec.Release()
	}
	return nil
}

// write commits to the table as another writer would, in one iceberg-go
// transaction: properties set, a column added, a row appended (its other
// columns null).
func write(args []string) error {
	fs := flag.NewFlagSet("write", flag.ExitOnError)
	uri := fs.String("uri", "", "SQL catalog: PostgreSQL DSN")
	name := fs.String("catalog", "sellersnap", "SQL catalog: catalog_name")
	ident := fs.String("table", "", "SQL catalog: namespace.table")
	set := fs.String("set", "", "properties to set: k=v,k=v")
	addColumn := fs.String("add-column", "", "an optional string column to add")
	appendRow := fs.String("append", "", "a row to append: col=value,col=value (string and date columns)")
	fs.Parse(args)
	ctx := context.Background()
	db, err := sql.Open("pgx", *uri)
	if err != nil {
		return err
	}
	defer db.Close()
	cat, err := sqlcat.NewCatalog(*name, db, sqlcat.Postgres, iceberg.Properties{})
	if err != nil {
		return err
	}
	id := catalog.ToIdentifier(strings.Split(*ident, ".")...)
	tbl, err := cat.LoadTable(ctx, id)
	if err != nil {
		return err
	}
	if *set != "" {
		props := iceberg.Properties{}
		for _, kv := range strings.Split(*set, ",") {
			k, v, _ := strings.Cut(kv, "=")
			props[k] = v
		}
		tx := tbl.NewTransaction()
		if err := tx.SetProperties(props); err != nil {
			return err
		}
		if tbl, err = tx.Commit(ctx); err != nil {
			return fmt.Errorf("set properties: %w", err)
		}
	}
	if *addColumn != "" {
		tx := tbl.NewTransaction()
		if err := tx.UpdateSchema(true, false).AddColumn([]string{*addColumn}, iceberg.PrimitiveTypes.String, "added by iceberg-go", false, nil).Commit(); err != nil {
			return fmt.Errorf("add column: %w", err)
		}
		if tbl, err = tx.Commit(ctx); err != nil {
			return fmt.Errorf("add column: %w", err)
		}
	}
	if *appendRow != "" {
		rec, err := oneRow(tbl.Schema(), *appendRow)
		if err != nil {
			return err
		}
		defer rec.Release()
		rdr, err := array.NewRecordReader(rec.Schema(), []arrow.RecordBatch{rec})
		if err != nil {
			return err
		}
		tx := tbl.NewTransaction()
		if err := tx.Append(ctx, rdr, iceberg.Properties{"writer": "iceberg-go"}); err != nil {
			return fmt.Errorf("append: %w", err)
		}
		if _, err = tx.Commit(ctx); err != nil {
			return fmt.Errorf("append: %w", err)
		}
	}
	return nil
}

// oneRow is a record of the table's schema with the values given (as
// col=value,…) and every other column null.
func oneRow(sc *iceberg.Schema, values string) (arrow.RecordBatch, error) {
	schema, err := table.SchemaToArrowSchema(sc, nil, true, false)
	if err != nil {
		return nil, err
	}
	given := map[string]string{}
	for _, kv := range strings.Split(values, ",") {
		k, v, _ := strings.Cut(kv, "=")
		given[k] = v
	}
	b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer b.Release()
	for i, f := range schema.Fields() {
		v, ok := given[f.Name]
		switch fb := b.Field(i).(type) {
		case *array.StringBuilder:
			if ok {
				fb.Append(v)
				continue
			}
		case *array.Date32Builder:
			if ok {
				d, err := time.Parse(time.DateOnly, v)
				if err != nil {
					return nil, err
				}
				fb.Append(arrow.Date32FromTime(d))
				continue
			}
		default:
			if ok {
				return nil, fmt.Errorf("column %s: only string and date values here", f.Name)
			}
		}
		b.Field(i).AppendNull()
	}
	return b.NewRecordBatch(), nil
}

// text is a value in sellersnap's text form (the CSV's), nil for NULL.
func text(a arrow.Array, i int) any {
	if a.IsNull(i) {
		return nil
	}
	switch a := a.(type) {
	case *array.String:
		return a.Value(i)
	case *array.LargeString:
		return a.Value(i)
	case *array.Boolean:
		return fmt.Sprint(a.Value(i))
	case *array.Int32:
		return fmt.Sprint(a.Value(i))
	case *array.Int64:
		return fmt.Sprint(a.Value(i))
	case *array.Float32:
		return fmt.Sprint(a.Value(i))
	case *array.Float64:
		return fmt.Sprint(a.Value(i))
	case *array.Date32:
		return a.Value(i).ToTime().Format(time.DateOnly)
	case *array.Timestamp:
		u := a.DataType().(*arrow.TimestampType).Unit
		return a.Value(i).ToTime(u).UTC().Format("2006-01-02T15:04:05.000000Z")
	case *array.Decimal128:
		return a.Value(i).ToString(a.DataType().(*arrow.Decimal128Type).Scale)
	}
	return a.ValueStr(i)
}
