package iceberg

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/hamba/avro/v2/ocf"
)

// Manifest entry status.
const (
	statusExisting = 0
	statusAdded    = 1
	statusDeleted  = 2
)

type kvLong struct {
	Key   int32 `avro:"key"`
	Value int64 `avro:"value"`
}

type kvBytes struct {
	Key   int32  `avro:"key"`
	Value []byte `avro:"value"`
}

// dataFile is a manifest entry's data_file (v2): every field, so that an
// entry read from a foreign writer's manifest is carried over whole.
type dataFile struct {
	Content         int32          `avro:"content"`
	FilePath        string         `avro:"file_path"`
	FileFormat      string         `avro:"file_format"`
	Partition       map[string]any `avro:"partition"`
	RecordCount     int64          `avro:"record_count"`
	FileSize        int64          `avro:"file_size_in_bytes"`
	ColumnSizes     *[]kvLong      `avro:"column_sizes"`
	ValueCounts     *[]kvLong      `avro:"value_counts"`
	NullValueCounts *[]kvLong      `avro:"null_value_counts"`
	NaNValueCounts  *[]kvLong      `avro:"nan_value_counts"`
	LowerBounds     *[]kvBytes     `avro:"lower_bounds"`
	UpperBounds     *[]kvBytes     `avro:"upper_bounds"`
	KeyMetadata     *[]byte        `avro:"key_metadata"`
	SplitOffsets    *[]int64       `avro:"split_offsets"`
	EqualityIDs     *[]int32       `avro:"equality_ids"`
	SortOrderID     *int32         `avro:"sort_order_id"`
}

type entry struct {
	Status       int32    `avro:"status"`
	SnapshotID   *int64   `avro:"snapshot_id"`
	Sequence     *int64   `avro:"sequence_number"`
	FileSequence *int64   `avro:"file_sequence_number"`
	DataFile     dataFile `avro:"data_file"`
}

type fieldSummary struct {
	ContainsNull bool    `avro:"contains_null"`
	ContainsNaN  *bool   `avro:"contains_nan"`
	Lower        *[]byte `avro:"lower_bound"`
	Upper        *[]byte `avro:"upper_bound"`
}

// manifestFile is an entry of a manifest list.
type manifestFile struct {
	Path            string          `avro:"manifest_path"`
	Length          int64           `avro:"manifest_length"`
	SpecID          int32           `avro:"partition_spec_id"`
	Content         int32           `avro:"content"`
	Sequence        int64           `avro:"sequence_number"`
	MinSequence     int64           `avro:"min_sequence_number"`
	AddedSnapshotID int64           `avro:"added_snapshot_id"`
	AddedFiles      int32           `avro:"added_files_count"`
	ExistingFiles   int32           `avro:"existing_files_count"`
	DeletedFiles    int32           `avro:"deleted_files_count"`
	Partitions      *[]fieldSummary `avro:"partitions"`
	AddedRows       int64           `avro:"added_rows_count"`
	ExistingRows    int64           `avro:"existing_rows_count"`
	DeletedRows     int64           `avro:"deleted_rows_count"`
	KeyMetadata     *[]byte         `avro:"key_metadata"`
}

const manifestListSchema = `{"type":"record","name":"manifest_file","fields":[
{"name":"manifest_path","type":"string","field-id":500},
{"name":"manifest_length","type":"long","field-id":501},
{"name":"partition_spec_id","type":"int","field-id":502},
{"name":"content","type":"int","field-id":517},
{"name":"sequence_number","type":"long","field-id":515},
{"name":"min_sequence_number","type":"long","field-id":516},
{"name":"added_snapshot_id","type":"long","field-id":503},
{"name":"added_files_count","type":"int","field-id":504},
{"name":"existing_files_count","type":"int","field-id":505},
{"name":"deleted_files_count","type":"int","field-id":506},
{"name":"added_rows_count","type":"long","field-id":512},
{"name":"existing_rows_count","type":"long","field-id":513},
{"name":"deleted_rows_count","type":"long","field-id":514},
{"name":"partitions","type":["null",{"type":"array","items":{"type":"record","name":"r508","fields":[
  {"name":"contains_null","type":"boolean","field-id":509},
  {"name":"contains_nan","type":["null","boolean"],"field-id":518},
  {"name":"lower_bound","type":["null","bytes"],"field-id":510},
  {"name":"upper_bound","type":["null","bytes"],"field-id":511}]},"element-id":508}],"default":null,"field-id":507},
{"name":"key_metadata","type":["null","bytes"],"default":null,"field-id":519}]}`

