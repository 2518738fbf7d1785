package pipeline

import (
	"fmt"
	"runtime/debug"

	"github.com/sellersnap/sellersnap/sinks"
)

// PanicError is a panic recovered in a goroutine an export started (a
// stage, or the unit's own, Arrow's writers included): it fails that unit,
// not the process, and the next pass tries the unit again.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic in export: %v", e.Value) }

// guard runs f and returns the panic it raised, if any, as a *PanicError.
func guard(f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	return f()
}

// cause is err, or the write error of obj that a writer panicked over
// instead of returning it: Arrow's Parquet writer panics ("failed to
// write magic number") when the disk is full, and the error it dropped
// (write …: no space left on device) is what the operator must read.
func cause(err error, obj *sinks.Object) error {
	if _, ok := err.(*PanicError); ok && obj.Err() != nil {
		return obj.Err()
	}
	if _, ok := err.(*PanicError); ok {
		return fmt.Errorf("write %s: %w", obj.Key(), err)
	}
	return err
}
