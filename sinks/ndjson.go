package sinks

import (
	"errors"
	"fmt"
	"io"

	"github.com/apache/arrow/go/v17/arrow"
)

var errClosed = errors.New("encoder is closed")

// NDJSON writes one JSON object per row and line: keys in column order,
// null for NULL, decimals as JSON numbers with their scale, timestamps and
// dates as strings, no HTML escaping. Float NaN and infinities, which JSON
// cannot hold, are written as null.
type NDJSON struct {
	w    io.Writer
	buf  []byte
	keys [][]byte // `{"name":` for the first column, `,"name":` after
	cols []textCol
	err  error
}

// NewNDJSON returns an NDJSON encoder for schema.
func NewNDJSON(w io.Writer, schema *arrow.Schema) (*NDJSON, error) {
	if err := checkSchema(schema); err != nil {
		return nil, fmt.Errorf("ndjson: %w", err)
	}
	e := &NDJSON{w: w, buf: make([]byte, 0, flushAt+flushAt/4)}
	for i, f := range schema.Fields() {
		sep := byte(',')
		if i == 0 {
			sep = '{'
		}
		k := appendJSONString([]byte{sep}, f.Name)
		e.keys = append(e.keys, append(k, ':'))
	}
	return e, nil
}

// Write appends rec's rows.
func (e *NDJSON) Write(rec arrow.Record) error {
	if e.err != nil {
		return e.err
	}
	e.cols = bindColumns(e.cols, rec)
	rows := int(rec.NumRows())
	buf := e.buf
	for i := 0; i < rows; i++ {
		for j := range e.cols {
			col := &e.cols[j]
			buf = append(buf, e.keys[j]...)
			switch {
			case col.arr.IsNull(i) || (col.jsonNull != nil && col.jsonNull(i)):
				buf = append(buf, "null"...)
			case col.str != nil:
				buf = appendJSONString(buf, col.str.Value(i))
			case col.quoted:
				buf = append(buf, '"')
				buf = col.value(buf, i)
				buf = append(buf, '"')
			default:
				buf = col.value(buf, i)
			}
		}
		buf = append(buf, '}', '\n')
		if len(buf) >= flushAt {
			if _, err := e.w.Write(buf); err != nil {
				e.err = fmt.Errorf("ndjson: %w", err)
				return e.err
			}
			buf = buf[:0]
		}
	}
	e.buf = buf
	return nil
}

// Close writes what is buffered. It does not close the writer.
func (e *NDJSON) Close() error {
	if e.err == errClosed {
		return nil
	}
	if e.err != nil {
		return e.err
	}
	if len(e.buf) > 0 {
		if _, err := e.w.Write(e.buf); err != nil {
			e.err = fmt.Errorf("ndjson: %w", err)
			return e.err
		}
	}
	e.err = errClosed
	return nil
}
