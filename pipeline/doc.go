// Package pipeline runs export jobs. It starts the goroutines of an export
// (its stages) and of the daemon; the only other one is sources opening an
// export's two connections side by side.
//
// A Runner finds what a job has pending (completed runs without a
// manifest, or today's full snapshot), reads each unit in its own
// REPEATABLE READ snapshot, and streams it through bounded channels:
//
//	extract (sources.Reader) → transform (rename) → one encoder per format → blob upload
//
// The first error anywhere cancels the whole unit. Data files are
// committed only after every stage finished; the manifest is written last,
// so a unit is exported if and only if its manifest exists. A failed
// attempt leaves nothing at any final key.
package pipeline
