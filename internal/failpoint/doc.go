// Package failpoint lets fault tests stop a real sellersnap process at a
// named point of an export, where a random kill would rarely land (between
// two data file commits, after the last one and before the manifest).
//
// In a test binary that called Enable, SELLERSNAP_FAILPOINT=name[:N] makes
// the process SIGKILL itself the Nth time (default the first) it reaches
// the point called name. Elsewhere Hit is one atomic load: the release
// binary ignores the variable.
package failpoint
