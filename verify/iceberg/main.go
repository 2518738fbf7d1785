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
	"github.com/apache/iceberg-go"
	"github.com/apache/iceberg-go/catalog"
	sqlcat "github.com/apache/iceberg-go/catalog/sql"
	"github.com/apache/iceberg-go/io"
	"github.com/apache/iceberg-go/table"
	_ "github.com/jackc/pgx/v5/stdlib"
)

func main() {
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
