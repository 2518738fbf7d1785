// Package pipelinetest is the test fixture of the pipeline and daemon
// tests: a throwaway database with demo data, a bucket, a config with one
// per_run and one full job, and a Runner over them. Tests only.
package pipelinetest
