package pipeline

// SetBeforeCommit makes r call f when an export has written every file and
// is about to commit the first one (fault tests interleave exporters there).
func SetBeforeCommit(r *Runner, f func()) { r.beforeCommit = f }

// MarkDependency sets sellersnap_dependency_up as the daemon's check does.
func MarkDependency(m *Metrics, dependency, job string, up bool) { m.dependencyUp(dependency, job, up) }
