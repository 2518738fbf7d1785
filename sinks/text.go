package sinks

import (
	"math"
	"strconv"

	"github.com/apache/arrow/go/v17/arrow/decimal128"
)

const microsPerDay = 86400 * 1000000

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// civil converts days since 1970-01-01 to a proleptic Gregorian date
// (H. Hinnant's algorithm; valid for every int64 day count PostgreSQL has).
func civil(days int64) (year int64, month, day int) {
	z := days + 719468
	era := floorDiv(z, 146097)
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	year = yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	day = int(doy - (153*mp+2)/5 + 1)
	if mp < 10 {
		month = int(mp + 3)
	} else {
		month = int(mp - 9)
	}
	if month <= 2 {
		year++
	}
	return year, month, day
}

func append2(dst []byte, v int) []byte {
	return append(dst, byte('0'+v/10), byte('0'+v%10))
}

func appendYear(dst []byte, y int64) []byte {
	switch {
	case y >= 0 && y <= 9999:
		return append(dst, byte('0'+y/1000), byte('0'+y/100%10), byte('0'+y/10%10), byte('0'+y%10))
	case y > 9999:
		return strconv.AppendInt(append(dst, '+'), y, 10)
	default:
		s := strconv.AppendInt(nil, -y, 10)
		dst = append(dst, '-')
		for i := len(s); i < 4; i++ {
			dst = append(dst, '0')
		}
		return append(dst, s...)
	}
}

func appendDate(dst []byte, days int64) []byte {
	y, m, d := civil(days)
	dst = appendYear(dst, y)
	dst = append(dst, '-')
	dst = append2(dst, m)
	dst = append(dst, '-')
	return append2(dst, d)
}

// appendTimestamp appends micros since the Unix epoch as
// YYYY-MM-DDTHH:MM:SS.ffffff, followed by Z when utc.
func appendTimestamp(dst []byte, micros int64, utc bool) []byte {
	days := floorDiv(micros, microsPerDay)
	rem := micros - days*microsPerDay
	dst = appendDate(dst, days)
	secs := int(rem / 1000000)
	frac := int(rem % 1000000)
	dst = append(dst, 'T')
	dst = append2(dst, secs/3600)
	dst = append(dst, ':')
	dst = append2(dst, secs/60%60)
	dst = append(dst, ':')
	dst = append2(dst, secs%60)
	dst = append(dst, '.',
		byte('0'+frac/100000), byte('0'+frac/10000%10), byte('0'+frac/1000%10),
		byte('0'+frac/100%10), byte('0'+frac/10%10), byte('0'+frac%10))
	if utc {
		dst = append(dst, 'Z')
	}
	return dst
}

// appendDecimal appends n / 10^scale exactly, with scale fractional digits.
func appendDecimal(dst []byte, n decimal128.Num, scale int32) []byte {
	var digits []byte
	var buf [40]byte
	neg := n.Sign() < 0
	if neg {
		n = n.Negate()
	}
	if n.HighBits() == 0 {
		digits = strconv.AppendUint(buf[:0], n.LowBits(), 10)
	} else {
		digits = n.BigInt().Append(buf[:0], 10) // |n| < 2^127: never negative here
	}
	if neg {
		dst = append(dst, '-')
	}
	if scale <= 0 {
		dst = append(dst, digits...)
		for i := int32(0); i < -scale; i++ {
			dst = append(dst, '0')
		}
		return dst
	}
	s := int(scale)
	if len(digits) <= s {
		dst = append(dst, '0', '.')
		for i := len(digits); i < s; i++ {
			dst = append(dst, '0')
		}
		return append(dst, digits...)
	}
	dst = append(dst, digits[:len(digits)-s]...)
	dst = append(dst, '.')
	return append(dst, digits[len(digits)-s:]...)
}

// appendFloat appends f in the shortest form that reads back exactly;
// NaN and infinities as NaN, Infinity and -Infinity (PostgreSQL's spelling).
func appendFloat(dst []byte, f float64, bitSize int) []byte {
	switch {
	case math.IsNaN(f):
		return append(dst, "NaN"...)
	case math.IsInf(f, 1):
		return append(dst, "Infinity"...)
	case math.IsInf(f, -1):
		return append(dst, "-Infinity"...)
	}
	return strconv.AppendFloat(dst, f, 'g', -1, bitSize)
}
