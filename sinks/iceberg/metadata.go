package iceberg

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
)

// PartitionField is a field of a partition spec.
type PartitionField struct {
	Name      string `json:"name"`
	Transform string `json:"transform"`
	SourceID  int    `json:"source-id"`
	FieldID   int    `json:"field-id"`
}

// Spec is a partition spec.
type Spec struct {
	ID     int              `json:"spec-id"`
	Fields []PartitionField `json:"fields"`
}

// Snapshot is a snapshot of the table.
type Snapshot struct {
	ID           int64             `json:"snapshot-id"`
	ParentID     *int64            `json:"parent-snapshot-id,omitempty"`
	Sequence     int64             `json:"sequence-number"`
	TimestampMS  int64             `json:"timestamp-ms"`
	ManifestList string            `json:"manifest-list"`
	Summary      map[string]string `json:"summary"`
	SchemaID     *int              `json:"schema-id,omitempty"`
}

type snapshotLogEntry struct {
	TimestampMS int64 `json:"timestamp-ms"`
	SnapshotID  int64 `json:"snapshot-id"`
}

type metadataLogEntry struct {
	TimestampMS  int64  `json:"timestamp-ms"`
	MetadataFile string `json:"metadata-file"`
}

// Metadata is a table's metadata file (format version 2). Keys it does not
// model (statistics, partition-statistics, a foreign writer's additions)
// are kept as they are.
type Metadata struct {
	FormatVersion      int                        `json:"format-version"`
	TableUUID          string                     `json:"table-uuid"`
	Location           string                     `json:"location"`
	LastSequenceNumber int64                      `json:"last-sequence-number"`
	LastUpdatedMS      int64                      `json:"last-updated-ms"`
	LastColumnID       int                        `json:"last-column-id"`
	CurrentSchemaID    int                        `json:"current-schema-id"`
	Schemas            []*Schema                  `json:"schemas"`
	DefaultSpecID      int                        `json:"default-spec-id"`
	Specs              []Spec                     `json:"partition-specs"`
	LastPartitionID    int                        `json:"last-partition-id"`
	DefaultSortOrderID int                        `json:"default-sort-order-id"`
	SortOrders         json.RawMessage            `json:"sort-orders"`
	Properties         map[string]string          `json:"properties"`
	CurrentSnapshotID  *int64                     `json:"current-snapshot-id"`
	Snapshots          []*Snapshot                `json:"snapshots"`
	SnapshotLog        []snapshotLogEntry         `json:"snapshot-log"`
	MetadataLog        []metadataLogEntry         `json:"metadata-log"`
	Refs               map[string]json.RawMessage `json:"refs"`

	extra map[string]json.RawMessage
}

// modelled are the keys Metadata's fields hold.
var modelled = []string{"format-version", "table-uuid", "location", "last-sequence-number", "last-updated-ms",
	"last-column-id", "current-schema-id", "schemas", "default-spec-id", "partition-specs", "last-partition-id",
	"default-sort-order-id", "sort-orders", "properties", "current-snapshot-id", "snapshots", "snapshot-log",
	"metadata-log", "refs"}

// ParseMetadata reads a metadata file.
func ParseMetadata(b []byte) (*Metadata, error) {
	type plain Metadata
	var m plain
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("table metadata: %w", err)
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, fmt.Errorf("table metadata: %w", err)
	}
	for _, k := range modelled {
		delete(all, k)
	}
	md := Metadata(m)
	md.extra = all
	if md.FormatVersion != 2 {
		return nil, fmt.Errorf("table metadata: format version %d: sellersnap writes version 2 tables only", md.FormatVersion)
	}
	if md.CurrentSnapshotID != nil && *md.CurrentSnapshotID == -1 {
		md.CurrentSnapshotID = nil
	}
	return &md, nil
}

// Marshal encodes the metadata, the keys it does not model included.
func (m *Metadata) Marshal() ([]byte, error) {
	type plain Metadata
	c := *m
	if c.CurrentSnapshotID == nil {
		none := int64(-1) // what Java writes for an empty table; every reader takes it
		c.CurrentSnapshotID = &none
	}
	b, err := json.Marshal((*plain)(&c))
	if err != nil || len(m.extra) == 0 {
		return b, err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, err
	}
	maps.Copy(all, m.extra)
	return json.Marshal(all)
}

// Schema returns the current schema.
func (m *Metadata) Schema() *Schema {
	for _, s := range m.Schemas {
		if s.ID == m.CurrentSchemaID {
			return s
		}
	}
	return nil
}

// Spec returns the default partition spec.
func (m *Metadata) Spec() *Spec {
	for i := range m.Specs {
		if m.Specs[i].ID == m.DefaultSpecID {
			return &m.Specs[i]
		}
	}
	return nil
}

