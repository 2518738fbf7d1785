package sinks

import (
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"gocloud.dev/gcerrors"
	"google.golang.org/api/googleapi"
)

// Transient reports whether a bucket error may go away on its own:
// throttling (429), timeouts (408), 5xx answers, and connections that broke
// or were refused. Permissions, missing buckets, missing credentials and a
// full or read-only file system are permanent. The drivers' own
// classification (gcerrors) comes first; an S3 UploadPart answered 429 or
// 503 arrives unclassified, so the HTTP status of each SDK's error is
// looked at too.
func Transient(err error) bool {
	if err == nil || missingCredentials(err) {
		return false
	}
	switch gcerrors.Code(err) {
	case gcerrors.ResourceExhausted, gcerrors.Internal, gcerrors.DeadlineExceeded:
		return true
	case gcerrors.PermissionDenied, gcerrors.NotFound, gcerrors.InvalidArgument, gcerrors.FailedPrecondition, gcerrors.Unimplemented:
		return false
	}
	status := 0
	var awsErr interface{ HTTPStatusCode() int }
	var gcsErr *googleapi.Error
	var azErr *azcore.ResponseError
	switch {
	case errors.As(err, &awsErr):
		status = awsErr.HTTPStatusCode()
	case errors.As(err, &gcsErr):
		status = gcsErr.Code
	case errors.As(err, &azErr):
		status = azErr.StatusCode
	}
	if status == 429 || status == 408 || status >= 500 {
		return true
	}
	return brokenConnection(err)
}

// brokenConnection reports whether err is a network connection that broke,
// timed out or was refused: transient for a bucket and a database alike.
// A bare errno from a file system (EACCES, EROFS, ENOSPC of a file://
// bucket) is not one, though syscall.Errno satisfies net.Error: only its
// timeouts are. Socket errors come as *net.OpError, HTTP ones as *url.Error.
func brokenConnection(err error) bool {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		if _, errno := netErr.(syscall.Errno); !errno || netErr.Timeout() {
			return true
		}
	}
	return false
}

// IsNotFound reports whether err says an object (or the bucket) does not
// exist.
func IsNotFound(err error) bool { return gcerrors.Code(err) == gcerrors.NotFound }

// IsPermissionDenied reports whether the bucket refused an operation.
func IsPermissionDenied(err error) bool { return gcerrors.Code(err) == gcerrors.PermissionDenied }

// missingCredentials reports an AWS request that never left the process
// because no credentials were found (the SDK has no error type for it: its
// signer wraps the provider chain's error in "get identity: …"). Retrying
// it only waits on the EC2 metadata endpoint again.
func missingCredentials(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "get identity: ") && strings.Contains(msg, "credentials")
}

// credentialsHint is appended to an error of an s3:// bucket that found no
// credentials.
const credentialsHint = " (no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an IAM role; the URL's profile= parameter picks a profile too)"
