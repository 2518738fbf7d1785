package pipeline

import (
	"context"
	"fmt"
	"time"

	"github.com/apache/arrow/go/v17/arrow"

	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// unit is one set of files with one manifest: a run (per_run) or an org's
// snapshot for one date (full).
type unit struct {
	job    *Job
	run    *sources.Run // per_run only
	orgID  string
	date   string
	values map[string]string // placeholder values, less ext
	held   fence             // nil when not locked (plan, tests)
	// rerunID is the rerun writing the unit, recorded in its manifest.
	rerunID string
}

// stillHeld returns nil while u's lock is held (or u has none).
func (u unit) stillHeld(ctx context.Context) error {
	if u.held == nil {
		return nil
	}
	return u.held(ctx)
}

// noOrg stands for sellers without an org in keys.
const noOrg = "none"

func newRunUnit(job *Job, run sources.Run) unit {
	return runUnitOn(job, run, run.CompletedAt.In(job.Location).Format(time.DateOnly))
}

// runUnitOn is run's unit with its files under date (the day of its
// completed_at, or the one it is held under: held.go).
func runUnitOn(job *Job, run sources.Run, date string) unit {
	org := run.OrgID
	if org == "" {
		org = noOrg
	}
	id8 := run.ID
	if len(id8) > 8 {
		id8 = id8[:8]
	}
	return unit{job: job, run: &run, orgID: run.OrgID, date: date, values: map[string]string{
		"job": job.Name, "org_id": org, "run_id": run.ID, "run_id8": id8, "run_date": date,
	}}
}

func newOrgUnit(job *Job, orgID, date string) unit {
	org := orgID
	if org == "" {
		org = noOrg
	}
	return unit{job: job, orgID: orgID, date: date, values: map[string]string{
		"job": job.Name, "org_id": org, "date": date,
	}}
}

// key returns the key of part n of the file in format (0: unsplit).
func (u unit) key(f *sinks.Format, part int) (string, error) {
	return u.job.Layout.File(u.values, f.Ext(), part)
}

// manifestKey is the manifest's key: beside the data files.
func (u unit) manifestKey() (string, error) {
	folder, err := u.job.Layout.Folder(u.values)
	if err != nil {
		return "", err
	}
	return u.job.Layout.Manifest(folder), nil
}

// latestKey is the key of the unit's latest.json.
func (u unit) latestKey(manifestKey string) string {
	return u.job.Layout.Latest(manifestKey, u.values["org_id"])
}

func (u unit) query() sources.Query {
	q := sources.Query{Columns: u.job.sourceColumns, OrgID: u.orgID, Filter: u.job.filter}
	if u.run != nil {
		q.RunID = u.run.ID
	}
	return q
}

// lockKey names the unit's lock: one exporter at a time, across processes.
func (u unit) lockKey() string {
	if u.run != nil {
		return "run:" + u.job.Name + ":" + u.run.ID
	}
	return "full:" + u.job.Name + ":" + u.date + ":" + u.orgID
}

func (u unit) logAttrs() []any {
	attrs := []any{"job", u.job.Name}
	if u.run != nil {
		attrs = append(attrs, "run_id", u.run.ID)
	} else {
		attrs = append(attrs, "date", u.date)
	}
	return append(attrs, "org_id", u.orgID)
}

// outputSchema renames the source columns to the job's output names.
func outputSchema(job *Job, src *arrow.Schema) *arrow.Schema {
	fields := make([]arrow.Field, src.NumFields())
	for i, f := range src.Fields() {
		f.Name = job.columns[i].Output()
		if job.columns[i].Redact {
			f.Nullable = true
		}
		fields[i] = f
	}
	return arrow.NewSchema(fields, nil)
}

// manifestColumns describes the output columns for the manifest.
func manifestColumns(job *Job, schema *arrow.Schema) []ManifestColumn {
	cols := make([]ManifestColumn, schema.NumFields())
	for i, f := range schema.Fields() {
		mc := ManifestColumn{Name: f.Name, Source: job.columns[i].Name, Type: f.Type.String(), Nullable: f.Nullable}
		switch c := job.columns[i]; {
		case c.Redact:
			mc.Transform = "redact"
		case c.Mask != "":
			mc.Transform = "mask:" + c.Mask
		}
		cols[i] = mc
	}
	return cols
}

// unitError wraps a unit's error with what identifies the unit.
func unitError(u unit, err error) error {
	if u.run != nil {
		return fmt.Errorf("job %s, run %s: %w", u.job.Name, u.run.ID, err)
	}
	return fmt.Errorf("job %s, org %s, date %s: %w", u.job.Name, u.values["org_id"], u.date, err)
}
