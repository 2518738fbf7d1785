package sinks

import (
	"strings"
	"testing"
)

// TestLargeValuesEncodeAsSmallOnes: values past flushAt are escaped in
// pieces straight through the buffer; the bytes must equal the whole-value
// path, with runes, quotes and invalid bytes at every piece boundary.
func TestLargeValuesEncodeAsSmallOnes(t *testing.T) {
	unit := `ab"c` + "\u00e9\u20ac\U0001D11E\u2028\n\r\t\\" + "\xff\xfe" + `"`
	var values []string
	for _, shift := range []int{0, 1, 2, 3, 5} {
		v := strings.Repeat("x", shift) + strings.Repeat(unit, 3*flushAt/len(unit)+7)
		values = append(values, v, "="+v, " "+v+" ", strings.Repeat("y", flushAt+shift))
	}
	for _, opts := range []CSVOptions{{FormulaGuard: true, Delimiter: ','}, {QuoteAll: true, Delimiter: ';'}} {
		c := &CSV{opts: opts}
		for _, b := range []byte{'"', '\r', '\n', opts.Delimiter} {
			c.quote[b] = true
		}
		for i, v := range values {
			want := string(c.appendText([]byte("prefix,"), v))
			var sink strings.Builder
			c.out = newTextOut(&sink, "csv")
			buf, err := c.appendLargeText(append(c.out.buf, "prefix,"...), v)
			if err != nil {
				t.Fatal(err)
			}
			c.out.buf = buf
			if err := c.out.close(); err != nil {
				t.Fatal(err)
			}
			if got := sink.String(); got != want {
				t.Errorf("csv %+v value %d: streamed %d bytes differ from whole (%d bytes)", opts, i, len(got), len(want))
			}
		}
	}
	for i, v := range values {
		want := string(appendJSONString([]byte(`{"a":`), v))
		var sink strings.Builder
		out := newTextOut(&sink, "ndjson")
		buf, err := out.appendLarge(append(out.buf, `{"a":"`...), v, appendJSONEscaped)
		if err != nil {
			t.Fatal(err)
		}
		out.buf = append(buf, '"')
		if err := out.close(); err != nil {
			t.Fatal(err)
		}
		if got := sink.String(); got != want {
			t.Errorf("ndjson value %d: streamed %d bytes differ from whole (%d bytes)", i, len(got), len(want))
		}
		if cap(out.buf) > 3*flushAt {
			t.Errorf("ndjson value %d: the buffer grew to %d bytes", i, cap(out.buf))
		}
	}
}
