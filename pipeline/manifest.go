package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// ManifestVersion is the version of the manifest format.
const ManifestVersion = 1

// ManifestName is the manifest's file name, in the folder of the files it
// lists. A run (or a full snapshot of an org) is exported if and only if
// its manifest exists.
const ManifestName = "manifest.json"

// Manifest describes one complete export. It is written last, after every
// file it lists was committed.
type Manifest struct {
	ManifestVersion int    `json:"manifest_version"`
	Job             string `json:"job"`
	Mode            string `json:"mode"`
	// RunID is the collection run (per_run jobs only).
	RunID string `json:"run_id,omitempty"`
	// OrgID is the org scope; "" for sellers without an org.
	OrgID string `json:"org_id"`
	// Date is the run's completed_at date (per_run) or the snapshot date
	// (full), in the job's time zone: the date in the keys.
	Date string `json:"date"`
	// DataAsOf is the date (job's time zone) the rows were read, when a
	// rerun of a full snapshot wrote it under an earlier Date
	// (rerun -allow-past): the files hold that day's data, not Date's.
	DataAsOf string `json:"data_as_of,omitempty"`
	// Rerun is true when `sellersnap rerun` wrote this export over
	// whatever was there.
	Rerun bool `json:"rerun,omitempty"`
	// RerunID names the reruns: entry (or rerun -id) that wrote this
	// export; a rerun that stopped half-way skips the units that carry it.
	RerunID string           `json:"rerun_id,omitempty"`
	Rows    int64            `json:"rows"`
	Columns []ManifestColumn `json:"columns"`
	// SchemaFingerprint identifies the output schema (names, types,
	// nullability, transforms); schema.json holds the job's current one.
	SchemaFingerprint string `json:"schema_fingerprint"`
	// SchemaChange lists how the schema changed from the job's previous
	// one, when this export evolved it.
	SchemaChange []string `json:"schema_change,omitempty"`
	// ConfigFingerprint identifies the job's settings that shaped the
	// files (columns, transforms, formats and their options, path, filter):
	// exports of one job with the same value were made alike.
	ConfigFingerprint string         `json:"config_fingerprint,omitempty"`
	Files             []ManifestFile `json:"files"`
	// Table is the Iceberg commit of this export, when the job has a
	// table: committed before the manifest was written.
	Table *ManifestTable `json:"table,omitempty"`
	// Snapshot says which database state the files hold.
	Snapshot   ManifestSnapshot `json:"snapshot"`
	ExportedAt time.Time        `json:"exported_at"`
	Tool       ManifestTool     `json:"tool"`
	Options    ManifestOptions  `json:"options"`
	// NulledValues counts values that became NULL because the file formats
	// cannot hold them (numeric NaN, infinite timestamps).
	NulledValues []sources.Nulled `json:"nulled_values"`
}

// ManifestTable is the Iceberg snapshot an export committed.
type ManifestTable struct {
	Catalog    string `json:"catalog"`
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	SnapshotID int64  `json:"snapshot_id"`
	// Operation is append (a new unit), overwrite (the unit's earlier
	// files replaced: a rerun, or an export repeated after a kill), delete
	// (an empty unit removed its partition's files) or none (an empty unit
	// the table did not hold: no snapshot; SnapshotID is the current one,
	// 0 for a table without snapshots).
	Operation string `json:"operation"`
	// DataFile is the table's data file of this unit (its own copy, with
	// the partition columns and field ids, at a key never reused); none
	// for an empty unit.
	DataFile string `json:"data_file,omitempty"`
	Rows     int64  `json:"rows"`
	Bytes    int64  `json:"bytes,omitempty"`
}

// ManifestColumn is one output column.
type ManifestColumn struct {
	Name     string `json:"name"`
	Source   string `json:"source"`
	Type     string `json:"type"`
	Nullable bool   `json:"nullable"`
	// Transform is "mask:hmac-sha256" or "redact" when the values are not
	// the source's.
	Transform string `json:"transform,omitempty"`
}

// ManifestFile is one data file.
type ManifestFile struct {
	Format string `json:"format"`
	// Part numbers the files of a format from 1 when the job splits its
	// output (max_rows_per_file, max_bytes_per_file); 0 otherwise.
	Part int `json:"part,omitempty"`
	// Columns lists the file's columns when the format writes a subset of
	// the manifest's columns (include/exclude); absent means all.
	Columns     []string `json:"columns,omitempty"`
	Key         string   `json:"key"`
	Rows        int64    `json:"rows"`
	Bytes       int64    `json:"bytes"`
	SHA256      string   `json:"sha256"`
	ContentType string   `json:"content_type"`
	Compression string   `json:"compression"`
}

// ManifestSnapshot identifies the database state exported.
type ManifestSnapshot struct {
	// RunStartedAt and RunCompletedAt are the run's times (per_run jobs).
	RunStartedAt   *time.Time `json:"run_started_at,omitempty"`
	RunCompletedAt *time.Time `json:"run_completed_at,omitempty"`
	// ReadAt is the start of the REPEATABLE READ transaction that read the
	// rows, by the database's clock.
	ReadAt time.Time `json:"read_at"`
	// Isolation is always "repeatable read, read only".
	Isolation string `json:"isolation"`
}

// ManifestTool names the exporter.
type ManifestTool struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// ManifestOptions are the settings that shaped the files.
type ManifestOptions struct {
	CSVFormulaGuard    bool   `json:"csv_formula_guard"`
	CSVDelimiter       string `json:"csv_delimiter"`
	CSVQuoteAll        bool   `json:"csv_quote_all"`
	CSVCompression     string `json:"csv_compression"`
	NDJSONCompression  string `json:"ndjson_compression"`
	ParquetCompression string `json:"parquet_compression"`
	Flagged            *bool  `json:"flagged"`
	Order              string `json:"order"`
}

func (m *Manifest) encode() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// readManifest reads the manifest at key.
func readManifest(ctx context.Context, bucket *sinks.Bucket, key string) (*Manifest, error) {
	data, err := bucket.ReadAll(ctx, key)
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return &m, nil
}
