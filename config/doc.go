// Package config loads pipeline.yaml: the database to read and the export
// jobs to run.
//
// Loading is strict: unknown keys, duplicate keys and values of the wrong
// type are errors, and every error names the file, the line and the field
// path (jobs[1].schedule). ${VAR} and ${VAR:-default} are expanded in values
// (never in keys) before they are typed, so numbers and booleans can come
// from the environment too; $$ is a literal $. Defaults are the named
// constants of this package, applied by Load; after Load every job field is
// set and every schedule, time zone and path template is parsed.
package config
