package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// versionReport is what `sellersnap version` prints: the version, the
// commit it was built from, the Go toolchain and platform, and the
// versions of the libraries whose behaviour the files depend on.
func versionReport() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sellersnap %s\n", toolVersion())
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b.String()
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if commit != "" {
		settings["vcs.revision"] = commit
	}
	if rev := settings["vcs.revision"]; rev != "" {
		if t := settings["vcs.time"]; t != "" {
			rev += " (" + t + ")"
		}
		if settings["vcs.modified"] == "true" {
			rev += ", modified"
		}
		fmt.Fprintf(&b, "  commit   %s\n", rev)
	}
	fmt.Fprintf(&b, "  go       %s %s/%s\n", bi.GoVersion, runtime.GOOS, runtime.GOARCH)
	for _, lib := range []struct{ name, path string }{
		{"arrow", "github.com/apache/arrow/go/v17"},
		{"pgx", "github.com/jackc/pgx/v5"},
		{"gocloud", "gocloud.dev"},
	} {
		for _, d := range bi.Deps {
			if d.Path == lib.path {
				if d.Replace != nil {
					d = d.Replace
				}
				fmt.Fprintf(&b, "  %-8s %s %s\n", lib.name, lib.path, d.Version)
			}
		}
	}
	return b.String()
}

func toolVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
