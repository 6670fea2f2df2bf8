package main

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
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

// parseListen reads [NAME=]URL.
func parseListen(s string) (listenSpec, error) {
	var spec listenSpec
	raw := s
	if name, rest, ok := strings.Cut(s, "="); ok && !strings.Contains(name, "://") {
		if err := checkFDName(name); err != nil {
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

// checkFDName applies systemd's rules for FileDescriptorName=: printable
// ASCII, no colon (the LISTEN_FDNAMES separator), at most 255 bytes.
func checkFDName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("socket name must be 1 to 255 characters")
	}
	for _, r := range name {
		if r <= ' ' || r > '~' || r == ':' {
			return fmt.Errorf("socket name %q: only printable ASCII, no spaces or colons", name)
		}
	}
	return nil
}
