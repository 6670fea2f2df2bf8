//go:build unix

package main

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/handoffd/handoff/internal/sdnotify"
)

// listenSpec is one -listen: a socket the wrapper holds for its children.
type listenSpec struct {
	name    string // LISTEN_FDNAMES entry; "" for none
	network string // tcp, tcp4, tcp6, udp, udp4, udp6, unix
	address string // host:port, or a path
}

// stream reports whether the socket is a listening (stream) socket.
func (s listenSpec) stream() bool {
	return !strings.HasPrefix(s.network, "udp")
}

func (s listenSpec) String() string {
	u := s.network + "://" + s.address
	if s.name != "" {
		return s.name + "=" + u
	}
	return u
}

// listenFlag collects the repeatable -listen.
type listenFlag []listenSpec

func (l *listenFlag) String() string { return "" }

func (l *listenFlag) Set(s string) error {
	spec, err := parseListen(s)
	if err != nil {
		return err
	}
	*l = append(*l, spec)
	return nil
}

// parseListen reads [NAME=]URL.
func parseListen(s string) (listenSpec, error) {
	var spec listenSpec
	raw := s
	if name, rest, ok := strings.Cut(s, "="); ok && !strings.Contains(name, "://") {
		if err := sdnotify.CheckFDName(name); err != nil {
			return spec, fmt.Errorf("%q: %w", s, err)
		}
		spec.name, raw = name, rest
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" || u.Opaque != "" {
		return spec, fmt.Errorf("%q is not a URL such as tcp://127.0.0.1:8080 or unix:///run/app.sock", s)
	}
	spec.network = u.Scheme
	switch u.Scheme {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
		if u.Path != "" || u.RawQuery != "" || u.User != nil {
			return spec, fmt.Errorf("%q: want %s://HOST:PORT and nothing else", s, u.Scheme)
		}
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil {
			return spec, fmt.Errorf("%q: want %s://HOST:PORT: %w", s, u.Scheme, err)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return spec, fmt.Errorf("%q: bad port %q", s, port)
		}
		if host != "" && net.ParseIP(host) == nil {
			return spec, fmt.Errorf("%q: HOST must be an IP address, not %q", s, host)
		}
		spec.address = u.Host
	case "unix":
		if u.Host != "" || u.Path == "" {
			return spec, fmt.Errorf("%q: want unix:///absolute/path", s)
		}
		spec.address = u.Path
	default:
		return spec, fmt.Errorf("%q: unknown scheme %q (tcp, tcp4, tcp6, udp, udp4, udp6, unix)", s, u.Scheme)
	}
	return spec, nil
}
