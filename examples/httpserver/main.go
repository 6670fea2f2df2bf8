// Command httpserver is a small HTTP server that restarts without failing
// a request. GET / answers 200 with a body whose first line is the pid of
// the process that served it.
//
//	httpserver -addr HOST:PORT -socket PATH [-pidfile PATH] [-delay DURATION]
//	    [-canary-window DURATION] [-h2c | -tls-cert FILE -tls-key FILE]
//
// It speaks HTTP/1.1; with -h2c, HTTP/2 without TLS too (prior knowledge,
// as h2load and curl --http2-prior-knowledge send it); with -tls-cert and
// -tls-key, only TLS, HTTP/1.1 or HTTP/2 as ALPN chooses. Every protocol
// drains without a failed request: HTTP/2 in two GOAWAY phases (see
// docs/http2.md).
//
// SIGHUP upgrades to a fresh copy of the binary (read from disk again).
// Starting a second httpserver with the same -socket and -addr while one
// runs is a takeover: the second takes the sockets, the first drains and
// exits. SIGTERM or SIGINT drains and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/oklog/run"
)

const (
	// readyTimeout is how long a successor may take to become ready.
	readyTimeout = 10 * time.Second
	// drainTimeout bounds the drain after a handover or a stop signal.
	drainTimeout = 30 * time.Second
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to serve HTTP on")
	socket := flag.String("socket", "", "control socket path (default: derived from the service name)")
	pidfile := flag.String("pidfile", "", "file to keep the serving process's pid in")
	delay := flag.Duration("delay", 0, "wait this long before answering, to make in-flight requests visible")
	canary := flag.Duration("canary-window", handoff.DefaultCanaryWindow, "after an upgrade, stand by this long to take the service back should the successor die (negative: off)")
	var p protocols
	flag.BoolVar(&p.h2c, "h2c", false, "serve HTTP/2 without TLS (prior knowledge) beside HTTP/1.1")
	flag.StringVar(&p.cert, "tls-cert", "", "serve TLS (HTTP/1.1 and HTTP/2 by ALPN) with this PEM certificate (needs -tls-key)")
	flag.StringVar(&p.key, "tls-key", "", "the PEM private key of -tls-cert")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := p.check(); err != nil {
		log.Error("httpserver: bad flags", "err", err)
		os.Exit(2)
	}
	if err := serve(log, *addr, *socket, *pidfile, *delay, *canary, p); err != nil {
		log.Error("httpserver failed", "err", err)
		os.Exit(1)
	}
}

// protocols is what the server speaks besides cleartext HTTP/1.1.
type protocols struct {
	h2c       bool   // HTTP/2 without TLS too
	cert, key string // TLS only, with this certificate and key
}

func (p protocols) check() error {
	switch {
	case (p.cert == "") != (p.key == ""):
		return errors.New("-tls-cert and -tls-key go together")
	case p.h2c && p.cert != "":
		return errors.New("-h2c is HTTP/2 without TLS: not with -tls-cert")
	}
	return nil
}

// server returns the http.Server that speaks p, and how to serve it.
func (p protocols) server(h http.Handler) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	if p.h2c {
		var ps http.Protocols
		ps.SetHTTP1(true)
		ps.SetUnencryptedHTTP2(true)
		srv.Protocols = &ps
	}
	return srv
}

func (p protocols) serve(srv *handoff.HTTPServer, ln net.Listener) error {
	if p.cert != "" {
		return srv.ServeTLS(ln, p.cert, p.key)
	}
	return srv.Serve(ln)
}

func serve(log *slog.Logger, addr, socket, pidfile string, delay, canary time.Duration, p protocols) error {
	// Catch the signals before anything else: once this process is ready,
	// a SIGHUP or SIGTERM may come at any moment.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	upg, err := handoff.New(context.Background(), handoff.Config{
		Name:         "httpserver",
		Socket:       socket,
		PIDFile:      pidfile,
		ReadyTimeout: readyTimeout,
		CanaryWindow: canary,
		Logger:       log,
	})
	if err != nil {
		return err
	}
	defer upg.Close()
	ln, err := upg.Listen("tcp", addr)
	if err != nil {
		return err
	}

	pid := os.Getpid()
	generation := upg.Generation()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		fmt.Fprintf(w, "%d\ngeneration %d\n", pid, generation)
	})
	srv := &handoff.HTTPServer{Server: p.server(mux), Upgrader: upg}

	ctx, cancel := context.WithCancel(context.Background())
	var g run.Group
	g.Add(func() error { // serve until the drain is over
		if err := p.serve(srv, ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		<-ctx.Done()
		return nil
	}, func(error) { cancel() })
	g.Add(func() error { // ready once serving, then upgrade on SIGHUP
		// Serving starts beside Ready, not after it: connections the
		// predecessor hands over from the moment it hears ready are
		// served at once.
		if err := upg.Ready(); err != nil {
			return err
		}
		return upgradeOnHangup(ctx, log, upg, hup)
	}, func(error) { cancel() })
	g.Add(func() error { // a successor took over, or SIGTERM/SIGINT: drain
		select {
		case <-upg.Exit():
			log.Info("successor took over; draining")
		case sig := <-stop:
			log.Info("stopping", "signal", sig.String())
			upg.Stop()
		case <-ctx.Done():
			// Ready or Serve failed: the predecessor, if any, still
			// serves; finish what this process accepted.
		}
		dctx, dcancel := context.WithTimeout(context.Background(), drainTimeout)
		defer dcancel()
		return srv.Shutdown(dctx)
	}, func(error) { cancel() })

	return g.Run()
}

// upgradeOnHangup upgrades on every SIGHUP until ctx ends. A failed
// upgrade is logged; this process keeps serving.
func upgradeOnHangup(ctx context.Context, log *slog.Logger, upg *handoff.Upgrader, hup <-chan os.Signal) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			if err := upg.Upgrade(ctx); err != nil {
				log.Warn("upgrade failed; still serving", "err", err)
			}
		}
	}
}
