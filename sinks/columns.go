package sinks

import (
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
)

// textCol renders one column of a record as text for CSV and NDJSON.
type textCol struct {
	arr arrow.Array
	str *array.String // set for string columns: the value is text to escape
	// value appends the text form of a non-string value.
	value func(dst []byte, i int) []byte
	// quoted says NDJSON writes the text form as a JSON string (temporal
	// types); numbers and booleans are bare.
	quoted bool
	// jsonNull says value i cannot be a JSON number (NaN, ±Inf) and is
	// written as null in NDJSON.
	jsonNull func(i int) bool
}

// checkSchema rejects types the text encoders cannot render.
func checkSchema(schema *arrow.Schema) error {
	if schema.NumFields() == 0 {
		return fmt.Errorf("schema has no columns")
	}
	for _, f := range schema.Fields() {
		switch t := f.Type.(type) {
		case *arrow.StringType, *arrow.Int16Type, *arrow.Int32Type, *arrow.Int64Type, *arrow.BooleanType,
			*arrow.Float32Type, *arrow.Float64Type, *arrow.Decimal128Type, *arrow.Date32Type:
		case *arrow.TimestampType:
			if t.Unit != arrow.Microsecond {
				return fmt.Errorf("column %q: timestamp unit %s is not supported (want us)", f.Name, t.Unit)
			}
		default:
			return fmt.Errorf("column %q: type %s is not supported", f.Name, f.Type)
		}
	}
	return nil
}

// bindColumns fills cols (reused between records) with renderers for rec.
func bindColumns(cols []textCol, rec arrow.Record) []textCol {
	cols = cols[:0]
	for _, a := range rec.Columns() {
		c := textCol{arr: a}
		switch a := a.(type) {
		case *array.String:
			c.str = a
		case *array.Int16:
			c.value = func(dst []byte, i int) []byte { return appendInt(dst, int64(a.Value(i))) }
		case *array.Int32:
			c.value = func(dst []byte, i int) []byte { return appendInt(dst, int64(a.Value(i))) }
		case *array.Int64:
			c.value = func(dst []byte, i int) []byte { return appendInt(dst, a.Value(i)) }
		case *array.Boolean:
			c.value = func(dst []byte, i int) []byte {
				if a.Value(i) {
					return append(dst, "true"...)
				}
				return append(dst, "false"...)
			}
		case *array.Float32:
			c.value = func(dst []byte, i int) []byte { return appendFloat(dst, float64(a.Value(i)), 32) }
			c.jsonNull = func(i int) bool { return !finite(float64(a.Value(i))) }
		case *array.Float64:
			c.value = func(dst []byte, i int) []byte { return appendFloat(dst, a.Value(i), 64) }
			c.jsonNull = func(i int) bool { return !finite(a.Value(i)) }
		case *array.Decimal128:
			scale := a.DataType().(*arrow.Decimal128Type).Scale
			c.value = func(dst []byte, i int) []byte { return appendDecimal(dst, a.Value(i), scale) }
		case *array.Timestamp:
			utc := a.DataType().(*arrow.TimestampType).TimeZone != ""
			c.value = func(dst []byte, i int) []byte { return appendTimestamp(dst, int64(a.Value(i)), utc) }
			c.quoted = true
		case *array.Date32:
			c.value = func(dst []byte, i int) []byte { return appendDate(dst, int64(a.Value(i))) }
			c.quoted = true
		}
		cols = append(cols, c)
	}
	return cols
}

func finite(f float64) bool { return f-f == 0 }

func appendInt(dst []byte, v int64) []byte { return strconv.AppendInt(dst, v, 10) }

// jsonSafe marks ASCII bytes that stand for themselves inside a JSON string.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for b := 0x20; b < utf8.RuneSelf; b++ {
		t[b] = b != '"' && b != '\\'
	}
	return t
}()

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string: no HTML escaping, U+2028 and
// U+2029 escaped (as encoding/json does), invalid UTF-8 replaced by U+FFFD.
func appendJSONString(dst []byte, s string) []byte {
	return append(appendJSONEscaped(append(dst, '"'), s), '"')
}

// appendJSONEscaped appends s escaped for the inside of a JSON string.
func appendJSONEscaped(dst []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if jsonSafe[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	return append(dst, s[start:]...)
}
