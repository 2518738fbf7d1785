package sources

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// Defaults for ReadOptions.
const (
	DefaultBatchRows  = 2048
	DefaultBatchBytes = 32 << 20
)

// Query selects the sellers to export.
type Query struct {
	// Columns are the sellers columns to read, in output order.
	Columns []string
	// RunID, when set, keeps sellers first seen in that run; otherwise every
	// live seller of the org is read (a full snapshot).
	RunID string
	// OrgID scopes the query to one org; "" means sellers without an org.
	OrgID  string
	Filter Filter
}

// ReadOptions size the record batches.
type ReadOptions struct {
	// BatchRows is the most rows per record. Default DefaultBatchRows.
	BatchRows int
	// BatchBytes ends a record early once its values hold this many bytes,
	// so very wide values cannot blow up memory. Default DefaultBatchBytes.
	BatchBytes int
	// Allocator for the records. Default memory.DefaultAllocator.
	Allocator memory.Allocator
}

// SQL returns the statement and its parameters. Identifiers are quoted;
// values are always parameters. The seller id is read as a hidden last
// column, for error messages.
func (q Query) SQL(schema, table string) (string, []string, []uint32) {
	var b strings.Builder
	b.WriteString("SELECT ")
	for _, c := range q.Columns {
		b.WriteString(pgx.Identifier{c}.Sanitize())
		b.WriteString(", ")
	}
	b.WriteString(`"id" FROM `)
	b.WriteString(pgx.Identifier{schema, table}.Sanitize())
	b.WriteString(` WHERE "deleted_at" IS NULL`)
	var params []string
	var oids []uint32
	if q.RunID != "" {
		params = append(params, q.RunID)
		oids = append(oids, pgtype.UUIDOID)
		fmt.Fprintf(&b, ` AND "first_seen_run_id" = $%d`, len(params))
	}
	if q.OrgID == "" {
		b.WriteString(` AND "org_id" IS NULL`)
	} else {
		params = append(params, q.OrgID)
		oids = append(oids, pgtype.UUIDOID)
		fmt.Fprintf(&b, ` AND "org_id" = $%d`, len(params))
	}
	if q.Filter.Flagged != nil {
		params = append(params, fmt.Sprint(*q.Filter.Flagged))
		oids = append(oids, pgtype.BoolOID)
		b.WriteString(q.Filter.where(`"flagged"`, len(params)))
	}
	b.WriteString(" ORDER BY " + Order)
	return b.String(), params, oids
}

// Order is the order of the sellers of every export: newest first, the id
// breaking ties, so that the same rows always come out the same way.
const Order = "created_at DESC, id DESC"

// Reader streams the result of a Query as Arrow records. It is not safe
// for concurrent use.
type Reader struct {
	ctx    context.Context
	cancel context.CancelFunc
	rr     *pgconn.ResultReader
	schema *arrow.Schema
	bld    *array.RecordBuilder
	cols   []*column
	opts   ReadOptions
	done   bool
	closed bool
	rows   int64
}

// Sellers runs q inside the snapshot and returns a Reader over its rows.
// ctx governs the whole read. The caller must Close the Reader before
// using the snapshot again.
func (s *Snapshot) Sellers(ctx context.Context, q Query, opts ReadOptions) (*Reader, error) {
	if opts.BatchRows <= 0 {
		opts.BatchRows = DefaultBatchRows
	}
	if opts.BatchBytes <= 0 {
		opts.BatchBytes = DefaultBatchBytes
	}
	if opts.Allocator == nil {
		opts.Allocator = memory.DefaultAllocator
	}
	if err := s.checkColumns(q); err != nil {
		return nil, err
	}
	sql, params, oids := q.SQL(s.cfg.Schema, s.cfg.SellersTable)
	values := make([][]byte, len(params))
	for i, p := range params {
		values[i] = []byte(p)
	}
	formats := make([]int16, len(q.Columns)+1)
	for i := range formats {
		formats[i] = pgtype.BinaryFormatCode
	}
	ctx, cancel := bound(ctx, s.cfg)
	rr := s.conn.Conn().PgConn().ExecParams(ctx, sql, values, oids, nil, formats)
	fds := rr.FieldDescriptions()
	if fds == nil {
		_, err := rr.Close()
		if err == nil {
			err = errors.New("no row description")
		}
		err = stalled(ctx, err)
		cancel()
		return nil, fmt.Errorf("query sellers: %w", err)
	}
	fields := make([]arrow.Field, len(q.Columns))
	cols := make([]*column, len(q.Columns))
	for i, name := range q.Columns {
		nullable, known := s.nulls[name]
		if !known {
			nullable = true
		}
		c, err := newColumn(name, fds[i].DataTypeOID, fds[i].TypeModifier, nullable)
		if err != nil {
			rr.Close()
			cancel()
			return nil, err
		}
		cols[i] = c
		fields[i] = arrow.Field{Name: name, Type: c.typ, Nullable: nullable}
	}
	schema := arrow.NewSchema(fields, nil)
	bld := array.NewRecordBuilder(opts.Allocator, schema)
	for i, c := range cols {
		c.bind(bld.Field(i))
	}
	return &Reader{ctx: ctx, cancel: cancel, rr: rr, schema: schema, bld: bld, cols: cols, opts: opts}, nil
}

