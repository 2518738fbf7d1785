//go:build !noazure

package main

// azblob:// buckets. Build with -tags noazure to leave the Azure SDK out
// (docs/deploy.md, "Binary size").
import _ "gocloud.dev/blob/azureblob"

func init() { drivers = append(drivers, "azblob") }
