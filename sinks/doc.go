// Package sinks turns Arrow records into files and publishes them to a
// bucket.
//
// The encoders CSV, NDJSON and Parquet each write records to an io.Writer
// and know nothing of where the bytes go; Close flushes them but never
// closes the writer under them. Bucket and Object put bytes at keys of any
// gocloud.dev bucket URL, where nothing becomes visible at a key until
// Object.Commit, and Object.Abort cancels an upload before anything can
// commit it.
//
// Text forms shared by CSV and NDJSON: timestamps in RFC 3339 UTC with
// exactly six fractional digits (2026-03-01T01:01:00.000001Z), dates as
// YYYY-MM-DD, decimals exact with their scale (99.50), booleans true/false.
// Years outside 0000–9999 use ISO 8601's expanded form (+294276-…).
package sinks
