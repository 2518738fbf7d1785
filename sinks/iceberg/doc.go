// Package iceberg writes an Apache Iceberg (format version 2) table: the
// data files' Arrow schema with Iceberg field ids, the manifests and
// manifest lists (Avro), the table metadata (JSON), and the commit through
// a SQL catalog in PostgreSQL (the iceberg_tables and
// iceberg_namespace_properties tables of the Java JDBC catalog, pyiceberg
// and iceberg-go), plus version-hint.text for readers given only the
// bucket.
//
// Every commit replaces one partition: the files of the partition the new
// data file belongs to (if any) are deleted in the same snapshot that adds
// it. A unit's partition identifies it (org, date and run of a per-run
// export; org and date of a full snapshot), so committing a unit twice
// (a rerun, or an export repeated after a kill before its manifest) leaves
// it in the table once.
//
// Commits are serialised by a transaction on the catalog's row (an
// advisory lock and SELECT … FOR UPDATE) and made with a compare-and-swap
// of metadata_location, so a writer that does not take the lock (Spark,
// pyiceberg) is never overwritten: its commit or ours fails and is retried
// against the new head.
//
// The writer is our own because github.com/apache/iceberg-go links
// arrow-go/v18, which cannot be linked beside arrow/go/v17; iceberg-go
// reads what this package writes in the tests of verify/iceberg.
package iceberg
