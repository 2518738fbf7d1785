package sinks_test

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"syscall"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"google.golang.org/api/googleapi"

	"github.com/sellersnap/sellersnap/sinks"
)

// TestTransientBucketErrors: throttling, 5xx and broken connections of
// each SDK are retried; refusals and file system errors are not.
func TestTransientBucketErrors(t *testing.T) {
	pathErr := func(errno syscall.Errno) error {
		return fmt.Errorf("commit x: %w", &fs.PathError{Op: "openat", Path: "org=a/x.csv", Err: errno})
	}
	for _, tc := range []struct {
		name      string
		err       error
		transient bool
	}{
		{"gcs 503", fmt.Errorf("write: %w", &googleapi.Error{Code: 503}), true},
		{"gcs 429", &googleapi.Error{Code: 429}, true},
		{"gcs 403", &googleapi.Error{Code: 403}, false},
		{"azure 500", &azcore.ResponseError{StatusCode: 500}, true},
		{"azure 408", &azcore.ResponseError{StatusCode: 408}, true},
		{"azure 404", &azcore.ResponseError{StatusCode: 404}, false},
		{"EACCES", pathErr(syscall.EACCES), false},
		{"ENOSPC", pathErr(syscall.ENOSPC), false},
		{"ETIMEDOUT errno", pathErr(syscall.ETIMEDOUT), true},
		{"reset", fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{"dial timeout", &url.Error{Op: "Put", URL: "http://x", Err: &net.OpError{Op: "dial", Err: errors.New("i/o timeout")}}, true},
		{"no credentials", errors.New("operation error S3: PutObject, get identity: get credentials: failed to refresh cached credentials, no EC2 IMDS role found, dial tcp 169.254.169.254:80: i/o timeout"), false},
		{"other", errors.New("boom"), false},
	} {
		if got := sinks.Transient(tc.err); got != tc.transient {
			t.Errorf("%s: Transient = %v, want %v", tc.name, got, tc.transient)
		}
	}
}
