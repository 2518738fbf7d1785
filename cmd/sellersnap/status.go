package main

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/pipeline"
)

// RowsChangedError says that exported runs no longer hold the rows the
// database has for them.
type RowsChangedError struct{ N int }

func (e *RowsChangedError) Error() string {
	return fmt.Sprintf("%d exported units differ from the database or from their files; run the commands printed above to repair them", e.N)
}

// verifyRows prints, for each per_run job, the exported runs (completed
// between -from and -to) whose manifest's row count differs from the
// database's, with the rerun that repairs each.
func verifyRows(ctx context.Context, runner *pipeline.Runner, jobs []*pipeline.Job, w io.Writer, o options) error {
	now := time.Now().UTC()
	from, to := now.AddDate(0, 0, -7).Truncate(24*time.Hour), now.Truncate(24*time.Hour)
	for _, d := range []struct {
		flag string
		v    string
		t    *time.Time
	}{{"from", o.from, &from}, {"to", o.to, &to}} {
		if d.v == "" {
			continue
		}
		t, err := time.Parse(time.DateOnly, d.v)
		if err != nil {
			return &usageError{fmt.Sprintf("-%s %q: want YYYY-MM-DD", d.flag, d.v)}
		}
		*d.t = t
	}
	if to.Before(from) {
		return &usageError{fmt.Sprintf("-to %s is before -from %s", to.Format(time.DateOnly), from.Format(time.DateOnly))}
	}
	total := 0
	for _, j := range jobs {
		us, err := runner.Unsettled(ctx, j)
		if err != nil {
			return fmt.Errorf("job %s: %w", j.Name, err)
		}
		if len(us) > 0 {
			fmt.Fprintf(w, "job %s: %d units between two exports\n", j.Name, len(us))
			printUnsettled(w, us, fmt.Sprintf("sellersnap once -config %s -job %s", o.config, j.Name))
			total += len(us)
		}
		n, err := audit(ctx, runner, j, w, o)
		if err != nil {
			return err
		}
		total += n
		if j.Mode != config.ModePerRun {
			fmt.Fprintf(w, "job %s (%s): rows not compared with the database (a full snapshot holds the rows as they were when it was taken)\n", j.Name, j.Mode)
			continue
		}
		mm, checked, err := runner.Verify(ctx, j, from, to.AddDate(0, 0, 1))
		if err != nil {
			return fmt.Errorf("job %s: %w", j.Name, err)
		}
		fmt.Fprintf(w, "job %s: %d exported runs completed %s to %s checked, %d differ from the database\n", j.Name, checked, from.Format(time.DateOnly), to.Format(time.DateOnly), len(mm))
		for _, m := range mm {
			fmt.Fprintf(w, "  run %s (org %s): manifest %d rows, database %d now\n    repair: sellersnap rerun -config %s -job %s -run %s\n", m.RunID, m.OrgID, m.Published, m.Now, o.config, j.Name, m.RunID)
		}
		total += len(mm)
	}
	if total > 0 {
		return &RowsChangedError{N: total}
	}
	return nil
}

// audit prints what an audit of j's outputs found (files, table,
// latest.json against the manifests) and returns how many differences.
func audit(ctx context.Context, runner *pipeline.Runner, j *pipeline.Job, w io.Writer, o options) (int, error) {
	start := time.Now()
	a, err := runner.Audit(ctx, j, o.quick)
	if err != nil {
		return 0, fmt.Errorf("job %s: audit: %w", j.Name, err)
	}
	how := "sizes and sha256"
	if o.quick {
		how = "sizes only (-quick)"
	}
	table := ""
	if j.HasTable() {
		table = fmt.Sprintf(", %d data files live in the table (%d other writers')", a.Live, a.Foreign)
	}
	fmt.Fprintf(w, "job %s: audited %d manifests, %d files (%s, %d MB read)%s and latest.json in %s, %d bucket requests: differences: %d\n",
		j.Name, a.Manifests, a.Files, how, a.Hashed>>20, table, time.Since(start).Round(time.Millisecond), a.Requests, len(a.Diffs))
	for _, d := range a.Diffs {
		fmt.Fprintf(w, "  %s: %s\n", d.Unit, d.What)
		if d.Fix != "" {
			fmt.Fprintf(w, "    repair: %s\n", strings.ReplaceAll(d.Fix, "<pipeline.yaml>", o.config))
		}
	}
	return len(a.Diffs), nil
}

