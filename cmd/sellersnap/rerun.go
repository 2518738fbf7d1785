package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// repairLatest prints each manifest it would not follow, and why, and each
// latest.json it rewrote (or would have).
func repairLatest(ctx context.Context, r *pipeline.Runner, jobs []*pipeline.Job, stdout io.Writer, dryRun bool) error {
	verb := "repaired"
	if dryRun {
		verb = "would repair"
	}
	for _, job := range jobs {
		repairs, rejections, err := r.RepairLatest(ctx, job, dryRun)
		for _, rej := range rejections {
			fmt.Fprintf(stdout, "%s: rejected %s\n  %s\n", job.Name, rej.Manifest, rej.Why)
		}
		for _, rep := range repairs {
			was := rep.Was
			if was == "" {
				was = "(none)"
			}
			fmt.Fprintf(stdout, "%s: %s %s\n  was %s\n  now %s (%s)\n", job.Name, verb, rep.Key, was, rep.Now, rep.Date)
		}
		if err != nil {
			return fmt.Errorf("job %s: %w", job.Name, err)
		}
		if len(repairs) == 0 {
			fmt.Fprintf(stdout, "%s: every latest.json names the newest export\n", job.Name)
		}
	}
	return nil
}

// repairTable rebuilds job's table from its manifests and prints what it
// did; a unit it could not commit fails it (exit 1), with the command
// that exports the unit again.
func repairTable(ctx context.Context, r *pipeline.Runner, job *pipeline.Job, config string, stdout io.Writer, dryRun bool) error {
	rep, err := r.RepairTable(ctx, job, dryRun)
	if rep != nil {
		state := "in the catalog"
		if rep.Created {
			state = "missing from the catalog"
		}
		if dryRun {
			fmt.Fprintf(stdout, "%s: table %s is %s; %d units have a manifest, %d of them live in it; repair-table would commit the other %d\n",
				job.Name, rep.Table, state, rep.Units, rep.Live, rep.Units-rep.Live)
			return err
		}
		verb := "repaired"
		if rep.Created {
			verb = "created"
		}
		fmt.Fprintf(stdout, "%s: %s table %s (table-uuid %s) from %d manifests: %d units committed with their data file, %d with one rebuilt from Parquet, %d empty, %d already live\n",
			job.Name, verb, rep.Table, rep.UUID, rep.Units, rep.Reused, rep.Rebuilt, rep.Empty, rep.Live)
		for _, f := range rep.Failed {
			fmt.Fprintf(stdout, "  not committed: %s: %s\n", f.Manifest, f.Err)
			if f.Fix != "" {
				fmt.Fprintf(stdout, "    repair: %s\n", strings.ReplaceAll(f.Fix, "<pipeline.yaml>", config))
			}
		}
	}
	if err != nil {
		return fmt.Errorf("job %s: repair-table: %w", job.Name, err)
	}
	if len(rep.Failed) > 0 {
		return fmt.Errorf("job %s: repair-table: %d units not committed (above)", job.Name, len(rep.Failed))
	}
	return nil
}

// rerunIDPattern is config's rule for rerun ids.
var rerunIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// selectorFlag names the rerun flag of a config.CheckSelectors field.
func selectorFlag(field string) string {
	switch {
	case strings.HasPrefix(field, "runs"):
		return "run"
	case strings.HasPrefix(field, "orgs"):
		return "org"
	case field == "allow_past":
		return "allow-past"
	}
	return field
}

// rerun rewrites the units the flags select (or, with -dry-run, prints
// them), with progress on stderr when it takes more than a few seconds.
func rerun(ctx context.Context, r *pipeline.Runner, job *pipeline.Job, o options, stdout, stderr io.Writer) error {
	sel := pipeline.Selection{Runs: o.runs, From: o.from, To: o.to, Orgs: o.orgs, AllowPast: o.allowPast}
	if o.dryRun {
		p, err := r.PlanRerun(ctx, job, sel)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "job %s (%s) → %s: rerun %s would rewrite\n", job.Name, job.Mode, sinks.Redact(job.Destination), sel)
		printPlan(stdout, job, p, o.verbose, "units")
		return nil
	}
	start, last := time.Now(), time.Time{}
	res, err := r.RerunSelection(ctx, job, sel, pipeline.RerunOptions{ID: o.rerunID, Progress: func(p pipeline.RerunProgress) {
		if time.Since(start) < 3*time.Second || time.Since(last) < 2*time.Second && p.Done < p.Total {
			return
		}
		last = time.Now()
		fmt.Fprintf(stderr, "rerun %s: %s\n", job.Name, pipeline.ProgressLine(p))
	}})
	if err == nil && res.Busy > 0 {
		err = fmt.Errorf("%d of %d units were being exported by another process and were not rewritten; run the rerun again (with -id, it skips the units it rewrote)", res.Busy, res.Total)
	}
	if res.Total == 0 && err == nil {
		fmt.Fprintf(stderr, "rerun %s: nothing selected (%s)\n", job.Name, sel)
	}
	if res.Total == 0 && errors.Is(err, sources.ErrRunNotFound) {
		// A -run that names no run: a usage error, found before anything
		// was rewritten.
		return &usageError{fmt.Sprintf("-run: %v", err)}
	}
	return err
}

// rerunField is the config field of the reruns: entry with id.
func rerunField(cfg *config.File, id string) string {
	for i, r := range cfg.Reruns {
		if r.ID == id {
			return fmt.Sprintf("reruns[%d]", i)
		}
	}
	return "reruns"
}
