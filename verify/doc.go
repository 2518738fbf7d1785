// Package verify checks sellersnap's files with readers nobody here wrote:
// it exports the demo data with the real binary and reads every file back
// with DuckDB (cgo) and parquet-go, comparing row counts, types and every
// value with PostgreSQL, and runs the DuckDB recipes of docs/reading.md.
// It is its own module so that the main module stays free of cgo; run it
// with `make verify-readers`.
package verify
