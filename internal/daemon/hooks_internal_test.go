package daemon

import "errors"

// MarkDependency sets sellersnap_dependency_up as the daemon's check does.
func MarkDependency(m *Metrics, dependency, job string, up bool) {
	var err error
	if !up {
		err = errors.New("down")
	}
	m.dependencyUp(dependency, job, err)
}
