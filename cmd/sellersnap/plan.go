package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sinks"
)

// plan prints what `once` would do now, writing nothing: per job, each
// pending run (or org, for full jobs), its row count and every key.
func plan(ctx context.Context, runner *pipeline.Runner, jobs []*pipeline.Job, w io.Writer, asJSON, verbose bool) error {
	type jobPlan struct {
		Job     string             `json:"job"`
		Mode    string             `json:"mode"`
		Bucket  string             `json:"bucket"`
		Pending []pipeline.Planned `json:"pending"`
		// Unsettled: units a rerun left between two exports, which the
		// pass settles first.
		Unsettled []pipeline.Unsettled `json:"unsettled,omitempty"`
		Reruns    []rerunStatus        `json:"reruns,omitempty"`
	}
	var all []jobPlan
	for _, j := range jobs {
		p, err := runner.Plan(ctx, j)
		if err != nil {
			return fmt.Errorf("job %s: %w", j.Name, err)
		}
		if p == nil {
			p = []pipeline.Planned{}
		}
		reruns, err := declaredReruns(ctx, runner, j)
		if err != nil {
			return fmt.Errorf("job %s: %w", j.Name, err)
		}
		unsettled, err := runner.Unsettled(ctx, j)
		if err != nil {
			return fmt.Errorf("job %s: %w", j.Name, err)
		}
		all = append(all, jobPlan{Job: j.Name, Mode: j.Mode, Bucket: sinks.Redact(j.Destination), Pending: p, Unsettled: unsettled, Reruns: reruns})
		if !asJSON {
			fmt.Fprintf(w, "job %s (%s) → %s\n", j.Name, j.Mode, sinks.Redact(j.Destination))
			printUnsettled(w, unsettled, "")
			printPlan(w, j, p, verbose, "")
			printReruns(w, reruns)
		}
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(all)
	}
	return nil
}

// printUnsettled prints the units a rerun left between two exports, each
// followed by repair when it is not "".
func printUnsettled(w io.Writer, us []pipeline.Unsettled, repair string) {
	if len(us) == 0 {
		return
	}
	fmt.Fprintf(w, "  between two exports (a rerun stopped; the next pass settles them first): %d\n", len(us))
	for _, u := range us {
		what := "run " + u.RunID
		if u.RunID == "" {
			what = "org " + u.OrgID + " date " + u.Date
		}
		next := "goes back to the published export"
		if u.State == "staged" {
			next = "goes forward if the table holds its commit, else back"
		}
		fmt.Fprintf(w, "  - %s: rerun %s stopped %s (%s), %s; intent %s\n", what, u.Attempt, u.Since.Format(time.RFC3339), u.State, next, u.Intent)
		if repair != "" {
			fmt.Fprintf(w, "    repair: %s\n", repair)
		}
	}
}

func printPlan(w io.Writer, j *pipeline.Job, plan []pipeline.Planned, verbose bool, what string) {
	switch {
	case what != "":
	case j.Mode == config.ModeFull:
		what = "orgs pending for today's snapshot"
	default:
		what = "pending runs"
	}
	var rows int64
	for _, p := range plan {
		rows += p.Rows
	}
	fmt.Fprintf(w, "  %s: %d (%d rows)\n", what, len(plan), rows)
	for i, p := range plan {
		if !verbose && i > 0 && i < len(plan)-1 {
			if i == 1 {
				fmt.Fprintf(w, "  … %d more (-v lists every unit and key)\n", len(plan)-2)
			}
			continue
		}
		if p.RunID != "" {
			fmt.Fprintf(w, "  - run %s org %s date %s: %d rows\n", p.RunID, p.OrgID, p.Date, p.Rows)
		} else {
			fmt.Fprintf(w, "  - org %s date %s: %d rows\n", p.OrgID, p.Date, p.Rows)
		}
		for _, k := range p.Keys {
			if verbose || i == 0 {
				fmt.Fprintf(w, "      %s\n", k)
			}
		}
		if p.Table != "" && (verbose || i == 0) {
			fmt.Fprintf(w, "      %s\n", p.Table)
		}
	}
}
