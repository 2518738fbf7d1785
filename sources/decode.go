package sources

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/decimal128"
	"github.com/jackc/pgx/v5/pgtype"
)

// supportedTypes are the udt_names the exporter can decode.
var supportedTypes = []string{"text", "varchar", "bpchar", "name", "uuid", "json", "jsonb",
	"int2", "int4", "int8", "bool", "float4", "float8", "numeric", "timestamptz", "timestamp", "date"}

// SupportedType reports whether a column of this udt_name can be exported.
func SupportedType(udt string) bool { return slices.Contains(supportedTypes, udt) }

// TextType reports whether a column of this type name is exported as text
// (Arrow utf8) whatever its contents: the types a mask applies to.
func TextType(udt string) bool {
	return slices.Contains([]string{"text", "varchar", "bpchar", "name", "uuid", "json", "jsonb"}, udt)
}

// MaxDecimalPrecision is the largest numeric precision exported as an Arrow
// decimal; wider numerics are exported as exact text.
const MaxDecimalPrecision = 38

type kind int

const (
	kindText kind = iota
	kindJSONB
	kindUUID
	kindInt16
	kindInt32
	kindInt64
	kindBool
	kindFloat32
	kindFloat64
	kindDecimal
	kindNumericText
	kindTimestamp
	kindDate
)

// column decodes one result column from the binary wire format.
type column struct {
	name        string
	kind        kind
	typ         arrow.DataType
	nullable    bool
	scale       int
	precision   int
	appendValue func(v []byte) error
	nulled      map[string]int64
	builder     array.Builder
	str         *array.StringBuilder // set for string columns
	lastData    int                  // value bytes in the previous batch
}

const (
	pgEpochMicros = 946684800000000 // 2000-01-01 in Unix microseconds
	pgEpochDays   = 10957           // 2000-01-01 in Unix days
)

func newColumn(name string, oid uint32, typmod int32, nullable bool) (*column, error) {
	c := &column{name: name, nullable: nullable, nulled: map[string]int64{}}
	switch oid {
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID, pgtype.JSONOID:
		c.kind, c.typ = kindText, arrow.BinaryTypes.String
	case pgtype.JSONBOID:
		c.kind, c.typ = kindJSONB, arrow.BinaryTypes.String
	case pgtype.UUIDOID:
		c.kind, c.typ = kindUUID, arrow.BinaryTypes.String
	case pgtype.Int2OID:
		c.kind, c.typ = kindInt16, arrow.PrimitiveTypes.Int16
	case pgtype.Int4OID:
		c.kind, c.typ = kindInt32, arrow.PrimitiveTypes.Int32
	case pgtype.Int8OID:
		c.kind, c.typ = kindInt64, arrow.PrimitiveTypes.Int64
	case pgtype.BoolOID:
		c.kind, c.typ = kindBool, arrow.FixedWidthTypes.Boolean
	case pgtype.Float4OID:
		c.kind, c.typ = kindFloat32, arrow.PrimitiveTypes.Float32
	case pgtype.Float8OID:
		c.kind, c.typ = kindFloat64, arrow.PrimitiveTypes.Float64
	case pgtype.NumericOID:
		c.kind, c.typ = kindNumericText, arrow.BinaryTypes.String
		if typmod >= 4 {
			p := int((typmod - 4) >> 16 & 0xffff)
			s := int(int32((typmod-4)&0x7ff<<21) >> 21) // 11-bit signed (PostgreSQL 15+ allows negative scales)
			if p >= 1 && p <= MaxDecimalPrecision && s >= 0 && s <= p {
				c.kind, c.precision, c.scale = kindDecimal, p, s
				c.typ = &arrow.Decimal128Type{Precision: int32(p), Scale: int32(s)}
			}
		}
	case pgtype.TimestamptzOID:
		c.kind, c.typ = kindTimestamp, &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}
	case pgtype.TimestampOID:
		c.kind, c.typ = kindTimestamp, &arrow.TimestampType{Unit: arrow.Microsecond}
	case pgtype.DateOID:
		c.kind, c.typ = kindDate, arrow.FixedWidthTypes.Date32
	default:
		return nil, fmt.Errorf("column %q: type oid %d cannot be exported (supported: %v)", name, oid, supportedTypes)
	}
	return c, nil
}

var errLength = errors.New("malformed binary value")

// special records a value Arrow cannot hold: NULL plus a count, or an error
// in a NOT NULL column.
func (c *column) special(b array.Builder, reason string) error {
	if !c.nullable {
		return fmt.Errorf("value %s cannot be exported and the column is NOT NULL", reason)
	}
	c.nulled[reason]++
	b.AppendNull()
	return nil
}

func (c *column) bind(b array.Builder) {
	c.builder = b
	c.str, _ = b.(*array.StringBuilder)
	switch c.kind {
	case kindText, kindJSONB, kindUUID, kindNumericText:
		c.bindText(b.(*array.StringBuilder))
	case kindInt16, kindInt32, kindInt64, kindBool, kindFloat32, kindFloat64:
		c.bindFixed(b)
	case kindDecimal, kindTimestamp, kindDate:
		c.bindTemporal(b)
	}
}

