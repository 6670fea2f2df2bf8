// Command activated is an HTTP server that takes its listening sockets
// from systemd socket activation (go-systemd's activation package) and
// knows nothing else about restarts: run it under systemd, or under
// `handoff run`, which gives it zero-downtime reloads.
//
//	activated [-accept-delay DURATION] [-drain DURATION]
//
// GET / answers 200 with a body whose first line is the pid of the process
// that served it. Once serving it sends READY=1 to NOTIFY_SOCKET, if set.
// SIGTERM or SIGINT drains and exits 0.
//
// Draining without a connection handover: stop accepting, answer the next
// request on each open connection with "Connection: close", and close a
// connection only once it has been idle for a while. Closing an idle
// keep-alive connection at once would race with a client that is sending
// its next request on it, and that request would fail.
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
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/oklog/run"
)

func main() {
	acceptDelay := flag.Duration("accept-delay", 0, "wait this long before taking the sockets, as a server with a slow start would")
	drain := flag.Duration("drain", 30*time.Second, "longest drain after SIGTERM")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("pid", os.Getpid())
	if err := serve(log, *acceptDelay, *drain); err != nil {
		log.Error("activated failed", "err", err)
		os.Exit(1)
	}
}

func serve(log *slog.Logger, acceptDelay, drain time.Duration) error {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	if acceptDelay > 0 {
		log.Info("starting slowly", "delay", acceptDelay)
		select {
		case <-time.After(acceptDelay):
		case sig := <-stop:
			log.Info("stopped before serving", "signal", sig.String())
			return nil
		}
	}
	listeners, err := activation.Listeners()
	if err != nil {
		return err
	}
	if len(listeners) == 0 {
		return errors.New("no sockets passed (LISTEN_FDS): run under systemd socket activation or handoff run")
	}

	pid := os.Getpid()
	d := &drainer{idle: map[net.Conn]bool{}}
	srv := &http.Server{
		Handler: d.handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%d\n", pid)
		})),
		ReadHeaderTimeout: 10 * time.Second,
		ConnState:         d.track,
	}

	ctx, cancel := context.WithCancel(context.Background())
	var g run.Group
	var serving sync.WaitGroup // Serve calls that have not returned
	for _, ln := range listeners {
		if ln == nil {
			continue // not a listening socket
		}
		serving.Add(1)
		g.Add(func() error {
			err := srv.Serve(ln)
			serving.Done()
			if !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				return err
			}
			<-ctx.Done()
			return nil
		}, func(error) { cancel() })
	}
	g.Add(func() error {
		select {
		case sig := <-stop:
			log.Info("draining", "signal", sig.String())
		case <-ctx.Done():
			return nil
		}
		for _, ln := range listeners {
			if ln != nil {
				ln.Close() // this process's copy only: the socket lives on in the others
			}
		}
		// Once Serve has returned, every connection it accepted has been
		// tracked (ConnState runs before the next Accept).
		serving.Wait()
		dctx, dcancel := context.WithTimeout(context.Background(), drain)
		defer dcancel()
		d.wait(dctx)
		// Close the connections left; the listeners are closed already,
		// and closing one twice is no failure.
		if err := srv.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	}, func(error) { cancel() })

	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("sd_notify failed", "err", err)
	}
	log.Info("serving", "sockets", len(listeners))
	return g.Run()
}

// idleGrace is how long a connection must stay idle, once draining,
// before it is closed: a keep-alive client that is about to send its next
// request has done so by then, and gets an answer with Connection: close.
const idleGrace = time.Second

// drainer tracks connections so that draining closes each one only when
// no request can be in flight on it.
type drainer struct {
	mu       sync.Mutex
	draining bool
	idle     map[net.Conn]bool // open connections: true if idle
	since    time.Time         // when draining started
}

func (d *drainer) track(c net.Conn, state http.ConnState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch state {
	case http.StateNew, http.StateActive:
		d.idle[c] = false
	case http.StateIdle:
		d.idle[c] = true
	case http.StateClosed, http.StateHijacked:
		delete(d.idle, c)
	}
}

// handler marks responses "Connection: close" once draining.
func (d *drainer) handler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		draining := d.draining
		d.mu.Unlock()
		if draining {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

// wait starts draining and returns once every connection is closed, or
// only idle ones remain past idleGrace (they are closed then), or ctx
// ends.
func (d *drainer) wait(ctx context.Context) {
	d.mu.Lock()
	d.draining, d.since = true, time.Now()
	d.mu.Unlock()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		d.mu.Lock()
		busy := 0
		for _, idle := range d.idle {
			if !idle {
				busy++
			}
		}
		done := len(d.idle) == 0 || (busy == 0 && time.Since(d.since) >= idleGrace)
		d.mu.Unlock()
		if done {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
