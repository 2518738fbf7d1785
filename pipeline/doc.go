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
// The first error anywhere cancels the whole unit. Data files are
// committed only after every stage finished; the manifest is written last,
// so a unit is exported if and only if its manifest exists. A failed
// attempt leaves nothing at any final key.
//
// pipeline starts the goroutines of an export (its stages); sources starts
// the two that open an export's connections side by side, and the daemon
// (internal/daemon) those of scheduling and serving. An Observer (the
// daemon's metrics) is told of every export.
package pipeline
