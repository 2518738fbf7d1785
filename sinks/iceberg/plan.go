package iceberg

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/sellersnap/sellersnap/internal/keys"
)

// Layout is what the data files of a commit hold: the exported columns,
// then the partition columns, whose value is the same in a whole file.
type Layout struct {
	Columns   []Column
	Partition []Column // string or date32 columns, in the spec's order
	// Evolve accepts a table schema that differs from Columns (the job's
	// on_schema_change: evolve); otherwise a difference fails Prepare.
	Evolve bool
	// Expect is the table the writer committed to before; nil when it
	// never did (the table may then be created). A table missing,
	// replaced or emptied since fails Prepare and Commit (GoneError).
	Expect *Expect
}

// Expect is what a writer knows of the table it committed to.
type Expect struct {
	UUID string // its table-uuid
	// HeldData: one of the writer's commits added a data file to it.
	HeldData bool
}

// GoneError is a table that is no longer the one the writer committed
// to: missing from the catalog (dropped), replaced (another table-uuid),
// or emptied (no current snapshot, or one of another writer's without a
// data file). Creating it again, or committing to it as it is, would make
// a table that holds only the next units.
type GoneError struct {
	Table Ident
	Cause string
}

func (e *GoneError) Error() string { return fmt.Sprintf("iceberg table %s %s", e.Table, e.Cause) }

// checkIdentity fails with a GoneError when md (nil: no such table) is not
// the table want describes.
func checkIdentity(id Ident, md *Metadata, want *Expect) error {
	if want == nil {
		return nil
	}
	gone := func(format string, args ...any) error {
		return &GoneError{Table: id, Cause: fmt.Sprintf(format, args...)}
	}
	switch cur := (*Snapshot)(nil); {
	case md == nil:
		return gone("is not in the catalog (dropped?); this job committed to it (table-uuid %s)", want.UUID)
	case want.UUID != "" && md.TableUUID != want.UUID:
		return gone("was replaced: its table-uuid is %s, the table this job committed to is %s", md.TableUUID, want.UUID)
	case !want.HeldData:
	case md.CurrentSnapshotID == nil || *md.CurrentSnapshotID < 0:
		return gone("was emptied: it has no current snapshot, and this job committed data to it")
	default:
		if cur = md.Current(); cur == nil {
			return gone("is broken: its current snapshot %d is not in its metadata", *md.CurrentSnapshotID)
		}
		if cur.Summary["total-data-files"] == "0" && cur.Summary["sellersnap.job"] == "" {
			return gone("was emptied: its current snapshot %d (%s, not this job's) holds no data file", cur.ID, cur.Summary["operation"])
		}
	}
	return nil
}

// Plan is a prepared commit: the table schema and field ids the data
// file is written with.
type Plan struct {
	t      *Table
	layout Layout
	cols   []Column
	schema *Schema
	spec   Spec
	ptypes []string // Avro types of the spec's fields
	// Foreign are the table's columns the export does not have (another
	// writer's, or dropped from the job): kept in the schema, null in
	// the plan's data file.
	Foreign []Field
	exists  bool
}

// Exists reports whether the table was in the catalog when p was made.
func (p *Plan) Exists() bool { return p.exists }

// SchemaChangeError is a table schema that differs from the export's
// while the job does not accept schema changes.
type SchemaChangeError struct {
	Table  Ident
	Change string
}

func (e *SchemaChangeError) Error() string {
	return fmt.Sprintf("iceberg table %s: its schema differs from the export's (%s); on_schema_change: fail", e.Table, e.Change)
}

// Prepare reads the table's current metadata (if the table exists) and
// returns the plan of a commit of files laid out as l.
func (t *Table) Prepare(ctx context.Context, l Layout) (*Plan, error) {
	md, _, err := t.head(ctx)
	if err != nil {
		return nil, err
	}
	return t.plan(md, l)
}

