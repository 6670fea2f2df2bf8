// Command websocket is a WebSocket echo server whose connections survive
// restarts. GET /ws upgrades to a WebSocket; every text message X is
// answered with "PID X #N": the pid of the process that answered, and N,
// how many messages this connection has had answered, a per-connection
// counter that lives in the session's state. GET / is a page that opens a
// WebSocket and shows the answers live.
//
//	websocket -addr HOST:PORT -socket PATH [-pidfile PATH] [-canary-window DURATION]
//	    [-tls-cert FILE -tls-key FILE]
//
// SIGHUP upgrades to a fresh copy of the binary (read from disk again).
// Once the successor has taken over, each WebSocket is handed to it between
// two frames, with the bytes already read but not yet answered and its
// counter in the state blob (Upgrader.SendIdleConn: its client speaks
// next); the successor resumes it
// (Upgrader.AcceptConn). The client sees no close frame, no reset, no gap.
// A connection that cannot move is closed with 1001 "going away" after its
// in-flight message: with -tls-cert and -tls-key it serves wss:// and
// https://, and a TLS connection cannot move (its session keys cannot
// leave the process). SIGTERM or SIGINT closes every WebSocket that way
// and exits 0. docs/websocket.md explains it.
package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
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
	addr := flag.String("addr", "127.0.0.1:8080", "address to serve HTTP and WebSockets on")
	socket := flag.String("socket", "", "control socket path (default: derived from the service name)")
	pidfile := flag.String("pidfile", "", "file to keep the serving process's pid in")
	canary := flag.Duration("canary-window", handoff.DefaultCanaryWindow, "after an upgrade, stand by this long to take the service back should the successor die (negative: off)")
	var tlsFiles tlsFiles
	flag.StringVar(&tlsFiles.cert, "tls-cert", "", "serve TLS with this certificate (PEM); WebSockets over TLS are closed with 1001 at a restart, not moved")
	flag.StringVar(&tlsFiles.key, "tls-key", "", "the key of -tls-cert (PEM)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := serve(log, *addr, *socket, *pidfile, *canary, tlsFiles); err != nil {
		log.Error("websocket failed", "err", err)
		os.Exit(1)
	}
}

// tlsFiles are the certificate and key to serve TLS with; none for plain
// HTTP.
type tlsFiles struct{ cert, key string }

func serve(log *slog.Logger, addr, socket, pidfile string, canary time.Duration, tlsFiles tlsFiles) error {
	// Catch the signals before anything else: once this process is ready,
	// a SIGHUP or SIGTERM may come at any moment.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	upg, err := handoff.New(context.Background(), handoff.Config{
		Name:         "websocket",
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

	sessions := newSessions(upg, log)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", servePage)
	mux.HandleFunc("GET /ws", sessions.upgrade)
	srv := &handoff.HTTPServer{
		Server:   &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		Upgrader: upg,
	}

	ctx, cancel := context.WithCancel(context.Background())
	var g run.Group
	g.Add(func() error { // serve HTTP until the drain is over
		var err error
		if tlsFiles.cert != "" || tlsFiles.key != "" {
			err = srv.ServeTLS(ln, tlsFiles.cert, tlsFiles.key)
		} else {
			err = srv.Serve(ln)
		}
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		<-ctx.Done()
		return nil
	}, func(error) { cancel() })
	g.Add(func() error { // resume the sessions the predecessor hands over
		sessions.resume(ctx)
		<-ctx.Done() // the predecessor is gone: nothing more to resume
		return nil
	}, func(error) { cancel() })
	g.Add(func() error { // ready once serving, then upgrade on SIGHUP
		if err := upg.Ready(); err != nil {
			return err
		}
		return upgradeOnHangup(ctx, log, upg, hup)
	}, func(error) { cancel() })
	g.Add(func() error { // a successor took over, or SIGTERM/SIGINT: drain
		handOver := false
		select {
		case <-upg.Exit():
			log.Info("successor took over; handing the WebSockets over")
			handOver = true
		case sig := <-stop:
			log.Info("stopping", "signal", sig.String())
			upg.Stop()
		case <-ctx.Done():
			// Ready or Serve failed: the predecessor, if any, still
			// serves; close what this process took on.
		}
		dctx, dcancel := context.WithTimeout(context.Background(), drainTimeout)
		defer dcancel()
		// Sessions start moving (or closing) at once; the HTTP server's
		// drain, meanwhile, finishes the upgrades in flight, whose
		// sessions then go straight on.
		sessions.drain(handOver)
		err := srv.Shutdown(dctx)
		sessions.wait(dctx)
		return err
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