// bindText decodes the kinds Arrow holds as strings.
func (c *column) bindText(sb *array.StringBuilder) {
	var buf []byte
	var ubuf [36]byte
	c.appendValue = func(v []byte) error {
		if v == nil {
			sb.AppendNull()
			return nil
		}
		switch c.kind {
		case kindJSONB:
			if len(v) == 0 || v[0] != 1 {
				return errors.New("unknown jsonb binary version")
			}
			v = v[1:]
		case kindUUID:
			if len(v) != 16 {
				return errLength
			}
			encodeUUID(ubuf[:], v)
			v = ubuf[:]
		case kindNumericText:
			n, err := parseNumeric(v)
			if err != nil {
				return err
			}
			buf = n.appendText(buf[:0])
			v = buf
		}
		if !utf8.Valid(v) {
			return errors.New("text is not valid UTF-8")
		}
		sb.BinaryBuilder.Append(v)
		return nil
	}
}

// bindFixed decodes the fixed-width numbers and booleans.
func (c *column) bindFixed(b array.Builder) {
	be := binary.BigEndian
	switch c.kind {
	case kindInt16:
		ib := b.(*array.Int16Builder)
		c.appendValue = func(v []byte) error {
			if v == nil {
				ib.AppendNull()
				return nil
			}
			if len(v) != 2 {
				return errLength
			}
			ib.Append(int16(be.Uint16(v)))
			return nil
		}
	case kindInt32:
		ib := b.(*array.Int32Builder)
		c.appendValue = func(v []byte) error {
			if v == nil {
				ib.AppendNull()
				return nil
			}
			if len(v) != 4 {
				return errLength
			}
			ib.Append(int32(be.Uint32(v)))
			return nil
		}
	case kindInt64:
		ib := b.(*array.Int64Builder)
		c.appendValue = func(v []byte) error {
			if v == nil {
				ib.AppendNull()
				return nil
			}
			if len(v) != 8 {
				return errLength
			}
			ib.Append(int64(be.Uint64(v)))
			return nil
		}
	case kindBool:
		bb := b.(*array.BooleanBuilder)
		c.appendValue = func(v []byte) error {
			if v == nil {
				bb.AppendNull()
				return nil
			}
			if len(v) != 1 {
				return errLength
			}
			bb.Append(v[0] != 0)
			return nil
		}
	case kindFloat32:
		fb := b.(*array.Float32Builder)
		c.appendValue = func(v []byte) error {
			if v == nil {
				fb.AppendNull()
				return nil
			}
			if len(v) != 4 {
				return errLength
			}
			fb.Append(math.Float32frombits(be.Uint32(v)))
			return nil
		}
	case kindFloat64:
		fb := b.(*array.Float64Builder)
		c.appendValue = func(v []byte) error {
			if v == nil {
				fb.AppendNull()
				return nil
			}
			if len(v) != 8 {
				return errLength
			}
			fb.Append(math.Float64frombits(be.Uint64(v)))
			return nil
		}
	}
}

// bindTemporal decodes decimals, timestamps and dates, which have values
// (NaN, infinities) Arrow cannot hold.
func (c *column) bindTemporal(b array.Builder) {
	be := binary.BigEndian
	switch c.kind {
	case kindDecimal:
		db := b.(*array.Decimal128Builder)
		c.appendValue = func(v []byte) error {
			if v == nil {
				db.AppendNull()
				return nil
			}
			n, err := parseNumeric(v)
			if err != nil {
				return err
			}
			if n.special != "" {
				return c.special(db, n.special)
			}
			num, err := n.decimal128(c.precision, c.scale)
			if err != nil {
				return err
			}
			db.Append(num)
			return nil
		}
	case kindTimestamp:
		tb := b.(*array.TimestampBuilder)
		c.appendValue = func(v []byte) error {
			if v == nil {
				tb.AppendNull()
				return nil
			}
			if len(v) != 8 {
				return errLength
			}
			switch t := int64(be.Uint64(v)); t {
			case math.MaxInt64:
				return c.special(tb, "infinity")
			case math.MinInt64:
				return c.special(tb, "-infinity")
			default:
				tb.Append(arrow.Timestamp(t + pgEpochMicros))
			}
			return nil
		}
	case kindDate:
		db := b.(*array.Date32Builder)
		c.appendValue = func(v []byte) error {
			if v == nil {
				db.AppendNull()
				return nil
			}
			if len(v) != 4 {
				return errLength
			}
			switch d := int32(be.Uint32(v)); d {
			case math.MaxInt32:
				return c.special(db, "infinity")
			case math.MinInt32:
				return c.special(db, "-infinity")
			default:
				db.Append(arrow.Date32(d + pgEpochDays))
			}
			return nil
		}
	}
}