// Current returns the current snapshot, nil for an empty table.
func (m *Metadata) Current() *Snapshot {
	if m.CurrentSnapshotID == nil {
		return nil
	}
	return m.snapshot(*m.CurrentSnapshotID)
}

func (m *Metadata) snapshot(id int64) *Snapshot {
	for _, s := range m.Snapshots {
		if s.ID == id {
			return s
		}
	}
	return nil
}

// clone is a deep enough copy of m to change and write as the next
// version.
func (m *Metadata) clone() *Metadata {
	c := *m
	c.Schemas = slices.Clone(m.Schemas)
	c.Specs = slices.Clone(m.Specs)
	c.Properties = maps.Clone(m.Properties)
	c.Snapshots = slices.Clone(m.Snapshots)
	c.SnapshotLog = slices.Clone(m.SnapshotLog)
	c.MetadataLog = slices.Clone(m.MetadataLog)
	c.Refs = maps.Clone(m.Refs)
	c.extra = maps.Clone(m.extra)
	return &c
}

// setSchema makes s the current schema, adding it under a new id unless
// one of the schemas has the same columns.
func (m *Metadata) setSchema(s *Schema, lastColumnID int) {
	m.LastColumnID = max(m.LastColumnID, lastColumnID)
	for _, old := range m.Schemas {
		if sameColumns(old, s) {
			m.CurrentSchemaID = old.ID
			return
		}
	}
	next := 0
	for _, old := range m.Schemas {
		next = max(next, old.ID+1)
	}
	c := *s
	c.ID = next
	m.Schemas = append(m.Schemas, &c)
	m.CurrentSchemaID = next
}

// newMetadata is the metadata of a new table at location with schema s
// partitioned by spec, without snapshots.
func newMetadata(uuid, location string, s *Schema, lastColumnID int, spec Spec, props map[string]string, nowMS int64) *Metadata {
	last := 999
	for _, f := range spec.Fields {
		last = max(last, f.FieldID)
	}
	return &Metadata{
		FormatVersion: 2, TableUUID: uuid, Location: location, LastUpdatedMS: nowMS,
		LastColumnID: lastColumnID, CurrentSchemaID: s.ID, Schemas: []*Schema{s},
		DefaultSpecID: spec.ID, Specs: []Spec{spec}, LastPartitionID: last,
		SortOrders: json.RawMessage(`[{"order-id":0,"fields":[]}]`), Properties: props,
		Snapshots: []*Snapshot{}, SnapshotLog: []snapshotLogEntry{}, MetadataLog: []metadataLogEntry{},
		Refs: map[string]json.RawMessage{},
	}
}

// Contents is what md's current snapshot reads.
type Contents struct {
	Manifests int              // in its manifest list (data and delete)
	Live      map[string]int64 // its data files, with their record counts
	// AddedBy is the snapshot that added each live data file.
	AddedBy map[string]int64
	// Twice are the data files live in more than one entry (Table.Live
	// only: ReadContents fails on one).
	Twice []string
}

// ReadContents reads the manifest list and manifests of md's current
// snapshot with read (by location). A data file live twice is an error.
func ReadContents(md *Metadata, read func(loc string) ([]byte, error)) (*Contents, error) {
	return readContents(md, read, true)
}

func readContents(md *Metadata, read func(loc string) ([]byte, error), strict bool) (*Contents, error) {
	c := &Contents{Live: map[string]int64{}, AddedBy: map[string]int64{}}
	cur := md.Current()
	if cur == nil {
		return c, nil
	}
	b, err := read(cur.ManifestList)
	if err != nil {
		return nil, err
	}
	list, err := decodeManifestList(b)
	if err != nil {
		return nil, fmt.Errorf("manifest list %s: %w", cur.ManifestList, err)
	}
	c.Manifests = len(list)
	for _, mf := range list {
		if mf.Content != 0 {
			continue
		}
		b, err := read(mf.Path)
		if err != nil {
			return nil, err
		}
		entries, err := decodeManifest(b)
		if err != nil {
			return nil, fmt.Errorf("manifest %s: %w", mf.Path, err)
		}
		for _, e := range entries {
			if e.Status == statusDeleted {
				continue
			}
			if _, dup := c.Live[e.DataFile.FilePath]; dup {
				if strict {
					return nil, fmt.Errorf("data file %s is live twice", e.DataFile.FilePath)
				}
				c.Twice = append(c.Twice, e.DataFile.FilePath)
			}
			c.Live[e.DataFile.FilePath] = e.DataFile.RecordCount
			c.AddedBy[e.DataFile.FilePath] = mf.AddedSnapshotID
			if e.SnapshotID != nil {
				c.AddedBy[e.DataFile.FilePath] = *e.SnapshotID
			}
		}
	}
	return c, nil
}
