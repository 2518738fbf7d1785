// Package arrowmem is the Arrow memory allocator of an export: a pool of
// the buffers Arrow frees (records read from PostgreSQL once every format
// has written them, the Parquet encoders' scratch buffers), so the steady
// state of an export allocates less and the garbage collector runs less
// often. Freed buffers are poisoned, so a reader of freed memory shows up
// in tests (sinks.TestParquetDoesNotReadReleasedRecords) instead of
// writing stale bytes.
package arrowmem
