package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestTransientOrPermanent: lost connections and throttling are retried;
// a permission, a read-only or full file system, a missing column are not
// (syscall.Errno satisfies net.Error, which once made every errno
// "transient", EACCES included).
func TestTransientOrPermanent(t *testing.T) {
	pathErr := func(errno syscall.Errno) error {
		return fmt.Errorf("commit x: %w", &fs.PathError{Op: "openat", Path: "org=a/x.csv", Err: errno})
	}
	for _, tc := range []struct {
		name      string
		err       error
		transient bool
	}{
		{"EACCES", pathErr(syscall.EACCES), false},
		{"EPERM", pathErr(syscall.EPERM), false},
		{"EROFS", pathErr(syscall.EROFS), false},
		{"ENOSPC", pathErr(syscall.ENOSPC), false},
		{"os.ErrPermission", fmt.Errorf("x: %w", os.ErrPermission), false},
		{"missing column", &pgconn.PgError{Code: "42703"}, false},
		{"canceled", context.Canceled, false},
		{"ECONNRESET", fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{"ECONNREFUSED", &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}, true},
		{"dial timeout", &url.Error{Op: "Put", URL: "http://x", Err: &net.OpError{Op: "dial", Err: errors.New("i/o timeout")}}, true},
		{"ETIMEDOUT errno", pathErr(syscall.ETIMEDOUT), true},
		{"admin shutdown", &pgconn.PgError{Code: "57P01"}, true},
	} {
		if got := transient(tc.err); got != tc.transient {
			t.Errorf("%s: transient = %v, want %v", tc.name, got, tc.transient)
		}
	}
}
