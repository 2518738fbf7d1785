package sinks

import (
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/apache/arrow/go/v17/arrow"
)

var errClosed = errors.New("encoder is closed")

// NDJSON writes one JSON object per row and line: keys in column order,
// null for NULL, decimals as JSON numbers with their scale, timestamps and
// dates as strings, no HTML escaping. Float NaN and infinities, which JSON
// cannot hold, are written as null.
type NDJSON struct {
	out  textOut
	keys [][]byte // `{"name":` for the first column, `,"name":` after
	cols []textCol
}

// NewNDJSON returns an NDJSON encoder for schema.
func NewNDJSON(w io.Writer, schema *arrow.Schema) (*NDJSON, error) {
	if err := checkSchema(schema); err != nil {
		return nil, fmt.Errorf("ndjson: %w", err)
	}
	e := &NDJSON{out: newTextOut(w, "ndjson")}
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
	if e.out.err != nil {
		return e.out.err
	}
	e.cols = bindColumns(e.cols, rec)
	rows := int(rec.NumRows())
	for i := 0; i < rows; i++ {
		buf := e.out.buf
		for j := range e.cols {
			col := &e.cols[j]
			buf = append(buf, e.keys[j]...)
			switch {
			case col.arr.IsNull(i) || (col.jsonNull != nil && col.jsonNull(i)):
				buf = append(buf, "null"...)
			case col.str != nil && len(col.str.Value(i)) > flushAt:
				var err error
				if buf, err = e.out.appendLarge(append(buf, '"'), col.str.Value(i), appendJSONEscaped); err != nil {
					return err
				}
				buf = append(buf, '"')
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
		e.out.buf = append(buf, '}', '\n')
		if err := e.out.maybeFlush(); err != nil {
			return err
		}
	}
	return nil
}

// Close writes what is buffered. It does not close the writer.
func (e *NDJSON) Close() error { return e.out.close() }

// textOut gathers encoded rows and writes them in large pieces; its first
// error sticks.
type textOut struct {
	w      io.Writer
	format string
	buf    []byte
	err    error
}

func newTextOut(w io.Writer, format string) textOut {
	return textOut{w: w, format: format, buf: make([]byte, 0, flushAt+flushAt/4)}
}

// appendLarge appends s, escaped by esc, to buf (the row being built on
// o.buf) in pieces of flushAt bytes, flushing whenever buf passes flushAt:
// a value of any size costs the encoder a buffer of ~2 × flushAt, where
// appending it whole would grow the row buffer to a multiple of the value.
// Pieces never split a UTF-8 sequence, so esc sees each rune whole.
func (o *textOut) appendLarge(buf []byte, s string, esc func(dst []byte, s string) []byte) ([]byte, error) {
	for len(s) > 0 {
		n := min(len(s), flushAt)
		for back := 0; n < len(s) && back < utf8.UTFMax-1 && !utf8.RuneStart(s[n]); back++ {
			n--
		}
		buf, s = esc(buf, s[:n]), s[n:]
		if len(buf) >= flushAt {
			o.buf = buf
			if err := o.flush(); err != nil {
				return nil, err
			}
			buf = o.buf
		}
	}
	return buf, nil
}

func (o *textOut) maybeFlush() error {
	if len(o.buf) < flushAt {
		return nil
	}
	return o.flush()
}

func (o *textOut) flush() error {
	if _, err := o.w.Write(o.buf); err != nil {
		o.err = fmt.Errorf("%s: %w", o.format, err)
		return o.err
	}
	o.buf = o.buf[:0]
	return nil
}

// close flushes; after it every Write fails and close does nothing.
func (o *textOut) close() error {
	if o.err == errClosed {
		return nil
	}
	if o.err != nil {
		return o.err
	}
	if len(o.buf) > 0 {
		if err := o.flush(); err != nil {
			return err
		}
	}
	o.err = errClosed
	return nil
}
