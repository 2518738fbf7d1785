package daemon_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sellersnap/sellersnap/internal/pipelinetest"
)

// TestProbesAnswerUnderAThousandHeldConnections: a client holds 1,000
// connections to the daemon's port (400 idle after one request, 300
// half-open that never send a byte, 300 sending a header byte every half
// second) while the daemon exports its start-up backlog and is then
// notified of a new run. Pass: 12 probes of /healthz and of /readyz, each
// on a new connection with the Kubernetes probe's 1 s timeout, all answer
// 200; the exports complete; the server never holds more than its limit.
func TestProbesAnswerUnderAThousandHeldConnections(t *testing.T) {
	f := newFixture(t, "")
	_, stop := f.daemon("@yearly", "sellers", true, 5*time.Second)
	defer stop()
	pipelinetest.WaitFor(t, "the HTTP server", 10*time.Second, func() bool { return f.daemons[0].Addr() != nil })
	addr := f.daemons[0].Addr().String()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		cancel()
		wg.Wait()
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		return c
	}
	for i := 0; i < 400; i++ {
		c := dial()
		if _, err := fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		// Read the answer when there is one (the limiter may close it).
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = http.ReadResponse(bufio.NewReader(c), nil)
	}
	for i := 0; i < 300; i++ {
		dial()
	}
	for i := 0; i < 300; i++ {
		c := dial()
		wg.Go(func() {
			_, _ = fmt.Fprintf(c, "GET / HTTP/1.1\r\n")
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if _, err := c.Write([]byte("X")); err != nil {
						return
					}
				}
			}
		})
	}

	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var took []time.Duration
	for i := 0; i < 12; i++ {
		for _, path := range []string{"/healthz", "/readyz"} {
			t0 := time.Now()
			resp, err := client.Get("http://" + addr + path)
			if err != nil {
				t.Errorf("probe %d of %s: %v", i, path, err)
				continue
			}
			resp.Body.Close()
			if path == "/healthz" {
				took = append(took, time.Since(t0))
			}
			if resp.StatusCode != http.StatusOK {
				t.Errorf("probe %d of %s: %s", i, path, resp.Status)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	slices.Sort(took)
	if len(took) > 0 {
		t.Logf("/healthz under 1,000 held connections: median %s, max %s (%d probes)", took[len(took)/2], took[len(took)-1], len(took))
	}
	runs, err := f.Src.CompletedRuns(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pipelinetest.WaitFor(t, "the start-up backlog", 30*time.Second, func() bool { return len(f.Manifests()) == len(runs) })
	id := pipelinetest.InsertRun(t, f.DBURL, f.AnyOrg(), 20, true)
	pipelinetest.WaitFor(t, "the notified run's manifest", 10*time.Second, func() bool { return f.Manifests()[id] })
}
