package daemon

// MarkDependency sets sellersnap_dependency_up as the daemon's check does.
func MarkDependency(m *Metrics, dependency, job string, up bool) { m.dependencyUp(dependency, job, up) }