// numeric is PostgreSQL's binary numeric: base-10000 digits, the weight of
// the first digit, a sign and the display scale.
type numeric struct {
	neg     bool
	special string // "NaN", "Infinity", "-Infinity" or ""
	weight  int
	dscale  int
	digits  []byte // big-endian uint16 base-10000 digits
}

func parseNumeric(v []byte) (numeric, error) {
	if len(v) < 8 {
		return numeric{}, errLength
	}
	be := binary.BigEndian
	nd := int(be.Uint16(v))
	n := numeric{weight: int(int16(be.Uint16(v[2:]))), dscale: int(be.Uint16(v[6:]))}
	if len(v) != 8+2*nd {
		return n, errLength
	}
	n.digits = v[8:]
	switch be.Uint16(v[4:]) {
	case 0x0000:
	case 0x4000:
		n.neg = true
	case 0xC000:
		n.special = "NaN"
	case 0xD000:
		n.special = "Infinity"
	case 0xF000:
		n.special = "-Infinity"
	default:
		return n, errors.New("malformed numeric sign")
	}
	return n, nil
}

func (n numeric) digit(i int) uint64 {
	if i < 0 || 2*i >= len(n.digits) {
		return 0
	}
	return uint64(binary.BigEndian.Uint16(n.digits[2*i:]))
}

var pow10 = func() (p [20]uint64) {
	p[0] = 1
	for i := 1; i < len(p); i++ {
		p[i] = p[i-1] * 10
	}
	return p
}()

// decimal128 returns n × 10^scale as an integer; it fails if n has more
// fractional digits than scale or more than precision digits in all.
func (n numeric) decimal128(precision, scale int) (decimal128.Num, error) {
	nd := len(n.digits) / 2
	fracDigits := 4 * (nd - 1 - n.weight) // fractional decimal digits the digit string holds
	shift := scale - fracDigits
	var acc uint64
	ok := true
	for i := 0; i < nd && ok; i++ {
		hi, lo := bits.Mul64(acc, 10000)
		lo, carry := bits.Add64(lo, n.digit(i), 0)
		acc, ok = lo, hi == 0 && carry == 0
	}
	if ok && nd > 0 {
		switch {
		case shift >= 0 && shift < len(pow10):
			hi, lo := bits.Mul64(acc, pow10[shift])
			acc, ok = lo, hi == 0
		case shift < 0 && -shift < len(pow10):
			if acc%pow10[-shift] != 0 {
				return decimal128.Num{}, fmt.Errorf("numeric has more than %d fractional digits", scale)
			}
			acc /= pow10[-shift]
		default:
			ok = false
		}
	}
	if ok && precision <= 19 {
		if acc >= pow10[precision] {
			return decimal128.Num{}, fmt.Errorf("numeric does not fit precision %d", precision)
		}
		num := decimal128.FromU64(acc)
		if n.neg {
			num = num.Negate()
		}
		return num, nil
	}
	// Slow path: arbitrary precision.
	v := new(big.Int)
	ten4 := big.NewInt(10000)
	for i := 0; i < nd; i++ {
		v.Mul(v, ten4).Add(v, new(big.Int).SetUint64(n.digit(i)))
	}
	ten := big.NewInt(10)
	if shift >= 0 {
		v.Mul(v, new(big.Int).Exp(ten, big.NewInt(int64(shift)), nil))
	} else {
		var rem big.Int
		v.QuoRem(v, new(big.Int).Exp(ten, big.NewInt(int64(-shift)), nil), &rem)
		if rem.Sign() != 0 {
			return decimal128.Num{}, fmt.Errorf("numeric has more than %d fractional digits", scale)
		}
	}
	if v.Cmp(new(big.Int).Exp(ten, big.NewInt(int64(precision)), nil)) >= 0 {
		return decimal128.Num{}, fmt.Errorf("numeric does not fit precision %d", precision)
	}
	if n.neg {
		v.Neg(v)
	}
	return decimal128.FromBigInt(v), nil
}

// appendText appends n as PostgreSQL prints it: exact, with dscale
// fractional digits.
func (n numeric) appendText(dst []byte) []byte {
	if n.special != "" {
		return append(dst, n.special...)
	}
	if n.neg {
		dst = append(dst, '-')
	}
	if n.weight < 0 {
		dst = append(dst, '0')
	} else {
		for g := 0; g <= n.weight; g++ {
			d := n.digit(g)
			if g == 0 {
				dst = strconv.AppendUint(dst, d, 10)
				continue
			}
			dst = appendPadded4(dst, d)
		}
	}
	if n.dscale > 0 {
		dst = append(dst, '.')
		for g, left := n.weight+1, n.dscale; left > 0; g++ {
			var four [4]byte
			appendPadded4(four[:0], n.digit(g))
			k := min(4, left)
			dst = append(dst, four[:k]...)
			left -= k
		}
	}
	return dst
}

func appendPadded4(dst []byte, d uint64) []byte {
	return append(dst, byte('0'+d/1000), byte('0'+d/100%10), byte('0'+d/10%10), byte('0'+d%10))
}
