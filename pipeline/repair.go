package pipeline

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sinks/iceberg"
	"github.com/sellersnap/sellersnap/sources"
)

// TableRepair is what RepairTable did (or, dry, would do).
type TableRepair struct {
	Table   string // catalog.namespace.table
	Created bool   // the catalog had no such table
	UUID    string // the table's table-uuid after the repair
	Units   int    // units with a manifest
	// Live: units whose data file the table already read; Reused: units
	// committed with their earlier data file; Rebuilt: units whose data
	// file was written again (from the earlier one, or from the export's
	// Parquet file); Empty: units without rows (their partition emptied).
	Live, Reused, Rebuilt, Empty int
	// Failed are the units it could not commit, each with why and the
	// command that exports it again.
	Failed []RepairFailure
}

// RepairFailure is a unit repair-table could not commit.
type RepairFailure struct {
	Manifest string
	Err      string
	Fix      string
}

// unitOfManifest is the unit a manifest of job was written for.
func unitOfManifest(job *Job, m *Manifest) unit {
	if job.Mode != config.ModePerRun {
		return newOrgUnit(job, m.OrgID, m.Date)
	}
	return runUnitOn(job, sources.Run{ID: m.RunID, OrgID: m.OrgID}, m.Date)
}

// RepairTable rebuilds job's Iceberg table from its manifests: each
// unit's export committed once, with its earlier data file if the table's
// location still holds it with the right field ids, else with one written
// again from it or from the export's Parquet file; nothing else is
// committed and nothing of other writers is removed. It works on the
// table the catalog has (created if it has none, at the job's location,
// numbered after any metadata left there) and records it as the job's.
// While it works, the job's exports do not commit (table.json says a
// repair is under way); each unit is committed under the unit's lock,
// its manifest read again under it.
func (r *Runner) RepairTable(ctx context.Context, job *Job, dryRun bool) (*TableRepair, error) {
	if job.table == nil {
		return nil, fmt.Errorf("job %s has no iceberg table", job.Name)
	}
	bucket, err := r.Bucket(ctx, job.Destination)
	if err != nil {
		return nil, err
	}
	tb, err := r.table(ctx, job)
	if err != nil {
		return nil, err
	}
	cfg := job.table.cfg
	rep := &TableRepair{Table: cfg.Name + "." + cfg.Namespace + "." + cfg.Table}
	keys, err := r.unitManifests(ctx, bucket, job)
	if err != nil {
		return nil, err
	}
	rep.Units = len(keys)
	schema, err := r.outputSchemaNow(ctx, job)
	if err != nil {
		return nil, err
	}
	layout := job.table.layout(job, schema) // no expectation: any table the catalog has
	md, contents, err := tb.Live(ctx)
	if err != nil {
		return nil, err
	}
	var live map[string]int64
	if contents != nil {
		live = contents.Live
	}
	rep.Created = md == nil
	if dryRun {
		for _, key := range keys {
			m, err := readManifest(ctx, bucket, key)
			if err == nil && m.Table != nil && m.Table.DataFile != "" && live[m.Table.DataFile] == m.Rows && m.Rows > 0 {
				rep.Live++
			}
		}
		return rep, nil
	}
	host, _ := os.Hostname()
	rec := &tableRecord{Catalog: cfg.Name, Namespace: cfg.Namespace, Table: cfg.Table, Location: tb.Location(), Since: time.Now().UTC(),
		Repairing: &tableRepairing{Started: time.Now().UTC(), Host: host}}
	if old, err := readTableRecord(ctx, bucket, job); err == nil && old != nil && old.sameTable(job) {
		rec.Since = old.Since
	}
	if err := writeTableRecord(ctx, bucket, job, rec); err != nil {
		return nil, err
	}
	for _, key := range keys {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if err := r.repairUnit(ctx, bucket, tb, job, layout, key, live, rep); err != nil {
			var f RepairFailure
			f.Manifest, f.Err = key, err.Error()
			if m, e := readManifest(ctx, bucket, key); e == nil {
				f.Fix = rerunCommand(job, m)
			}
			rep.Failed = append(rep.Failed, f)
		}
	}
	md, _, err = tb.Live(ctx)
	if err != nil {
		return rep, err
	}
	if md == nil { // nothing to commit: every unit empty
		return rep, writeTableRecord(ctx, bucket, job, &tableRecord{Catalog: cfg.Name, Namespace: cfg.Namespace, Table: cfg.Table, Location: tb.Location(), Since: rec.Since})
	}
	rep.UUID = md.TableUUID
	rec.UUID, rec.HeldData, rec.Repairing = md.TableUUID, rep.Reused+rep.Rebuilt+rep.Live > 0, nil
	return rep, writeTableRecord(ctx, bucket, job, rec)
}

// maxRebuildRead bounds a data file repair-table reads into memory to
// commit or rebuild it.
const maxRebuildRead = 16 << 30

// rerunCommand is the command that exports m's unit again.
func rerunCommand(job *Job, m *Manifest) string {
	if job.Mode == config.ModePerRun {
		return fmt.Sprintf("sellersnap rerun -config <pipeline.yaml> -job %s -run %s", job.Name, m.RunID)
	}
	return fmt.Sprintf("sellersnap rerun -config <pipeline.yaml> -job %s -date %s -org %s -allow-past", job.Name, m.Date, cmp.Or(m.OrgID, noOrg))
}

