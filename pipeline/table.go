package pipeline

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/apache/arrow/go/v17/arrow"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/internal/failpoint"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sinks/iceberg"
)

// HasTable reports whether the job commits to an Iceberg table.
func (j *Job) HasTable() bool { return j.table != nil }

// tableSpec is a job's Iceberg table: where it is and which of the
// path's folders (name={placeholder}) become its partition columns.
type tableSpec struct {
	cfg   config.Iceberg
	parts []tablePart
}

// tablePart is a partition column: a folder name=value of the job's
// path, as a Hive-partitioned reader of the files sees it.
type tablePart struct {
	name, placeholder string
	date              bool
}

var hiveFolder = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)=\{([a-z0-9_]+)\}$`)

// newTableSpec derives the table's partition columns from the path's
// folders; they must identify a unit (a run: {run_id}; a full snapshot:
// {org_id} and {date}), since a commit replaces its partition.
func newTableSpec(j *config.Job, outputs []string) (*tableSpec, error) {
	ts := &tableSpec{cfg: *j.Iceberg}
	dirs := strings.Split(j.Path, "/")
	has := map[string]bool{}
	for _, d := range dirs[:len(dirs)-1] {
		m := hiveFolder.FindStringSubmatch(d)
		if m == nil {
			continue
		}
		for _, o := range outputs {
			if o == m[1] {
				return nil, fmt.Errorf("job %s: iceberg: the path's folder %s= names the partition column %q, which is also an exported column; rename one (columns: {name, as})", j.Name, m[1], m[1])
			}
		}
		ts.parts = append(ts.parts, tablePart{name: m[1], placeholder: m[2], date: m[2] == "date" || m[2] == "run_date"})
		has[m[2]] = true
	}
	need := []string{"run_id"}
	if j.Mode == config.ModeFull {
		need = []string{"org_id", "date"}
	}
	for _, p := range need {
		if !has[p] {
			return nil, fmt.Errorf("job %s: iceberg: the path needs a folder name={%s} (e.g. %s): the table is partitioned by the path's name={placeholder} folders, and they must identify the unit a commit replaces",
				j.Name, p, map[string]string{"run_id": "run={run_id}", "org_id": "org={org_id}", "date": "date={date}"}[p])
		}
	}
	return ts, nil
}

// layout is the table's data file layout for the output schema.
func (ts *tableSpec) layout(job *Job, schema *arrow.Schema) iceberg.Layout {
	l := iceberg.Layout{Evolve: job.onSchemaChange == config.SchemaEvolve}
	for _, f := range schema.Fields() {
		l.Columns = append(l.Columns, iceberg.Column{Name: f.Name, Type: f.Type})
	}
	for _, p := range ts.parts {
		t := arrow.DataType(arrow.BinaryTypes.String)
		if p.date {
			t = arrow.FixedWidthTypes.Date32
		}
		l.Partition = append(l.Partition, iceberg.Column{Name: p.name, Type: t})
	}
	return l
}

// values are u's partition values.
func (ts *tableSpec) values(u unit) ([]iceberg.Value, error) {
	var vs []iceberg.Value
	for _, p := range ts.parts {
		v := u.values[p.placeholder]
		if !p.date {
			vs = append(vs, v)
			continue
		}
		d, err := time.Parse(time.DateOnly, v)
		if err != nil {
			return nil, fmt.Errorf("iceberg: partition %s: %w", p.name, err)
		}
		vs = append(vs, d)
	}
	return vs, nil
}

// tableLocation is where readers find the table at key prefix of a
// bucket whose URL (sinks.Bucket.URL: file:// made absolute, credentials
// hidden, prefix= and storage_account= kept) is bucketURL: the same
// storage named as Iceberg readers name it.
func tableLocation(bucketURL, prefix string) (string, error) {
	u, err := url.Parse(bucketURL)
	if err != nil {
		return "", err
	}
	if p := strings.Trim(u.Query().Get("prefix"), "/"); p != "" {
		prefix = p + "/" + prefix
	}
	switch u.Scheme {
	case "s3", "gs":
		return u.Scheme + "://" + u.Host + "/" + prefix, nil
	case "azblob":
		account := u.Query().Get("storage_account")
		if account == "" {
			account = os.Getenv("AZURE_STORAGE_ACCOUNT")
		}
		if account == "" { // as gocloud's azureblob finds it in a connection string
			for _, kv := range strings.Split(os.Getenv("AZURE_STORAGE_CONNECTION_STRING"), ";") {
				if v, ok := strings.CutPrefix(kv, "AccountName="); ok {
					account = v
				}
			}
		}
		if account == "" {
			return "", errors.New("an azblob:// destination needs the storage account (AZURE_STORAGE_ACCOUNT) for the table's abfss:// location")
		}
		return "abfss://" + u.Host + "@" + account + ".dfs.core.windows.net/" + prefix, nil
	case "file":
		return "file://" + strings.TrimRight(u.Path, "/") + "/" + prefix, nil
	case "mem":
		return "mem://" + prefix, nil
	}
	return "", fmt.Errorf("no Iceberg location for %s:// buckets", u.Scheme)
}

// TableError is a failure of the job's Iceberg table: its catalog, its
// metadata, a commit. The export fails with it (no manifest) and is done
// again.
type TableError struct {
	Job string
	Err error
}

func (e *TableError) Error() string { return fmt.Sprintf("iceberg table of job %s: %v", e.Job, e.Err) }
func (e *TableError) Unwrap() error { return e.Err }

// tableWrite is a unit's data file of the job's table, written by the
// stages beside the formats and committed by the publisher.
type tableWrite struct {
	tb        *iceberg.Table
	rec       *tableRecord // what the job recorded of the table; nil: nothing yet
	plan      *iceberg.Plan
	obj       *sinks.Object
	enc       *iceberg.Encoder
	values    []iceberg.Value
	rows      int64
	committed bool // to the bucket
	// tried: the catalog commit was attempted; the data file may be the
	// table's now and is never removed after that.
	tried bool
}

func (a *attempt) openTable(ctx context.Context, schema *arrow.Schema) (*tableWrite, error) {
	r, bucket, u := a.r, a.bucket, a.u
	job := u.job
	tb, err := r.table(ctx, job)
	if err != nil {
		return nil, tableErr(job, err)
	}
	layout, rec, err := r.tableLayout(ctx, job, schema)
	if err != nil {
		return nil, tableErr(job, err)
	}
	plan, err := tb.Prepare(ctx, layout)
	if err != nil {
		return nil, tableErr(job, err)
	}
	values, err := job.table.values(u)
	if err != nil {
		return nil, err
	}
	obj, err := bucket.NewObject(ctx, plan.DataKey(values), "application/vnd.apache.parquet")
	if err != nil {
		return nil, err
	}
	var enc *iceberg.Encoder
	err = guard(func() error {
		var err error
		enc, err = plan.NewEncoder(obj, values, sinks.ParquetOptions{Compression: job.options.ParquetCompression})
		return err
	})
	if err != nil {
		obj.Abort()
		return nil, fmt.Errorf("iceberg: start %s: %w", obj.Key(), cause(err, obj))
	}
	return &tableWrite{tb: tb, rec: rec, plan: plan, obj: obj, enc: enc, values: values}, nil
}

// Write encodes a record of the unit into the table's data file.
func (w *tableWrite) Write(rec arrow.Record) error {
	err := guard(func() error { return w.enc.Write(rec) })
	if _, ok := err.(*PanicError); ok {
		return fmt.Errorf("iceberg: %w", cause(err, w.obj))
	}
	if err != nil {
		return fmt.Errorf("iceberg: write %s: %w", w.obj.Key(), err)
	}
	w.rows += rec.NumRows()
	return nil
}

// Close finishes the data file and makes its bytes durable.
func (w *tableWrite) Close() error {
	if err := guard(w.enc.Close); err != nil {
		return fmt.Errorf("iceberg: finish %s: %w", w.obj.Key(), cause(err, w.obj))
	}
	return w.obj.Sync()
}

// upload commits the data file to the bucket (at its own new key: no
// reader sees it before the table commit names it). An empty unit adds no
// file to the table (readers plan none); its commit only removes what its
// partition held.
func (w *tableWrite) upload(ctx context.Context) error {
	if w.committed || w.rows == 0 {
		w.obj.Abort()
		return nil
	}
	if err := w.obj.Commit(); err != nil {
		return err
	}
	w.committed = true
	return nil
}

// commitTable commits the data file to the bucket, then to the table (a
// new snapshot replacing the unit's partition, its summary naming the
// attempt), and records the snapshot in m. A commit whose outcome is
// unknown (the catalog's COMMIT unanswered) is looked for in the table: if
// it is there it succeeded; if the table cannot be read either, w.tried
// stays set and the data file is kept, as the table may name it.
func (a *attempt) commitTable(ctx context.Context, m *Manifest) error {
	w, u := a.table, a.u
	if err := u.stillHeld(ctx); err != nil {
		return err
	}
	if err := w.upload(ctx); err != nil {
		return err
	}
	failpoint.Hit("before-table-commit")
	if err := u.stillHeld(ctx); err != nil {
		return err
	}
	props := map[string]string{"sellersnap.job": u.job.Name, "sellersnap.version": cmp.Or(a.r.Version, "dev"), "sellersnap.unit": u.lockKey(), attemptProp: a.id}
	if u.rerunID != "" {
		props["sellersnap.rerun-id"] = u.rerunID
	}
	w.tried = true
	c, err := w.plan.Commit(ctx, iceberg.DataFile{Key: w.obj.Key(), Bytes: w.obj.Size(), Rows: w.rows, Values: w.values}, props)
	if errors.Is(err, iceberg.ErrOutcomeUnknown) {
		found, ferr := a.findCommit(ctx, m, w.obj.Key(), w.rows, w.obj.Size())
		switch {
		case ferr != nil:
			a.r.observer().TableCommitted(u.job.Name, commitFailure(err))
			return &TableError{Job: u.job.Name, Err: fmt.Errorf("%w; looking for it in the table: %w", err, ferr)}
		case found:
			a.r.logger().Warn("the table commit's answer was lost; the table holds it", append(u.logAttrs(), "err", err)...)
			a.r.observer().TableCommitted(u.job.Name, "")
			return nil
		}
	}
	if err != nil {
		w.tried = false // not the table's: its data file may go
		a.r.observer().TableCommitted(u.job.Name, commitFailure(err))
		return tableErr(u.job, err)
	}
	a.r.recordTable(ctx, a.bucket, u.job, w.tb, w.rec, c)
	failpoint.Hit("after-table-commit")
	a.r.observer().TableCommitted(u.job.Name, "")
	a.r.observer().TableHeadAhead(u.job.Name, c.HeadAhead)
	cfg := u.job.table.cfg
	m.Table = &ManifestTable{Catalog: cfg.Name, Namespace: cfg.Namespace, Name: cfg.Table, SnapshotID: c.SnapshotID,
		Operation: c.Operation, Rows: w.rows}
	if c.DataFile != "" {
		m.Table.DataFile, m.Table.Bytes = c.DataFile, w.obj.Size()
	}
	return nil
}

// commitFailure is the reason label of a failed table commit.
func commitFailure(err error) string {
	var sce *iceberg.SchemaChangeError
	switch {
	case errors.Is(err, iceberg.ErrConflict):
		return "conflict"
	case errors.As(err, &sce):
		return "schema"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	}
	return "error"
}

// abortTable cancels the data file, or removes it once committed to the
// bucket unless the table may name it (a commit whose outcome is unknown).
func (a *attempt) abortTable(ctx context.Context) {
	w := a.table
	w.obj.Abort()
	if w.committed && !w.tried {
		a.unpublish(ctx, []string{w.obj.Key()})
	}
}

// describe is the commit an export of u makes, for plan.
func (ts *tableSpec) describe(u unit) string {
	var parts []string
	for _, p := range ts.parts {
		parts = append(parts, p.name+"="+u.values[p.placeholder])
	}
	return fmt.Sprintf("iceberg %s.%s.%s: one snapshot replacing partition %s (an append if it is new)",
		ts.cfg.Name, ts.cfg.Namespace, ts.cfg.Table, strings.Join(parts, ", "))
}