func (t *Table) plan(md *Metadata, l Layout) (*Plan, error) {
	if err := checkIdentity(t.o.Ident, md, l.Expect); err != nil {
		return nil, err
	}
	cols := append(slices.Clone(l.Columns), l.Partition...)
	var cur *Schema
	last := 0
	if md != nil {
		cur, last = md.Schema(), md.LastColumnID
	}
	s, _, changed, foreign, err := evolve(cur, last, cols)
	if err != nil {
		return nil, fmt.Errorf("iceberg table %s: %w", t.o.Ident, err)
	}
	if (changed || len(foreign) > 0) && cur != nil && !l.Evolve {
		return nil, &SchemaChangeError{Table: t.o.Ident, Change: describeChange(cur, s, foreign)}
	}
	p := &Plan{t: t, layout: l, cols: cols, schema: s, Foreign: foreign, exists: md != nil}
	p.spec = Spec{ID: 0}
	for i, c := range l.Partition {
		f, _ := s.field(c.Name)
		at, err := avroPartitionType(f.typeKey())
		if err != nil {
			return nil, fmt.Errorf("iceberg table %s: %w", t.o.Ident, err)
		}
		p.ptypes = append(p.ptypes, at)
		p.spec.Fields = append(p.spec.Fields, PartitionField{Name: c.Name, Transform: "identity", SourceID: f.ID, FieldID: 1000 + i})
	}
	if md != nil {
		have := md.Spec()
		if have == nil || !sameSpec(*have, p.spec) {
			return nil, fmt.Errorf("iceberg table %s is partitioned by %s, the job's files by %s", t.o.Ident, describeSpec(have, md.Schema()), describeSpec(&p.spec, s))
		}
		p.spec = *have
	}
	return p, nil
}

func sameSpec(a, b Spec) bool {
	return slices.EqualFunc(a.Fields, b.Fields, func(x, y PartitionField) bool {
		return x.Name == y.Name && x.Transform == y.Transform && x.SourceID == y.SourceID
	})
}

func describeSpec(s *Spec, schema *Schema) string {
	if s == nil || len(s.Fields) == 0 {
		return "nothing"
	}
	var parts []string
	for _, f := range s.Fields {
		src := strconv.Itoa(f.SourceID)
		if schema != nil {
			for _, c := range schema.Fields {
				if c.ID == f.SourceID {
					src = c.Name
				}
			}
		}
		parts = append(parts, fmt.Sprintf("%s(%s)", f.Transform, src))
	}
	return strings.Join(parts, ", ")
}

func describeChange(old, s *Schema, foreign []Field) string {
	var d []string
	for _, f := range foreign {
		d = append(d, fmt.Sprintf("column %s %s (id %d) is the table's and not the export's: another writer added it, or the job no longer exports it; on_schema_change: evolve keeps it", f.Name, f.TypeName(), f.ID))
	}
	for _, f := range s.Fields {
		o, ok := old.field(f.Name)
		switch {
		case !ok:
			d = append(d, "+ "+f.Name+" "+f.TypeName())
		case o.ID != f.ID || o.typeKey() != f.typeKey():
			d = append(d, "~ "+f.Name+": "+o.TypeName()+" → "+f.TypeName())
		}
	}
	for _, f := range old.Fields {
		if _, ok := s.field(f.Name); !ok {
			d = append(d, "- "+f.Name)
		}
	}
	if len(d) == 0 {
		return "column order"
	}
	return strings.Join(d, "; ")
}

// DataKey is a new, unique key for a data file with partition values
// (in the layout's order): data/<col>=<value>/…/<uuid>.parquet.
func (p *Plan) DataKey(values []Value) string {
	segs := []string{p.t.o.KeyPrefix, "data"}
	for i, c := range p.layout.Partition {
		segs = append(segs, c.Name+"="+keys.Escape(partitionText(values[i])))
	}
	return path.Join(append(segs, uuid.NewString()+".parquet")...)
}

func partitionText(v Value) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case time.Time:
		return v.UTC().Format(time.DateOnly)
	}
	return fmt.Sprint(v)
}
