package iceberg

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/apache/arrow/go/v17/arrow"
)

// Field is a column of a table schema. Type is the Iceberg type as it
// appears in the metadata JSON: a string for the primitive types sellersnap
// writes; a foreign writer's nested types are kept as they are.
type Field struct {
	ID       int             `json:"id"`
	Name     string          `json:"name"`
	Required bool            `json:"required"`
	Type     json.RawMessage `json:"type"`
	Doc      string          `json:"doc,omitempty"`
}

// TypeName is the field's primitive type name ("string", "decimal(9,2)"),
// or its JSON for a nested type.
func (f Field) TypeName() string {
	var s string
	if json.Unmarshal(f.Type, &s) == nil {
		return s
	}
	return string(f.Type)
}

// typeKey is the field's type by meaning: writers spell the same type
// differently (Java "decimal(9,2)", pyiceberg and iceberg-go
// "decimal(9, 2)", "fixed[16]" or "fixed[ 16 ]", any case), so types are
// compared without spaces and in lower case; a nested type's JSON is
// compared compacted.
func (f Field) typeKey() string { return typeKey(f.TypeName()) }

func typeKey(name string) string {
	var b bytes.Buffer
	if len(name) > 0 && (name[0] == '{' || name[0] == '[') && json.Compact(&b, []byte(name)) == nil {
		return b.String()
	}
	return strings.ToLower(strings.Join(strings.Fields(name), ""))
}

// Schema is a table schema.
type Schema struct {
	Type               string  `json:"type"`
	ID                 int     `json:"schema-id"`
	IdentifierFieldIDs []int   `json:"identifier-field-ids,omitempty"`
	Fields             []Field `json:"fields"`
}

// field returns the field named name.
func (s *Schema) field(name string) (Field, bool) {
	for _, f := range s.Fields {
		if f.Name == name {
			return f, true
		}
	}
	return Field{}, false
}

// sameColumns reports whether a and b have the same fields (ids, names,
// types by meaning, required), whatever their order and schema ids.
func sameColumns(a, b *Schema) bool {
	if len(a.Fields) != len(b.Fields) {
		return false
	}
	for _, x := range a.Fields {
		y, ok := b.field(x.Name)
		if !ok || x.ID != y.ID || x.Required != y.Required || x.typeKey() != y.typeKey() {
			return false
		}
	}
	return true
}

// typeOf is the Iceberg type of an Arrow type sellersnap exports.
func typeOf(t arrow.DataType) (string, error) {
	switch t := t.(type) {
	case *arrow.StringType:
		return "string", nil
	case *arrow.Int16Type, *arrow.Int32Type:
		return "int", nil // int16 is widened to int32 in the data files
	case *arrow.Int64Type:
		return "long", nil
	case *arrow.BooleanType:
		return "boolean", nil
	case *arrow.Float32Type:
		return "float", nil
	case *arrow.Float64Type:
		return "double", nil
	case *arrow.Decimal128Type:
		return fmt.Sprintf("decimal(%d,%d)", t.Precision, t.Scale), nil
	case *arrow.TimestampType:
		if t.Unit != arrow.Microsecond {
			return "", fmt.Errorf("timestamp unit %s: want microseconds", t.Unit)
		}
		if t.TimeZone != "" {
			return "timestamptz", nil
		}
		return "timestamp", nil
	case *arrow.Date32Type:
		return "date", nil
	}
	return "", fmt.Errorf("arrow type %s has no Iceberg type here", t)
}

// promotes reports whether an Iceberg column of type from may become to
// (the spec's allowed type promotions).
func promotes(from, to string) bool {
	from, to = typeKey(from), typeKey(to)
	if from == to {
		return true
	}
	switch {
	case from == "int" && to == "long", from == "float" && to == "double":
		return true
	}
	var p1, s1, p2, s2 int
	if n, _ := fmt.Sscanf(from, "decimal(%d,%d)", &p1, &s1); n == 2 {
		if n, _ := fmt.Sscanf(to, "decimal(%d,%d)", &p2, &s2); n == 2 {
			return s1 == s2 && p2 >= p1
		}
	}
	return false
}

// Column is a column of the data files: an exported column, or a
// partition column whose value is the same in every row of a file.
type Column struct {
	Name string
	Type arrow.DataType
}

// evolve returns the schema of cols given the table's current schema:
// a column keeps its field id while its type stays or promotes; a new
// column, or one whose type changed otherwise, gets a new id (for Iceberg
// the old column was dropped and a new one added). A column of cur that
// cols do not have (another writer added it, or the export dropped it)
// is kept as it is, optional: the data files do not hold it and readers
// read it as null; foreign lists them. lastID is the table's
// last-column-id; the result's is returned. changed is false when cur
// already is the schema.
func evolve(cur *Schema, lastID int, cols []Column) (s *Schema, last int, changed bool, foreign []Field, err error) {
	s = &Schema{Type: "struct"}
	last = lastID
	for _, c := range cols {
		name, err := typeOf(c.Type)
		if err != nil {
			return nil, 0, false, nil, fmt.Errorf("column %q: %w", c.Name, err)
		}
		typ, _ := json.Marshal(name)
		f := Field{Name: c.Name, Type: typ}
		if cur != nil {
			if old, ok := cur.field(c.Name); ok && promotes(old.typeKey(), name) {
				f.ID, f.Doc = old.ID, old.Doc
				if typeKey(name) == old.typeKey() {
					f.Type = old.Type // the other writer's spelling stays
				}
			}
		}
		if f.ID == 0 {
			last++
			f.ID = last
		}
		s.Fields = append(s.Fields, f)
	}
	if cur != nil {
		for _, f := range cur.Fields {
			if _, ok := s.field(f.Name); ok {
				continue
			}
			if f.Required {
				return nil, 0, false, nil, fmt.Errorf("column %q (id %d) is required in the table and not in the export: sellersnap's files cannot hold it; make it optional or remove it", f.Name, f.ID)
			}
			s.Fields = append(s.Fields, f)
			foreign = append(foreign, f)
		}
		for _, id := range cur.IdentifierFieldIDs {
			if slices.ContainsFunc(s.Fields, func(f Field) bool { return f.ID == id }) {
				s.IdentifierFieldIDs = append(s.IdentifierFieldIDs, id)
			}
		}
	}
	if cur != nil && sameColumns(cur, s) {
		return cur, lastID, false, foreign, nil
	}
	if cur != nil {
		s.ID = cur.ID + 1
	}
	return s, last, true, foreign, nil
}

// FieldIDKey is the Arrow field metadata key pqarrow writes as the Parquet
// field_id, which Iceberg readers use to find a column.
const FieldIDKey = "PARQUET:field_id"

// arrowSchema is the data files' Arrow schema for s (which has a field
// of each of cols' names): each field carries its Iceberg field id.
func arrowSchema(s *Schema, cols []Column) *arrow.Schema {
	fields := make([]arrow.Field, len(cols))
	for i, c := range cols {
		t := c.Type
		if t.ID() == arrow.INT16 {
			t = arrow.PrimitiveTypes.Int32
		}
		f, _ := s.field(c.Name)
		fields[i] = arrow.Field{Name: c.Name, Type: t, Nullable: true,
			Metadata: arrow.NewMetadata([]string{FieldIDKey}, []string{strconv.Itoa(f.ID)})}
	}
	return arrow.NewSchema(fields, nil)
}
