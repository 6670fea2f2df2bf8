package main

import (
	"context"
	"net"
	"net/url"
	"strings"
	"time"
)

// readyMode is how the wrapper tells that a new child is ready.
type readyMode int

const (
	readyAuto      readyMode = iota // accepting, plus READY=1 from a child that speaks sd_notify
	readyNotify                     // READY=1 from the child's pid
	readyAccepting                  // the child waits for connections on every socket
	readyTCP                        // a private address accepts a connection
	readyHTTP                       // a private URL answers 2xx
	readyDelay                      // a fixed delay: last resort
)

// readySpec is a parsed -ready.
type readySpec struct {
	mode  readyMode
	addr  string // readyTCP: host:port; readyHTTP: the URL's host:port
	url   string // readyHTTP
	delay time.Duration
}

// usesNotify reports whether children get NOTIFY_SOCKET.
func (r readySpec) usesNotify() bool { return r.mode == readyAuto || r.mode == readyNotify }

func (r readySpec) String() string {
	switch r.mode {
	case readyNotify:
		return "notify"
	case readyAccepting:
		return "accepting"
	case readyTCP:
		return "tcp://" + r.addr
	case readyHTTP:
		return r.url
	case readyDelay:
		return r.delay.String()
	}
	return "auto"
}

// parseReady reads -ready.
func parseReady(s string) (readySpec, error) {
	switch s {
	case "auto":
		return readySpec{mode: readyAuto}, nil
	case "notify":
		return readySpec{mode: readyNotify}, nil
	case "accepting":
		return readySpec{mode: readyAccepting}, nil
	case "tcp", "http":
		return readySpec{}, usageErrorf("-ready %s needs an address the child owns alone (%s://HOST:PORT): a probe of the shared socket would be answered by the old child; use -ready accepting", s, s)
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return readySpec{}, usageErrorf("-ready %s: the delay must be positive", s)
		}
		return readySpec{mode: readyDelay, delay: d}, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return readySpec{}, usageErrorf("-ready %q: not a mode, URL or duration", s)
	}
	switch u.Scheme {
	case "tcp":
		if _, _, err := net.SplitHostPort(u.Host); err != nil || (u.Path != "" && u.Path != "/") {
			return readySpec{}, usageErrorf("-ready %q: want tcp://HOST:PORT", s)
		}
		return readySpec{mode: readyTCP, addr: u.Host}, nil
	case "http":
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			return readySpec{}, usageErrorf("-ready %q: want http://HOST:PORT/PATH", s)
		}
		return readySpec{mode: readyHTTP, addr: u.Host, url: s}, nil
	}
	return readySpec{}, usageErrorf("-ready %q: not a mode (auto, notify, accepting), tcp:// or http:// URL, or duration", s)
}

// probeTimeout bounds one probe, and the name lookup of a probe's host.
const probeTimeout = time.Second

// checkProbe refuses a probe at one of the shared sockets: the old child
// serves them too, so it could answer for a new child that is broken.
func (r readySpec) checkProbe(listen []listenSpec) error {
	if r.mode != readyTCP && r.mode != readyHTTP {
		return nil
	}
	for _, l := range listen {
		if l.stream() && l.network != "unix" && sameTCPAddress(r.addr, l.address) {
			return usageErrorf("-ready %s probes the shared socket %s: the old child would answer for the new one; probe an address the child owns alone, or use -ready accepting", r, l)
		}
	}
	return nil
}

// sameTCPAddress reports whether a connection to probe could reach a
// socket bound at bound: same port, and the same host, or a wildcard.
func sameTCPAddress(probe, bound string) bool {
	ph, pp, err1 := net.SplitHostPort(probe)
	bh, bp, err2 := net.SplitHostPort(bound)
	if err1 != nil || err2 != nil || pp != bp {
		return false
	}
	if bh == "" || ph == "" {
		return true
	}
	bip := net.ParseIP(bh)
	if bip != nil && bip.IsUnspecified() {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	pips, err := net.DefaultResolver.LookupIPAddr(ctx, ph)
	if err != nil {
		return strings.EqualFold(ph, bh)
	}
	for _, ip := range pips {
		if ip.IP.Equal(bip) || ip.IP.IsUnspecified() {
			return true
		}
	}
	return false
}
