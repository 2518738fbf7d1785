package daemon

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/sellersnap/sellersnap/config"
	"github.com/sellersnap/sellersnap/sources"
)

// listen LISTENs for completed runs and signals every per_run job on each
// notification, reconnecting with backoff when the connection drops. On
// every (re)connect the jobs are signalled too: notifications sent while
// it was down are lost, the runs they announced are not.
func (d *Daemon) listen(ctx context.Context) {
	backoff := time.Second
	recovering := false
	for ctx.Err() == nil {
		l, err := d.Runner.Source.Listen(ctx, d.NotifyChannel)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			recovering = true
			d.setListenState("reconnecting")
			d.logger().Warn("LISTEN failed; retrying", "channel", d.NotifyChannel, "in", backoff, "err", err)
			if !wait(ctx, backoff/2+rand.N(backoff/2+1)) {
				return
			}
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		if recovering {
			d.logger().Info("LISTEN recovered", "channel", d.NotifyChannel)
		} else {
			d.logger().Info("listening for notifications", "channel", d.NotifyChannel)
		}
		d.setListenState("listening")
		recovering = false
		backoff = time.Second
		d.firePerRun("listen")
		for {
			payload, err := l.Wait(ctx)
			if err != nil {
				l.Close()
				if ctx.Err() == nil {
					d.logger().Warn("LISTEN connection lost; reconnecting", "channel", d.NotifyChannel, "err", err)
					recovering = true
					d.setListenState("reconnecting")
				}
				break
			}
			d.logger().Debug("notified", "channel", d.NotifyChannel, "payload", payload)
			var first []string
			if sources.IsRunID(payload) {
				first = append(first, payload)
			}
			d.firePerRun("notify", first...)
		}
	}
}

func (d *Daemon) setListenState(s string) {
	d.mu.Lock()
	d.listenState = s
	d.mu.Unlock()
}

// ListenState is "listening", "reconnecting", "connecting" (not yet) or
// "off" (daemon.notify_channel is empty).
func (d *Daemon) ListenState() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.NotifyChannel == "":
		return "off"
	case d.listenState == "":
		return "connecting"
	}
	return d.listenState
}

func (d *Daemon) firePerRun(why string, runIDs ...string) {
	for _, w := range d.workers {
		if w.job.Mode == config.ModePerRun {
			d.fire(w, time.Time{}, why, runIDs...)
		}
	}
}
