package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sellersnap/sellersnap/pipeline"
	"github.com/sellersnap/sellersnap/sinks"
)

func validate(ctx context.Context, runner *pipeline.Runner, jobs []*pipeline.Job, w io.Writer, verbose bool) error {
	fmt.Fprintln(w, "config: ok; database: ok (tables and columns checked)")
	for _, j := range jobs {
		bucket, err := runner.Bucket(ctx, j.Destination)
		if err != nil {
			return err
		}
		probe := j.Layout.Prefix() + ".sellersnap-probe-" + randomHex()
		var pe *sinks.ProbeError
		if err := bucket.Probe(ctx, probe); errors.As(err, &pe) {
			switch pe.Op {
			case "write":
				return fmt.Errorf("job %s: cannot write to %s under %q%s: %w", j.Name, bucket.URL(), j.Layout.Prefix(), permissionHint(pe.Err, "write"), pe.Err)
			case "read":
				return fmt.Errorf("job %s: wrote a probe object to %s but cannot read it back%s: %w", j.Name, bucket.URL(), permissionHint(pe.Err, "read"), pe.Err)
			default:
				return fmt.Errorf("job %s: wrote a probe object to %s but cannot delete it%s: %w", j.Name, bucket.URL(), permissionHint(pe.Err, "delete"), pe.Err)
			}
		} else if err != nil {
			return err
		}
		next := j.Cron.Next(time.Now().In(j.Location))
		fmt.Fprintf(w, "\njob %s (%s), schedule %q %s, next %s\n  destination %s (writable, readable)\n  columns %s\n  formats %s\n",
			j.Name, j.Mode, j.Schedule, j.Location, next.Format(time.RFC3339), bucket.URL(), columnList(j), strings.Join(j.FormatNames(), ", "))
		ts, err := runner.CheckTable(ctx, j)
		if err != nil {
			return fmt.Errorf("job %s: iceberg: %w", j.Name, err)
		}
		printTable(w, ts)
		p, err := runner.Plan(ctx, j)
		if err != nil {
			return err
		}
		printPlan(w, j, p, verbose, "")
		reruns, err := declaredReruns(ctx, runner, j)
		if err != nil {
			return fmt.Errorf("job %s: %w", j.Name, err)
		}
		printReruns(w, reruns)
	}
	return nil
}

// permissionHint names, in an operator's words, the permission a bucket
// error is about.
func permissionHint(err error, op string) string {
	switch {
	case sinks.IsPermissionDenied(err):
		if op == "delete" {
			return " (the credentials lack delete permission: s3:DeleteObject, storage.objects.delete, or an Azure role with blob delete; sellersnap deletes files of failed exports)"
		}
		if op == "read" {
			return " (the credentials lack read permission: s3:GetObject, storage.objects.get, or the Storage Blob Data Reader role; sellersnap reads manifests and schema.json)"
		}
		return " (the credentials lack write permission: s3:PutObject, storage.objects.create, or the Storage Blob Data Contributor role)"
	case sinks.IsNotFound(err):
		return " (the bucket or container does not exist: sellersnap does not create it)"
	}
	return ""
}

func columnList(j *pipeline.Job) string {
	var parts []string
	for _, c := range j.Columns() {
		if c.As != "" {
			parts = append(parts, c.Name+" as "+c.As)
		} else {
			parts = append(parts, c.Name)
		}
	}
	return strings.Join(parts, ", ")
}