// stalled replaces err by the StalledError that caused it, if any.
func stalled(ctx context.Context, err error) error {
	var se *StalledError
	if cause := context.Cause(ctx); errors.As(cause, &se) {
		return se
	}
	return err
}

// Schema is the Arrow schema of every record, with the source column names.
func (r *Reader) Schema() *arrow.Schema { return r.schema }

// Rows is the number of rows read so far.
func (r *Reader) Rows() int64 { return r.rows }

// Next returns the next record, or io.EOF after the last one. The caller
// owns the record and must Release it. A query error (a terminated backend,
// a statement timeout) is returned as soon as it arrives.
func (r *Reader) Next() (arrow.Record, error) {
	if r.done {
		return nil, io.EOF
	}
	r.reserve()
	n, size := 0, 0
	for n < r.opts.BatchRows && size < r.opts.BatchBytes {
		if !r.rr.NextRow() {
			r.done = true
			break
		}
		vals := r.rr.Values()
		if len(vals) != len(r.cols)+1 {
			return nil, fmt.Errorf("query sellers: got %d values, want %d", len(vals), len(r.cols)+1)
		}
		for i, c := range r.cols {
			v := vals[i]
			if err := c.appendValue(v); err != nil {
				return nil, &ValueError{Column: c.name, SellerID: uuidText(vals[len(vals)-1]), Err: err}
			}
			size += len(v)
		}
		n++
	}
	if r.done {
		_, err := r.rr.Close()
		r.closed = true
		if err != nil {
			return nil, fmt.Errorf("query sellers: %w", stalled(r.ctx, err))
		}
		if n == 0 {
			return nil, io.EOF
		}
	}
	r.rows += int64(n)
	for _, c := range r.cols {
		if c.str != nil {
			c.lastData = c.str.DataLen()
		}
	}
	return r.bld.NewRecord(), nil
}

// reserve sizes the builders for a full batch up front, string data by the
// previous batch, so they do not grow by doubling row after row.
func (r *Reader) reserve() {
	for _, c := range r.cols {
		c.builder.Reserve(r.opts.BatchRows)
		if c.str != nil && c.lastData > 0 {
			c.str.ReserveData(min(c.lastData+c.lastData/8, r.opts.BatchBytes))
		}
	}
}

// Nulled counts, per column and reason, the values that became NULL
// because Arrow cannot hold them (numeric NaN, infinite timestamps).
func (r *Reader) Nulled() []Nulled {
	var out []Nulled
	for _, c := range r.cols {
		for _, reason := range []string{"NaN", "Infinity", "-Infinity", "infinity", "-infinity"} {
			if n := c.nulled[reason]; n > 0 {
				out = append(out, Nulled{Column: c.name, Reason: reason, Count: n})
			}
		}
	}
	return out
}

// Nulled is a count of values of one column replaced by NULL for one reason.
type Nulled struct {
	Column string `json:"column"`
	Reason string `json:"reason"`
	Count  int64  `json:"count"`
}

// Close stops the query (if still running) and frees the builders.
func (r *Reader) Close() error {
	var err error
	if !r.closed {
		r.closed = true
		_, err = r.rr.Close()
	}
	r.cancel()
	r.bld.Release()
	return err
}

// ValueError is a value that cannot be exported.
type ValueError struct {
	Column   string
	SellerID string
	Err      error
}

func (e *ValueError) Error() string {
	return fmt.Sprintf("seller %s, column %q: %v", e.SellerID, e.Column, e.Err)
}

func (e *ValueError) Unwrap() error { return e.Err }

func uuidText(b []byte) string {
	if len(b) != 16 {
		return "?"
	}
	var buf [36]byte
	encodeUUID(buf[:], b)
	return string(buf[:])
}

func encodeUUID(dst, b []byte) {
	hex.Encode(dst[0:8], b[0:4])
	dst[8] = '-'
	hex.Encode(dst[9:13], b[4:6])
	dst[13] = '-'
	hex.Encode(dst[14:18], b[6:8])
	dst[18] = '-'
	hex.Encode(dst[19:23], b[8:10])
	dst[23] = '-'
	hex.Encode(dst[24:36], b[10:16])
}

// MissingColumnsError is schema drift found at read time: the sellers
// table lacks columns the job reads (dropped or renamed since the job was
// configured).
type MissingColumnsError struct {
	Table   string
	Columns []string
}

func (e *MissingColumnsError) Error() string {
	return fmt.Sprintf("schema drift: table %s has no column %s that the job reads (dropped or renamed?): restore it, or change the job's columns",
		e.Table, strings.Join(e.Columns, ", "))
}

// checkColumns returns a *MissingColumnsError when the sellers table, as
// the snapshot sees it, lacks a column q reads or filters on. A table the
// snapshot did not find is left to the query's own error.
func (s *Snapshot) checkColumns(q Query) error {
	if len(s.nulls) == 0 {
		return nil
	}
	need := append([]string{"id", "org_id", "created_at", "deleted_at"}, q.Columns...)
	if q.RunID != "" {
		need = append(need, "first_seen_run_id")
	}
	if q.Filter.Flagged != nil {
		need = append(need, "flagged")
	}
	var missing []string
	for _, c := range need {
		if _, ok := s.nulls[c]; !ok && !slices.Contains(missing, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return &MissingColumnsError{Table: s.cfg.Schema + "." + s.cfg.SellersTable, Columns: missing}
}
