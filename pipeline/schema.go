package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/sinks"
)

// SchemaName is the job's schema file, at the path's static prefix
// (sellers/new/schema.json).
const SchemaName = "schema.json"

// SchemaColumn is one output column as the schema fingerprint sees it.
type SchemaColumn struct {
	Name      string `json:"name"`
	Type      string `json:"type"`
	Nullable  bool   `json:"nullable"`
	Transform string `json:"transform,omitempty"`
}

// JobSchema is the content of schema.json: the job's current output
// schema and every earlier one.
type JobSchema struct {
	SchemaVersion int            `json:"schema_version"`
	Job           string         `json:"job"`
	Fingerprint   string         `json:"fingerprint"`
	Columns       []SchemaColumn `json:"columns"`
	// Since is the manifest of the first export with this schema.
	Since   string          `json:"since"`
	SinceAt time.Time       `json:"since_at"`
	History []SchemaHistory `json:"history"`
}

// SchemaHistory is an earlier schema of the job and the change that ended
// it.
type SchemaHistory struct {
	Fingerprint string         `json:"fingerprint"`
	Columns     []SchemaColumn `json:"columns"`
	Since       string         `json:"since"`
	Until       string         `json:"until"`
	Change      []string       `json:"change"`
}

// fingerprint is "sha256:" and the hex SHA-256 of the columns' canonical
// JSON.
func fingerprint(cols []SchemaColumn) string {
	b, _ := json.Marshal(cols)
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func schemaColumns(cols []ManifestColumn) []SchemaColumn {
	out := make([]SchemaColumn, len(cols))
	for i, c := range cols {
		out[i] = SchemaColumn{Name: c.Name, Type: c.Type, Nullable: c.Nullable, Transform: c.Transform}
	}
	return out
}

// schemaDiff describes, one line per column, how cols differs from old.
func schemaDiff(old, cols []SchemaColumn) []string {
	var diff []string
	oldBy := map[string]SchemaColumn{}
	for _, c := range old {
		oldBy[c.Name] = c
	}
	newBy := map[string]bool{}
	for _, c := range cols {
		newBy[c.Name] = true
		o, ok := oldBy[c.Name]
		switch {
		case !ok:
			diff = append(diff, fmt.Sprintf("+ %s %s", c.Name, describeColumn(c)))
		case o != c:
			diff = append(diff, fmt.Sprintf("~ %s: %s → %s", c.Name, describeColumn(o), describeColumn(c)))
		}
	}
	for _, c := range old {
		if !newBy[c.Name] {
			diff = append(diff, fmt.Sprintf("- %s %s", c.Name, describeColumn(c)))
		}
	}
	if len(diff) == 0 {
		diff = append(diff, "column order changed")
	}
	return diff
}

func describeColumn(c SchemaColumn) string {
	s := c.Type
	if !c.Nullable {
		s += " not null"
	}
	if c.Transform != "" {
		s += " (" + c.Transform + ")"
	}
	return s
}

// SchemaChangeError is an export stopped because the output schema
// differs from schema.json and the job says on_schema_change: fail.
type SchemaChangeError struct {
	Job, Key string
	Diff     []string
}

func (e *SchemaChangeError) Error() string {
	return fmt.Sprintf("job %s: the output schema differs from %s (on_schema_change: fail; set evolve to accept it):\n  %s",
		e.Job, e.Key, strings.Join(e.Diff, "\n  "))
}

// noRun matches no collection run: a query for it returns the columns an
// export would read, and no rows.
const noRun = "00000000-0000-0000-0000-000000000000"

// readSchema returns the job's schema.json, or nil if there is none.
func readSchema(ctx context.Context, bucket *sinks.Bucket, job *Job) (*JobSchema, error) {
	key := job.Layout.Schema()
	b, err := bucket.ReadAll(ctx, key)
	if sinks.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	var s JobSchema
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return &s, nil
}

// checkSchema compares the export's columns with schema.json before any
// data is written. It returns the change to record (nil when none), or a
// SchemaChangeError when the job does not accept changes.
func checkSchema(job *Job, current *JobSchema, cols []SchemaColumn, key string) ([]string, error) {
	if current == nil || current.Fingerprint == fingerprint(cols) {
		return nil, nil
	}
	diff := schemaDiff(current.Columns, cols)
	if job.onSchemaChange != config.SchemaEvolve {
		return nil, &SchemaChangeError{Job: job.Name, Key: key, Diff: diff}
	}
	return diff, nil
}

// recordSchema writes schema.json after a manifest with these columns was
// published: the first time, or when the schema evolved.
func recordSchema(ctx context.Context, bucket *sinks.Bucket, job *Job, current *JobSchema, m *Manifest, mkey string) error {
	cols := schemaColumns(m.Columns)
	fp := fingerprint(cols)
	if current != nil && current.Fingerprint == fp {
		return nil
	}
	next := &JobSchema{SchemaVersion: 1, Job: job.Name, Fingerprint: fp, Columns: cols, Since: mkey, SinceAt: m.ExportedAt, History: []SchemaHistory{}}
	if current != nil {
		next.History = append(current.History, SchemaHistory{Fingerprint: current.Fingerprint, Columns: current.Columns,
			Since: current.Since, Until: mkey, Change: schemaDiff(current.Columns, cols)})
	}
	b, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return err
	}
	return bucket.Put(ctx, job.Layout.Schema(), append(b, '\n'), "application/json", nil)
}
