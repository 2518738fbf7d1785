package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/apache/arrow/go/v17/arrow"

	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sinks/iceberg"
)

// tableRecord is what a job remembers of its Iceberg table, in
// _sellersnap/<job>/table.json: which table it committed to (its
// table-uuid) and whether it committed data to it, so that a table
// dropped, replaced or emptied behind its back is never silently created
// again, or committed to as if it held the job's history
// (iceberg.GoneError). It is written by the job's first commit to a table
// (a table created before the record existed is adopted so), once more
// when the first data file goes in, and by repair-table.
type tableRecord struct {
	Catalog   string    `json:"catalog"`
	Namespace string    `json:"namespace"`
	Table     string    `json:"table"`
	Location  string    `json:"location"`
	UUID      string    `json:"table_uuid"`
	HeldData  bool      `json:"held_data"`
	Since     time.Time `json:"since"` // when the job first committed to this table
	// Repairing is set by repair-table while it rebuilds the table:
	// exports do not commit meanwhile (a kill leaves it: run it again).
	Repairing *tableRepairing `json:"repairing,omitempty"`
}

type tableRepairing struct {
	Started time.Time `json:"started"`
	Host    string    `json:"host,omitempty"`
}

func tableRecordKey(job *Job) string {
	return path.Join(job.Layout.Prefix(), "_sellersnap", job.Name, "table.json")
}

func readTableRecord(ctx context.Context, bucket *sinks.Bucket, job *Job) (*tableRecord, error) {
	key := tableRecordKey(job)
	b, err := bucket.ReadAll(ctx, key)
	if sinks.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	var rec tableRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%s: %w (repair-table writes it again)", key, err)
	}
	return &rec, nil
}

func writeTableRecord(ctx context.Context, bucket *sinks.Bucket, job *Job, rec *tableRecord) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := bucket.Put(ctx, tableRecordKey(job), append(b, '\n'), "application/json", nil); err != nil {
		return fmt.Errorf("write %s: %w", tableRecordKey(job), err)
	}
	return nil
}

// sameTable reports whether rec describes job's configured table.
func (rec *tableRecord) sameTable(job *Job) bool {
	c := job.table.cfg
	return rec.Catalog == c.Name && rec.Namespace == c.Namespace && rec.Table == c.Table
}

// repairHint is how an operator rebuilds a job's table from its manifests.
func repairHint(job *Job) string {
	return fmt.Sprintf("sellersnap repair-table -config <pipeline.yaml> -job %s rebuilds it from the manifests (docs/iceberg.md, \"Repairing the table\")", job.Name)
}

// expectTable is what job's commits expect of its table, from its record,
// or (without one: a job that never committed since records exist) from
// its newest manifests: any naming the table means the table must exist.
// rec is nil without a record for this table.
func (r *Runner) expectTable(ctx context.Context, job *Job) (*iceberg.Expect, *tableRecord, error) {
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return nil, nil, err
	}
	rec, err := readTableRecord(ctx, bucket, job)
	if err != nil {
		return nil, nil, err
	}
	if rec != nil && rec.sameTable(job) {
		if rec.Repairing != nil {
			return nil, nil, fmt.Errorf("a repair-table of job %s is rebuilding the table (started %s): exports commit once it is done; a repair-table that was killed leaves this, and is run again",
				job.Name, rec.Repairing.Started.Format(time.RFC3339))
		}
		return &iceberg.Expect{UUID: rec.UUID, HeldData: rec.HeldData}, rec, nil
	}
	ms, err := r.Recent(ctx, job, 4)
	if err != nil {
		return nil, nil, err
	}
	c := job.table.cfg
	for _, m := range ms {
		// A snapshot id says the table existed: an empty unit's commit to
		// a table nobody created yet made none (operation none, id 0).
		if t := m.Table; t != nil && t.SnapshotID != 0 && t.Catalog == c.Name && t.Namespace == c.Namespace && t.Name == c.Table {
			return &iceberg.Expect{}, nil, nil
		}
	}
	return nil, nil, nil
}

// tableLayout is the layout of job's commits for the output schema, with
// what they expect of the table.
func (r *Runner) tableLayout(ctx context.Context, job *Job, schema *arrow.Schema) (iceberg.Layout, *tableRecord, error) {
	l := job.table.layout(job, schema)
	exp, rec, err := r.expectTable(ctx, job)
	if err != nil {
		return l, nil, err
	}
	l.Expect = exp
	return l, rec, nil
}

// recordTable records the table a commit c of job went to, when the
// record does not say it yet (rec: the record the commit expected).
func (r *Runner) recordTable(ctx context.Context, bucket *sinks.Bucket, job *Job, tb *iceberg.Table, rec *tableRecord, c *iceberg.Commit) {
	if c.TableUUID == "" || rec != nil && (rec.HeldData || c.DataFile == "") {
		return
	}
	cfg := job.table.cfg
	next := &tableRecord{Catalog: cfg.Name, Namespace: cfg.Namespace, Table: cfg.Table, Location: tb.Location(),
		UUID: c.TableUUID, HeldData: c.DataFile != "", Since: time.Now().UTC()}
	if rec != nil {
		next.Since, next.HeldData = rec.Since, true
	}
	if err := writeTableRecord(ctx, bucket, job, next); err != nil {
		// The next commit writes it; meanwhile a dropped table is found
		// by the newest manifests.
		r.logger().Warn("could not record the job's table", "job", job.Name, "err", err)
	}
}

// tableErr is err of job's table as a TableError; a table gone says how
// to rebuild it.
func tableErr(job *Job, err error) error {
	var gone *iceberg.GoneError
	if errors.As(err, &gone) {
		err = fmt.Errorf("%w; it is not created or committed to again as it is (it would hold only the next units): %s", err, repairHint(job))
	}
	return &TableError{Job: job.Name, Err: err}
}
