// Command iceberg-read is the reference reader of the Iceberg tables
// sellersnap writes: apache/iceberg-go, in a module of its own because it
// links arrow-go/v18, which cannot be linked beside the arrow/go/v17 of
// sellersnap. It opens a table through the SQL catalog (-uri, -catalog,
// -table) or from a metadata file alone (-metadata), plans the scan and
// prints, as JSON lines, the planned files (with their partition values
// and record counts), then every row with each value in sellersnap's text
// form, so that the verify tests compare them with PostgreSQL.
//
// It must not import the main module.
package main
