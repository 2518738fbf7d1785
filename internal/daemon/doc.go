// Package daemon runs compiled jobs (pipeline.Job) on their schedules and
// serves what an operator looks at: /metrics, /healthz, /readyz and the
// status page.
//
// A Daemon has one worker per job (exports of a job never overlap; ticks
// that arrive while it is busy coalesce), LISTENs for completed runs, and
// hands each pass to a pipeline.Runner. Its Metrics are the Runner's
// pipeline.Observer: every export, failure, retry and backlog count
// arrives there, and the status page reads them, seeded at start-up from
// the manifests in each job's bucket so that a restart loses no history.
//
// It starts the goroutines of the scheduler, the workers, the LISTEN loop,
// the dependency checks and the HTTP server.
package daemon
