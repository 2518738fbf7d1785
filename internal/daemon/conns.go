package daemon

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// connLimiter bounds the HTTP server's connections without letting the
// connections it holds starve a new one: every connection is accepted,
// and one over the limit makes the limiter close the oldest connection
// that is not serving a request (idle between keep-alive requests, or
// still sending its request), else the oldest of all. A client that holds
// a thousand idle, half-open or slow connections therefore holds at most
// max file descriptors and cannot keep a probe of /healthz waiting: the
// probe's connection is the newest, and its request is served in
// microseconds. It is an http.Server's ConnState hook.
type connLimiter struct {
	max   int
	mu    sync.Mutex
	conns map[net.Conn]connEntry
}

type connEntry struct {
	state http.ConnState
	since time.Time
}

func newConnLimiter(max int) *connLimiter {
	return &connLimiter{max: max, conns: map[net.Conn]connEntry{}}
}

// hook follows each connection's state; it runs in the accept loop for a
// new connection, so the limit holds before the next accept.
func (l *connLimiter) hook(c net.Conn, state http.ConnState) {
	l.mu.Lock()
	var evict net.Conn
	switch state {
	case http.StateClosed, http.StateHijacked:
		delete(l.conns, c)
	default:
		l.conns[c] = connEntry{state: state, since: time.Now()}
		if state == http.StateNew && len(l.conns) > l.max {
			evict = l.oldest(c)
			delete(l.conns, evict)
		}
	}
	l.mu.Unlock()
	if evict != nil {
		_ = evict.Close()
	}
}

// oldest returns the connection to close for newcomer: the one waiting
// the longest for a request, else the oldest in a request.
func (l *connLimiter) oldest(newcomer net.Conn) net.Conn {
	var waiting, busy net.Conn
	var waitingSince, busySince time.Time
	for c, e := range l.conns {
		if c == newcomer {
			continue
		}
		if e.state == http.StateActive {
			if busy == nil || e.since.Before(busySince) {
				busy, busySince = c, e.since
			}
			continue
		}
		if waiting == nil || e.since.Before(waitingSince) {
			waiting, waitingSince = c, e.since
		}
	}
	if waiting != nil {
		return waiting
	}
	return busy
}
