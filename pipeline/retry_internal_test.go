package pipeline

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sellersnap/sellersnap/sources"
)

// TestTransientOrPermanent: the runner asks the layer that knows the
// dependency (sinks.Transient, sources.Transient; their own tests hold the
// details) and never retries a cancelled export or one another process
// published.
func TestTransientOrPermanent(t *testing.T) {
	for name, tc := range map[string]struct {
		err       error
		transient bool
	}{
		"bucket EACCES":      {fmt.Errorf("commit x: %w", &fs.PathError{Op: "openat", Path: "x.csv", Err: syscall.EACCES}), false},
		"os.ErrPermission":   {fmt.Errorf("x: %w", os.ErrPermission), false},
		"missing column":     {&pgconn.PgError{Code: "42703"}, false},
		"admin shutdown":     {&pgconn.PgError{Code: "57P01"}, true},
		"lock lost":          {fmt.Errorf("lock k: %w", sources.ErrLockLost), true},
		"reset":              {fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		"cancelled":          {context.Canceled, false},
		"exported elsewhere": {errExportedElsewhere, false},
	} {
		if got := transient(tc.err); got != tc.transient {
			t.Errorf("%s: transient = %v, want %v", name, got, tc.transient)
		}
	}
}
