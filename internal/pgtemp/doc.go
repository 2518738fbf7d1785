// Package pgtemp starts a throwaway PostgreSQL cluster from the system's
// PostgreSQL binaries, for tests, the demo and benchmarks.
//
// The cluster lives in a temporary directory, listens on 127.0.0.1 on a free
// port and on a Unix socket inside that directory, trusts every local
// connection and runs with fsync off: it is fast and disposable, never a
// place for data that matters. When the process runs as root the server runs
// as the "postgres" user, since PostgreSQL refuses to run as root.
package pgtemp
