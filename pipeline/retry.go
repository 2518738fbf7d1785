package pipeline

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/sellersnap/sellersnap/sinks"
	"github.com/sellersnap/sellersnap/sources"
)

// Backoff bounds the retries of transient errors within one export:
// exponential from Initial to Max, with jitter, Attempts tries in all.
type Backoff struct {
	Attempts int
	Initial  time.Duration
	Max      time.Duration
}

// transient reports whether err may go away on its own. The layer that
// knows the dependency decides: sources for database errors, sinks for
// bucket errors; a broken network connection is transient for both.
func transient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, errExportedElsewhere) {
		return false
	}
	return sources.Transient(err) || sinks.Transient(err)
}

// jitter returns a duration between d/2 and d.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// sleep waits d, or until ctx is done (then false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
