package main

import (
	"net/url"
	"slices"

	"github.com/sellersnap/sellersnap/config"
)

// drivers are the optional bucket schemes this binary was built with
// (drivers_*.go); s3://, file:// and mem:// are always there.
var drivers []string

// optionalDrivers names the build tag that leaves each optional scheme out.
var optionalDrivers = map[string]string{"gs": "nogcs", "azblob": "noazure"}

// checkDriver fails a job whose destination needs a driver this binary was
// built without, at load time (exit 2) rather than at its first export.
func checkDriver(j *config.Job, bad func(field, format string, args ...any)) {
	u, err := url.Parse(j.Destination)
	if err != nil {
		return // config says what is wrong with it
	}
	if tag, optional := optionalDrivers[u.Scheme]; optional && !slices.Contains(drivers, u.Scheme) {
		bad("destination", "%s:// buckets are not in this binary (built with -tags %s); the release binaries and the image have every driver", u.Scheme, tag)
	}
}
