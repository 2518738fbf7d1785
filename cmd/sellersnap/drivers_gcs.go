//go:build !nogcs

package main

// gs:// buckets. The GCS client brings gRPC and its xDS stack: about 18 MB
// of the binary and most of its package initialisers. Build with -tags
// nogcs to leave it out (docs/deploy.md, "Binary size").
import _ "gocloud.dev/blob/gcsblob"

func init() { drivers = append(drivers, "gs") }
