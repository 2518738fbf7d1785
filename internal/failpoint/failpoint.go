package failpoint

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

var (
	enabled atomic.Bool
	mu      sync.Mutex
	armed   map[string]int // point → hits left before the kill
	parsed  sync.Once
)

// Enable makes Hit honour SELLERSNAP_FAILPOINT. Only test binaries call it
// (cmd/sellersnap's TestMain, when it runs as the program): a release
// binary never kills itself, whatever its environment says.
func Enable() { enabled.Store(true) }

func parse() {
	v := os.Getenv("SELLERSNAP_FAILPOINT")
	if v == "" {
		return
	}
	name, n := v, 1
	if i := strings.LastIndexByte(v, ':'); i > 0 {
		if k, err := strconv.Atoi(v[i+1:]); err == nil && k > 0 {
			name, n = v[:i], k
		}
	}
	armed = map[string]int{name: n}
}

// Hit marks that the process reached point name.
func Hit(name string) {
	if !enabled.Load() {
		return
	}
	parsed.Do(parse)
	if armed == nil {
		return
	}
	mu.Lock()
	defer mu.Unlock()
	left, ok := armed[name]
	if !ok {
		return
	}
	if left--; left > 0 {
		armed[name] = left
		return
	}
	// SIGKILL on Unix, TerminateProcess on Windows: no deferred code runs.
	if p, err := os.FindProcess(os.Getpid()); err == nil {
		_ = p.Kill()
	}
	select {} // the signal is on its way
}
