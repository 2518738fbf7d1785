package sinks

import (
	"fmt"
	"io"

	"github.com/apache/arrow/go/v17/arrow"
)

// flushAt is how many bytes the text encoders gather before one Write to
// the writer under them: large sequential writes suit blob uploads.
const flushAt = 256 << 10

// CSVOptions tune the CSV encoder.
type CSVOptions struct {
	// FormulaGuard prefixes text cells that start with = + - @ TAB or CR
	// (or a fullwidth ＝ ＋ － ＠)
	// with a single quote, so spreadsheets do not run them as formulas
	// (OWASP "CSV injection"). It applies to text columns and the header.
	FormulaGuard bool
	// Delimiter separates fields. Default ','.
	Delimiter byte
	// QuoteAll quotes every field but NULLs, which stay empty and
	// unquoted so that NULL and "" still differ.
	QuoteAll bool
}

// CSV writes records as RFC 4180 CSV: a header row, LF line ends, NULL as
// an empty unquoted field, an empty string as "".
type CSV struct {
	out   textOut
	opts  CSVOptions
	cols  []textCol
	quote [256]bool
}

// resolve applies the defaults and checks the options.
func (o *CSVOptions) resolve() error {
	if o.Delimiter == 0 {
		o.Delimiter = ','
	}
	switch o.Delimiter {
	case '"', '\r', '\n', '\'':
		return fmt.Errorf("csv: delimiter %q: want one ASCII character other than quotes, CR and LF", o.Delimiter)
	}
	return nil
}

// NewCSV returns a CSV encoder that writes the header for schema at once.
func NewCSV(w io.Writer, schema *arrow.Schema, opts CSVOptions) (*CSV, error) {
	if err := checkSchema(schema); err != nil {
		return nil, fmt.Errorf("csv: %w", err)
	}
	if err := opts.resolve(); err != nil {
		return nil, err
	}
	c := &CSV{out: newTextOut(w, "csv"), opts: opts}
	for _, b := range []byte{'"', '\r', '\n', opts.Delimiter} {
		c.quote[b] = true
	}
	for i, f := range schema.Fields() {
		if i > 0 {
			c.out.buf = append(c.out.buf, opts.Delimiter)
		}
		c.out.buf = c.appendText(c.out.buf, f.Name)
	}
	c.out.buf = append(c.out.buf, '\n')
	return c, nil
}

// Write appends rec's rows.
func (c *CSV) Write(rec arrow.Record) error {
	if c.out.err != nil {
		return c.out.err
	}
	c.cols = bindColumns(c.cols, rec)
	rows := int(rec.NumRows())
	for i := 0; i < rows; i++ {
		buf := c.out.buf
		for j := range c.cols {
			col := &c.cols[j]
			if j > 0 {
				buf = append(buf, c.opts.Delimiter)
			}
			if col.arr.IsNull(i) {
				continue
			}
			switch {
			case col.str != nil && len(col.str.Value(i)) > flushAt:
				var err error
				if buf, err = c.appendLargeText(buf, col.str.Value(i)); err != nil {
					return err
				}
			case col.str != nil:
				buf = c.appendText(buf, col.str.Value(i))
			case c.opts.QuoteAll:
				buf = append(buf, '"')
				buf = append(col.value(buf, i), '"') // numbers, dates, booleans: no quotes inside
			default:
				buf = col.value(buf, i)
			}
		}
		c.out.buf = append(buf, '\n')
		if err := c.out.maybeFlush(); err != nil {
			return err
		}
	}
	return nil
}

// Close writes what is buffered. It does not close the writer.
func (c *CSV) Close() error { return c.out.close() }

// formulaStart marks the first bytes that make a spreadsheet evaluate a cell.
var formulaStart = [256]bool{'=': true, '+': true, '-': true, '@': true, '\t': true, '\r': true}

// fullwidthFormulaStart reports whether s starts with a fullwidth ＝ ＋ －
// or ＠ (U+FF1D, U+FF0B, U+FF0D, U+FF20), which spreadsheets with East
// Asian input settings also take for the start of a formula.
func fullwidthFormulaStart(s string) bool {
	if len(s) < 3 || s[0] != 0xEF {
		return false
	}
	switch s[:3] {
	case "\uFF1D", "\uFF0B", "\uFF0D", "\uFF20":
		return true
	}
	return false
}

// cell decides how a text cell is written: with a formula guard, quoted.
func (c *CSV) cell(s string) (guard, quote bool) {
	guard = c.opts.FormulaGuard && len(s) > 0 && (formulaStart[s[0]] || fullwidthFormulaStart(s))
	quote = c.opts.QuoteAll || len(s) == 0 || s[0] == ' ' || s[len(s)-1] == ' '
	if !quote {
		for i := 0; i < len(s); i++ {
			if c.quote[s[i]] {
				return guard, true
			}
		}
	}
	return guard, quote
}

// appendCellStart appends what goes before a cell's text.
func appendCellStart(dst []byte, guard, quote bool) []byte {
	if quote {
		dst = append(dst, '"')
	}
	if guard {
		dst = append(dst, '\'')
	}
	return dst
}

func (c *CSV) appendText(dst []byte, s string) []byte {
	guard, quote := c.cell(s)
	dst = appendCellStart(dst, guard, quote)
	if !quote {
		return append(dst, s...)
	}
	return append(appendCSVEscaped(dst, s), '"')
}

// appendLargeText is appendText for a value larger than flushAt, written
// through the buffer in pieces (textOut.appendLarge).
func (c *CSV) appendLargeText(dst []byte, s string) ([]byte, error) {
	guard, quote := c.cell(s)
	esc := appendCSVEscaped
	if !quote {
		esc = func(dst []byte, s string) []byte { return append(dst, s...) }
	}
	dst, err := c.out.appendLarge(appendCellStart(dst, guard, quote), s, esc)
	if err != nil || !quote {
		return dst, err
	}
	return append(dst, '"'), nil
}

// appendCSVEscaped appends s with each '"' doubled.
func appendCSVEscaped(dst []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '"' {
			dst = append(dst, s[start:i+1]...)
			dst = append(dst, '"')
			start = i + 1
		}
	}
	return append(dst, s[start:]...)
}