// status prints, per job, the recent exports (from the manifests in the
// bucket) and what is pending.
func status(ctx context.Context, runner *pipeline.Runner, jobs []*pipeline.Job, w io.Writer) error {
	for i, j := range jobs {
		if i > 0 {
			fmt.Fprintln(w)
		}
		next := j.Cron.Next(time.Now().In(j.Location))
		fmt.Fprintf(w, "job %s (%s), schedule %q %s, next %s\n", j.Name, j.Mode, j.Schedule, j.Location, next.Format(time.RFC3339))
		recent, err := runner.Recent(ctx, j, 10)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  EXPORTED AT\tRUN / DATE\tORG\tROWS\tFILES\tMANIFEST")
		for _, m := range recent {
			what := m.RunID
			if what == "" {
				what = m.Date
			}
			key := ""
			if len(m.Files) > 0 {
				key = path.Dir(m.Files[0].Key) + "/" + pipeline.ManifestName
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%s\n", m.ExportedAt.Format(time.RFC3339), what, m.OrgID, m.Rows, len(m.Files), key)
		}
		if len(recent) == 0 {
			fmt.Fprintln(tw, "  (no exports yet)")
		}
		tw.Flush()
		ts, err := runner.TableStatus(ctx, j)
		if err != nil {
			return fmt.Errorf("job %s: iceberg: %w", j.Name, err)
		}
		printTable(w, ts)
		us, err := runner.Unsettled(ctx, j)
		if err != nil {
			return fmt.Errorf("job %s: %w", j.Name, err)
		}
		printUnsettled(w, us, "")
		plan, err := runner.Plan(ctx, j)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "  pending: %d\n", len(plan))
		for k, p := range plan {
			if k == 10 {
				fmt.Fprintf(w, "  … and %d more\n", len(plan)-10)
				break
			}
			what := p.RunID
			if what == "" {
				what = "org " + p.OrgID + " " + p.Date
			}
			fmt.Fprintf(w, "  - %s: %d rows\n", what, p.Rows)
		}
		reruns, err := declaredReruns(ctx, runner, j)
		if err != nil {
			return err
		}
		printReruns(w, reruns)
	}
	return nil
}

// printPlan prints a job's pending units: a summary (counts, the first unit
// with its keys, the last unit), or with verbose every unit and key.
// printTable prints a job's Iceberg table: where it is, its current
// snapshot, its retention.
func printTable(w io.Writer, ts *pipeline.TableStatus) {
	if ts == nil {
		return
	}
	state := "schema and partitioning match the job's"
	switch {
	case ts.Created:
		state = "created (no snapshot yet)"
	case ts.Metadata == "":
		state = "not created yet (the first export or validate creates it)"
	}
	fmt.Fprintf(w, "  iceberg table %s at %s: %s\n", ts.Name, ts.Location, state)
	if c := ts.Current; c != nil {
		fmt.Fprintf(w, "    current snapshot %d (%s, %s, sequence %d): %s records in %s files; %d snapshots kept (retention %s)\n",
			c.ID, c.Summary["operation"], time.UnixMilli(c.TimestampMS).UTC().Format(time.RFC3339), c.Sequence,
			c.Summary["total-records"], c.Summary["total-data-files"], ts.Snapshots, ts.Retention)
	}
	if ts.Metadata != "" {
		fmt.Fprintf(w, "    metadata %s\n", ts.Metadata)
	}
}

// rerunStatus is a declared rerun as plan, validate and status show it.
type rerunStatus struct {
	ID        string                `json:"id"`
	Selection string                `json:"selection"`
	Reason    string                `json:"reason"`
	Status    string                `json:"status"` // pending, or the record's
	Units     int                   `json:"units"`  // selected now (pending) or by the last attempt
	Record    *pipeline.RerunRecord `json:"record,omitempty"`
}

// declaredReruns describes job's reruns: entries: their records, and for
// those not applied yet how many units they select now.
func declaredReruns(ctx context.Context, r *pipeline.Runner, j *pipeline.Job) ([]rerunStatus, error) {
	var out []rerunStatus
	for _, d := range j.Reruns {
		rec, err := r.ReadRerunRecord(ctx, j, d)
		if err != nil {
			return nil, err
		}
		st := rerunStatus{ID: d.ID, Selection: d.Selection.String(), Reason: d.Reason, Status: "pending", Record: rec}
		if rec != nil {
			st.Status, st.Units = rec.Status, rec.Units
			if rec.Status == pipeline.RerunRunning {
				// Running only while a process holds it.
				if held, err := r.RerunHeld(ctx, j, d); err == nil && !held {
					st.Status = pipeline.RerunIncomplete + " (the process applying it stopped; the next pass resumes it)"
				}
			}
		}
		if rec == nil || rec.Status != pipeline.RerunApplied && rec.Status != pipeline.RerunRefused {
			p, err := r.PlanRerun(ctx, j, d.Judged(j, rec))
			if err != nil {
				return nil, fmt.Errorf("rerun %s: %w", d.ID, err)
			}
			st.Units = len(p)
		}
		out = append(out, st)
	}
	return out, nil
}

func printReruns(w io.Writer, reruns []rerunStatus) {
	for _, st := range reruns {
		fmt.Fprintf(w, "  rerun %s: %s, %d units (%s) — %s\n", st.ID, st.Status, st.Units, st.Selection, st.Reason)
		if rec := st.Record; rec != nil {
			fmt.Fprintf(w, "      %d attempts, last by %s at %s; %d rewritten, %d failed, %d busy", rec.Attempts, rec.By,
				rec.UpdatedAt.Format(time.RFC3339), rec.Rewritten, rec.Failed, rec.Busy)
			if rec.LastError != "" {
				fmt.Fprintf(w, "; last error: %s", rec.LastError)
			}
			fmt.Fprintln(w)
		}
	}
}