// unitManifests lists the keys of job's manifests, oldest unit first.
func (r *Runner) unitManifests(ctx context.Context, bucket *sinks.Bucket, job *Job) ([]string, error) {
	objs, err := bucket.List(ctx, job.Layout.Prefix(), "/"+ManifestName)
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, o := range objs {
		keys = append(keys, o.Key)
	}
	slices.Sort(keys)
	return keys, nil
}

// repairUnit commits the export whose manifest is at key, under its
// unit's lock, and records the commit in the manifest.
func (r *Runner) repairUnit(ctx context.Context, bucket *sinks.Bucket, tb *iceberg.Table, job *Job, layout iceberg.Layout, key string, live map[string]int64, rep *TableRepair) error {
	m, err := readManifest(ctx, bucket, key)
	if err != nil {
		return err
	}
	if m.Job != job.Name {
		return nil // another job's manifest under the same prefix
	}
	u := unitOfManifest(job, m)
	_, err = r.withLock(ctx, u, func(u unit, _ *sources.Snapshot) (*Manifest, error) {
		m, err := readManifest(ctx, bucket, key) // again, under the lock
		if err != nil {
			return nil, err
		}
		if m.Table != nil && m.Table.DataFile != "" && m.Rows > 0 && live[m.Table.DataFile] == m.Rows {
			rep.Live++
			return nil, nil
		}
		values, err := job.table.values(u)
		if err != nil {
			return nil, err
		}
		plan, err := tb.Prepare(ctx, layout)
		if err != nil {
			return nil, err
		}
		f, how, err := r.repairFile(ctx, bucket, tb, plan, job, m, values)
		if err != nil {
			return nil, err
		}
		c, err := plan.Commit(ctx, f, map[string]string{"sellersnap.job": job.Name, "sellersnap.unit": u.lockKey(),
			"sellersnap.version": cmp.Or(r.Version, "dev"), "sellersnap.repair": "true"})
		if err != nil {
			return nil, err
		}
		switch how {
		case "reused":
			rep.Reused++
		case "rebuilt":
			rep.Rebuilt++
		default:
			rep.Empty++
		}
		m.Table = &ManifestTable{Catalog: job.table.cfg.Name, Namespace: job.table.cfg.Namespace, Name: job.table.cfg.Table,
			SnapshotID: c.SnapshotID, Operation: c.Operation, Rows: f.Rows}
		if c.DataFile != "" {
			m.Table.DataFile, m.Table.Bytes = c.DataFile, f.Bytes
		}
		b, err := m.encode()
		if err != nil {
			return nil, err
		}
		return nil, bucket.Put(ctx, key, b, "application/json", nil)
	})
	if errors.Is(err, errExportedElsewhere) {
		return fmt.Errorf("another process holds the unit's lock: run repair-table again once it is done")
	}
	return err
}

// repairFile is the data file the unit of m is committed with: its earlier
// one where it is still in the bucket with the plan's field ids
// ("reused"), else one written again from it or from the export's Parquet
// file ("rebuilt"); none for a unit without rows.
func (r *Runner) repairFile(ctx context.Context, bucket *sinks.Bucket, tb *iceberg.Table, plan *iceberg.Plan, job *Job, m *Manifest, values []iceberg.Value) (iceberg.DataFile, string, error) {
	f := iceberg.DataFile{Values: values}
	if m.Rows == 0 {
		return f, "empty", nil
	}
	var srcs [][]byte
	if m.Table != nil && m.Table.DataFile != "" {
		if key, err := tb.Key(m.Table.DataFile); err == nil {
			b, err := bucket.ReadUpTo(ctx, key, maxRebuildRead)
			switch {
			case err == nil && plan.Reusable(b):
				f.Key, f.Bytes, f.Rows = key, int64(len(b)), m.Rows
				return f, "reused", nil
			case err == nil:
				srcs = [][]byte{b}
			case !sinks.IsNotFound(err):
				return f, "", err
			}
		}
	}
	if srcs == nil {
		parts := slices.DeleteFunc(slices.Clone(m.Files), func(o ManifestFile) bool { return o.Format != "parquet" })
		slices.SortFunc(parts, func(a, b ManifestFile) int { return a.Part - b.Part })
		for _, mf := range parts {
			b, err := bucket.ReadUpTo(ctx, mf.Key, maxRebuildRead)
			if err != nil {
				return f, "", fmt.Errorf("read %s: %w", mf.Key, err)
			}
			srcs = append(srcs, b)
		}
	}
	if srcs == nil {
		return f, "", errors.New("the table's data file is gone and the export has no Parquet file to rebuild it from")
	}
	var buf bytes.Buffer
	rows, err := plan.Rebuild(ctx, srcs, values, &buf, sinks.ParquetOptions{Compression: job.options.ParquetCompression})
	if err != nil {
		return f, "", fmt.Errorf("rebuild its data file: %w", err)
	}
	if rows != m.Rows {
		return f, "", fmt.Errorf("its Parquet file holds %d rows, its manifest says %d", rows, m.Rows)
	}
	f.Key, f.Bytes, f.Rows = plan.DataKey(values), int64(buf.Len()), rows
	if err := bucket.Put(ctx, f.Key, buf.Bytes(), "application/vnd.apache.parquet", &sinks.PutOptions{IfNotExist: true}); err != nil {
		return f, "", err
	}
	return f, "rebuilt", nil
}
