package pipeline

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/jackc/pgx/v5/pgconn"
	"gocloud.dev/gcerrors"

	"github.com/sellersnap/sellersnap/sources"
	"google.golang.org/api/googleapi"
)

// Backoff bounds the retries of transient errors within one export:
// exponential from Initial to Max, with jitter, Attempts tries in all.
type Backoff struct {
	Attempts int
	Initial  time.Duration
	Max      time.Duration
}

// retry calls f until it succeeds, fails permanently, or the attempts are
// used up. It returns f's last error.
func (r *Runner) retry(ctx context.Context, job string, what []any, f func() error) error {
	b := r.Retry
	wait := b.Initial
	for attempt := 1; ; attempt++ {
		err := f()
		if err == nil || attempt >= b.Attempts || !transient(err) || ctx.Err() != nil {
			return err
		}
		d := jitter(max(wait, time.Millisecond))
		r.Metrics.retried(job)
		r.logger().Warn("transient error; retrying", append(what, "attempt", attempt, "in", d.Round(time.Millisecond), "err", err)...)
		if !sleep(ctx, d) {
			return err
		}
		wait = min(wait*2, b.Max)
	}
}

// transient reports whether err may go away on its own: lost or refused
// connections, serialization failures and deadlocks, a server shutting
// down, bucket throttling (429) and 5xx. Missing columns, permissions and
// bad data are permanent.
func transient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, errExportedElsewhere) {
		return false
	}
	if errors.Is(err, sources.ErrLockLost) {
		return true // the next attempt takes the lock again, or finds the unit exported
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code[:2] == "08", // connection exception
			pgErr.Code == "40001", pgErr.Code == "40P01", // serialization failure, deadlock
			pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03", // admin/crash shutdown, cannot connect now
			pgErr.Code == "53300": // too many connections
			return true
		}
		return false
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	// syscall.Errno satisfies net.Error too: a bare errno (EACCES, EROFS,
	// ENOSPC from a file:// bucket) is a network error only if it is a
	// timeout; socket errors come as *net.OpError, HTTP ones as *url.Error.
	var netErr net.Error
	if errors.As(err, &netErr) {
		if _, errno := netErr.(syscall.Errno); !errno || netErr.Timeout() {
			return true
		}
	}
	var connectErr *pgconn.ConnectError
	var stalled *sources.StalledError
	if errors.As(err, &connectErr) || errors.As(err, &stalled) {
		return true
	}
	switch gcerrors.Code(err) {
	case gcerrors.ResourceExhausted, gcerrors.Internal, gcerrors.DeadlineExceeded:
		return true
	}
	// Bucket errors the driver could not classify (gcerrors.Unknown): an
	// S3 UploadPart answered 429 or 503 arrives this way.
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
	return status == 429 || status == 408 || status >= 500
}
