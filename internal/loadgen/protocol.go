package loadgen

import (
	"crypto/tls"
	"fmt"
	"net"
)

// Protocol says what requests speak on the wire.
type Protocol int

const (
	// HTTP1 is HTTP/1.1 over TCP, on raw connections.
	HTTP1 Protocol = iota
	// TLS is HTTP/1.1 over TLS (ALPN http/1.1), on raw connections.
	TLS
	// H2C is HTTP/2 over TCP with prior knowledge, through net/http's
	// Transport, its retries counted as failures (kind Retried).
	H2C
	// H2 is HTTP/2 over TLS (ALPN h2), as H2C.
	H2
)

// Protocols lists the protocols in report order.
var Protocols = []Protocol{HTTP1, TLS, H2C, H2}

func (p Protocol) String() string {
	switch p {
	case HTTP1:
		return "http1"
	case TLS:
		return "tls"
	case H2C:
		return "h2c"
	case H2:
		return "h2"
	}
	return fmt.Sprintf("protocol(%d)", int(p))
}

// ParseProtocol is the inverse of Protocol.String.
func ParseProtocol(s string) (Protocol, error) {
	for _, p := range Protocols {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown protocol %q (http1, tls, h2c, h2)", s)
}

// HTTP2 reports whether p is HTTP/2, with or without TLS.
func (p Protocol) HTTP2() bool { return p == H2C || p == H2 }

// Secure reports whether p runs over TLS.
func (p Protocol) Secure() bool { return p == TLS || p == H2 }

// tlsConfig is the client's TLS configuration for cfg: a clone of
// cfg.TLSConfig, or one that skips verification, offering only the
// protocol's ALPN name, its ServerName Addr's host unless set.
func (cfg Config) tlsConfig() *tls.Config {
	c := &tls.Config{InsecureSkipVerify: true}
	if cfg.TLSConfig != nil {
		c = cfg.TLSConfig.Clone()
	}
	if c.ServerName == "" { // as tls.Dialer and http.Transport would
		c.ServerName, _, _ = net.SplitHostPort(cfg.Addr)
	}
	c.NextProtos = []string{"http/1.1"}
	if cfg.Protocol == H2 {
		c.NextProtos = []string{"h2"}
	}
	return c
}
