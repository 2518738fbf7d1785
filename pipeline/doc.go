// Package pipeline compiles and runs export jobs.
//
//	config.File ──Compile/NewJob──▶ Job ──Runner──▶ sources (snapshot, reader)
//	  ──stages──▶ sinks.Format encoders ──▶ sinks.Bucket ──▶ manifest
//
// Compile turns a loaded config into Jobs once, checking each against the
// source's catalog: formats (sinks.Format), columns and their transforms,
// the source filter, and the Layout that names every key. A Runner finds
// what a job has pending (completed runs without a manifest, or today's
// full snapshot), reads each unit in its own REPEATABLE READ snapshot, and
// streams it through bounded channels:
//
//	extract (sources.Reader) → transform (rename, mask, redact) → one encoder per format → blob upload
//
// The first error anywhere cancels the whole unit. One attempt
// (attempt.go) carries a unit through its protocol and owns its order:
// open the outputs (output.go), run the stages, then publish: data files are committed only after
// every stage finished; a job with an Iceberg table (table.go) has written
// the table's own data file beside the formats, and commits it to the
// table next; the manifest is written last, so a unit is exported if and
// only if its manifest exists, and a failed attempt leaves nothing at any
// final key. The table commit comes before the manifest, not after it: a
// kill between the two leaves no manifest, and the unit's next export
// replaces the commit's partition, where a commit after the manifest could
// be lost with nothing left to say it is missing. After publishing come
// the afterSteps (schema.json, latest.json), whose failures leave the
// export published, and the Observer.
//
// The data's way, file by file: state.go (find what is pending: a discovery) →
// pass.go (a Runner's pass: lock and export each unit; runner.go holds the
// Runner, rerun.go its reruns, inspect.go what it reports) → attempt.go
// (one unit's life: unit.go and stages.go read, transform, encode;
// table.go's table commit, the manifest, the after-publish steps) →
// latest.go (the pointer) and observer.go (metrics).
//
// pipeline starts the goroutines of an export (its stages); sources starts
// the two that open an export's connections side by side, and the daemon
// (internal/daemon) those of scheduling and serving. An Observer (the
// daemon's metrics) is told of every export.
package pipeline
