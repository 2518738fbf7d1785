package pipeline

// SetBeforeCommit makes r call f when an export has written every file and
// is about to commit the first one (fault tests interleave exporters there).
func SetBeforeCommit(r *Runner, f func()) { r.beforeCommit = f }
