// Package sources reads the collector's tables from PostgreSQL.
//
// Postgres lists collection runs and checks the configured columns, their
// types and grants against the catalog (pg_catalog: information_schema
// hides columns the role may not read). A Snapshot is one REPEATABLE READ READ ONLY
// transaction on one connection; its Sellers method streams the rows of one
// run (or one org) in the binary wire format and decodes them straight into
// Arrow record batches of bounded size, without per-row allocations. The
// exporter never writes to PostgreSQL: a SELECT-only role is enough.
//
// Type mapping (PostgreSQL → Arrow):
//
//	text, varchar, bpchar, name         → utf8
//	uuid                                → utf8 (canonical 36 characters)
//	json, jsonb                         → utf8 (the JSON text)
//	int2, int4, int8                    → int16, int32, int64
//	bool                                → bool
//	float4, float8                      → float32, float64
//	numeric(p,s), p ≤ 38                → decimal128(p,s)
//	numeric without typmod, or p > 38   → utf8 (the exact decimal text)
//	timestamptz                         → timestamp[us, UTC]
//	timestamp                           → timestamp[us] (no zone)
//	date                                → date32
//
// Values Arrow cannot hold follow a fixed policy: numeric NaN/±Infinity and
// timestamp/date ±infinity become NULL and are counted per column (see
// Reader.Nulled); in a NOT NULL column they are an error naming the column
// and the seller id. Text that is not valid UTF-8 is an error.
package sources
