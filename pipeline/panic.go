package pipeline

import (
	"fmt"
	"runtime/debug"
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
