//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/handoffd/handoff/internal/procfs"
)

// readyPoll is how often readiness is checked.
var readyPoll = 10 * time.Millisecond

// readiness decides when a new child is ready.
type readiness struct {
	spec   readySpec
	notify *notifySocket // nil unless spec.usesNotify()
}

// errExited says the child exited before it was ready.
var errExited = errors.New("exited before it was ready")

// wait returns nil once c is ready, errExited if it exits first, or
// ctx's error.
func (r *readiness) wait(ctx context.Context, c *child) error {
	tick := time.NewTicker(readyPoll)
	defer tick.Stop()
	for {
		var changed <-chan struct{}
		if r.notify != nil {
			changed = r.notify.changed()
		}
		ok, err := r.check(ctx, c)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-c.done:
			return errExited
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-tick.C:
		}
	}
}

// check looks once.
func (r *readiness) check(ctx context.Context, c *child) (bool, error) {
	switch r.spec.mode {
	case readyNotify:
		return r.notify.state(c.pid).ready, nil
	case readyAccepting:
		return procfs.Accepting(c.pid, c.gen.inodes())
	case readyAuto:
		// A child that speaks sd_notify, or whose predecessors did, must
		// also say READY=1: a Go server, say, is seen accepting as soon as
		// it creates its listeners, which may be before it is ready.
		if st := r.notify.state(c.pid); !st.ready && (st.spoke || r.notify.notifies()) {
			return false, nil
		}
		return procfs.Accepting(c.pid, c.gen.inodes())
	case readyTCP:
		return probeTCP(ctx, r.spec.addr), nil
	case readyHTTP:
		return probeHTTP(ctx, r.spec.url), nil
	case readyDelay:
		return time.Since(c.started) >= r.spec.delay, nil
	}
	return false, fmt.Errorf("unknown ready mode %d", r.spec.mode)
}

// probeClient keeps no connection between probes.
var probeClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

func probeTCP(ctx context.Context, addr string) bool {
	d := net.Dialer{Timeout: probeTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func probeHTTP(ctx context.Context, u string) bool {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return false
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 300
}