// manifestEntrySchema is the manifest entry schema (v2) for a partition
// spec whose fields have Avro types partTypes.
func manifestEntrySchema(spec Spec, partTypes []string) string {
	var part strings.Builder
	for i, f := range spec.Fields {
		if i > 0 {
			part.WriteByte(',')
		}
		name, _ := json.Marshal(f.Name)
		fmt.Fprintf(&part, `{"name":%s,"type":["null",%s],"default":null,"field-id":%d}`, name, partTypes[i], f.FieldID)
	}
	kv := func(name string, id, kid, vid int, vtype string) string {
		return fmt.Sprintf(`{"name":%q,"type":["null",{"type":"array","logicalType":"map","items":{"type":"record","name":"k%d_v%d","fields":[
{"name":"key","type":"int","field-id":%d},{"name":"value","type":%q,"field-id":%d}]}}],"default":null,"field-id":%d}`,
			name, kid, vid, kid, vtype, vid, id)
	}
	return `{"type":"record","name":"manifest_entry","fields":[
{"name":"status","type":"int","field-id":0},
{"name":"snapshot_id","type":["null","long"],"default":null,"field-id":1},
{"name":"sequence_number","type":["null","long"],"default":null,"field-id":3},
{"name":"file_sequence_number","type":["null","long"],"default":null,"field-id":4},
{"name":"data_file","type":{"type":"record","name":"r2","fields":[
{"name":"content","type":"int","field-id":134},
{"name":"file_path","type":"string","field-id":100},
{"name":"file_format","type":"string","field-id":101},
{"name":"partition","type":{"type":"record","name":"r102","fields":[` + part.String() + `]},"field-id":102},
{"name":"record_count","type":"long","field-id":103},
{"name":"file_size_in_bytes","type":"long","field-id":104},
` + kv("column_sizes", 108, 117, 118, "long") + `,
` + kv("value_counts", 109, 119, 120, "long") + `,
` + kv("null_value_counts", 110, 121, 122, "long") + `,
` + kv("nan_value_counts", 137, 138, 139, "long") + `,
` + kv("lower_bounds", 125, 126, 127, "bytes") + `,
` + kv("upper_bounds", 128, 129, 130, "bytes") + `,
{"name":"key_metadata","type":["null","bytes"],"default":null,"field-id":131},
{"name":"split_offsets","type":["null",{"type":"array","items":"long","element-id":133}],"default":null,"field-id":132},
{"name":"equality_ids","type":["null",{"type":"array","items":"int","element-id":136}],"default":null,"field-id":135},
{"name":"sort_order_id","type":["null","int"],"default":null,"field-id":140}]},"field-id":2}]}`
}

// avroPartitionType is the Avro type of a partition field whose source
// column has Iceberg type typ (identity transform).
func avroPartitionType(typ string) (string, error) {
	switch typ {
	case "string":
		return `"string"`, nil
	case "date":
		return `{"type":"int","logicalType":"date"}`, nil
	}
	return "", fmt.Errorf("partition column of type %s: sellersnap partitions by string and date columns", typ)
}

// codec compresses manifests and manifest lists: deflate, as Java writes
// them (write.avro.compression-codec's default, gzip, is deflate in Avro).
var codec = ocf.WithCodec(ocf.Deflate)

// fullSchema writes the schema into the file's header whole: readers find
// the columns by their field-id and element-id properties, which the
// default (canonical) form drops.
var fullSchema = ocf.WithSchemaMarshaler(ocf.FullSchemaMarshaler)

// listSchema is manifestListSchema, parsed once.
var listSchema = avro.MustParse(manifestListSchema)

// encodeOCF writes items as an Avro object container file with schema s
// (written whole into the header) and the header's metadata; name says
// which item failed.
func encodeOCF[T any](s avro.Schema, meta map[string][]byte, items []T, name func(*T) string) ([]byte, error) {
	var buf bytes.Buffer
	enc, err := ocf.NewEncoderWithSchema(s, &buf, codec, fullSchema, ocf.WithMetadata(meta))
	if err != nil {
		return nil, err
	}
	for i := range items {
		if err := enc.Encode(&items[i]); err != nil {
			return nil, fmt.Errorf("%s: %w", name(&items[i]), err)
		}
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// decodeOCF reads the items of an Avro object container file, whatever
// schema its writer used (fields are matched by name).
func decodeOCF[T any](b []byte) ([]T, error) {
	dec, err := ocf.NewDecoder(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	var out []T
	for dec.HasNext() {
		var v T
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, dec.Error()
}

// encodeManifest writes the entries of one manifest for spec and schema.
func encodeManifest(spec Spec, partTypes []string, schema *Schema, entries []entry) ([]byte, error) {
	s, err := avro.Parse(manifestEntrySchema(spec, partTypes))
	if err != nil {
		return nil, fmt.Errorf("manifest schema: %w", err)
	}
	sj, err := json.Marshal(schema)
	if err != nil {
		return nil, err
	}
	pj, err := json.Marshal(spec.Fields)
	if err != nil {
		return nil, err
	}
	return encodeOCF(s, map[string][]byte{
		"schema": sj, "schema-id": []byte(strconv.Itoa(schema.ID)),
		"partition-spec": pj, "partition-spec-id": []byte(strconv.Itoa(spec.ID)),
		"format-version": []byte("2"), "content": []byte("data"),
	}, entries, func(e *entry) string { return "manifest entry " + e.DataFile.FilePath })
}

// decodeManifest reads a manifest's entries.
func decodeManifest(b []byte) ([]entry, error) { return decodeOCF[entry](b) }

// encodeManifestList writes a snapshot's manifest list.
func encodeManifestList(snap *Snapshot, files []manifestFile) ([]byte, error) {
	meta := map[string][]byte{
		"snapshot-id": []byte(strconv.FormatInt(snap.ID, 10)), "sequence-number": []byte(strconv.FormatInt(snap.Sequence, 10)),
		"format-version": []byte("2"), "parent-snapshot-id": []byte("null"),
	}
	if snap.ParentID != nil {
		meta["parent-snapshot-id"] = []byte(strconv.FormatInt(*snap.ParentID, 10))
	}
	return encodeOCF(listSchema, meta, files, func(m *manifestFile) string { return "manifest list entry " + m.Path })
}

// decodeManifestList reads a manifest list.
func decodeManifestList(b []byte) ([]manifestFile, error) { return decodeOCF[manifestFile](b) }

// Value is a partition value: a string, a date (time.Time at UTC
// midnight) or nil.
type Value = any

// valueKey is v in a form that compares equal for equal values.
func valueKey(v Value) string {
	switch v := v.(type) {
	case nil:
		return "\x00null"
	case time.Time:
		return "d:" + v.UTC().Format(time.DateOnly)
	case string:
		return "s:" + v
	case int32: // a date read without its logical type
		return "d:" + time.Unix(int64(v)*86400, 0).UTC().Format(time.DateOnly)
	}
	return fmt.Sprintf("?:%v", v)
}

// bound is v serialised as the spec's single-value binary form.
func bound(v Value) []byte {
	switch v := v.(type) {
	case time.Time:
		return binary.LittleEndian.AppendUint32(nil, uint32(int32(v.UTC().Unix()/86400)))
	case string:
		return []byte(v)
	}
	return nil
}

// within reports whether v may be among the values a summary describes.
func within(s fieldSummary, v Value) bool {
	if v == nil {
		return s.ContainsNull
	}
	if s.Lower == nil || s.Upper == nil {
		return true
	}
	b := bound(v)
	if _, ok := v.(time.Time); ok && len(*s.Lower) == 4 && len(*s.Upper) == 4 {
		x := int32(binary.LittleEndian.Uint32(b))
		return int32(binary.LittleEndian.Uint32(*s.Lower)) <= x && x <= int32(binary.LittleEndian.Uint32(*s.Upper))
	}
	return bytes.Compare(*s.Lower, b) <= 0 && bytes.Compare(b, *s.Upper) <= 0
}
