package handoff_test

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/handoffd/handoff/handoff"
)

// An HTTP server that upgrades itself on SIGHUP (a fresh copy of the
// binary takes over) and stops on SIGTERM, draining without losing a
// request either way. examples/httpserver is the complete program.
func Example() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM) // before Ready: a SIGHUP may come at once

	ctx := context.Background()
	upg, err := handoff.New(ctx, handoff.Config{Name: "api", PIDFile: "/run/api.pid"})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Close()
	ln, err := upg.Listen("tcp", ":8080") // the predecessor's socket, or a new one
	if err != nil {
		log.Fatal(err)
	}
	srv := &handoff.HTTPServer{Server: &http.Server{Handler: http.NotFoundHandler()}, Upgrader: upg}
	go srv.Serve(ln)
	if err := upg.Ready(); err != nil { // the predecessor stops accepting now
		log.Fatal(err)
	}

	stopped := make(chan struct{})
	go func() {
		for sig := range sigs {
			if sig == syscall.SIGTERM {
				upg.Stop() // no successor: stop accepting, then drain
				close(stopped)
				return
			}
			if err := upg.Upgrade(ctx); err != nil {
				log.Print("upgrade failed; still serving: ", err)
			}
		}
	}()
	select {
	case <-upg.Exit(): // a successor took over: drain, handing idle connections to it
	case <-stopped:
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(dctx); err != nil {
		log.Print("drain cut short: ", err)
	}
}

// A server with long-lived sessions hands each one, with its state, to
// the successor, which resumes it. examples/counter is a complete one.
func ExampleUpgrader_SendConn() {
	ctx := context.Background()
	upg, err := handoff.New(ctx, handoff.Config{Name: "chat"})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Close()

	// As the successor: resume what the predecessor handed over.
	go func() {
		for {
			conn, state, err := upg.AcceptConn(ctx)
			if errors.Is(err, io.EOF) {
				return // the predecessor is gone, and every session it sent taken
			}
			if err != nil {
				log.Print(err)
				return
			}
			go resume(conn, state)
		}
	}()
	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}

	// As the old process, once a successor took over: stop each session
	// between two messages and send it on.
	<-upg.Exit()
	for _, s := range sessions() {
		err := upg.SendConn(ctx, s.conn, s.state)
		switch {
		case err == nil: // the successor serves it now
		case errors.Is(err, handoff.ErrConnUnknown):
			log.Print("session lost or in the successor: ", err) // SendConn closed it here
		default:
			go resume(s.conn, s.state) // still ours: serve it to its end
		}
	}
}

// A server that only ever answers (an echo, a request-and-answer protocol)
// hands each idle session over with SendIdleConn: the successor holds it
// unadopted until its client sends, and AcceptConn (as above) returns it
// then. examples/websocket is a complete one.
func ExampleUpgrader_SendIdleConn() {
	ctx := context.Background()
	upg, err := handoff.New(ctx, handoff.Config{Name: "echo"})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Close()
	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	<-upg.Exit()
	for _, s := range sessions() { // each between two messages, nothing to send
		if err := upg.SendIdleConn(ctx, s.conn, s.state); err != nil && !errors.Is(err, handoff.ErrConnUnknown) {
			go resume(s.conn, s.state) // still ours: serve it to its end
		}
	}
}

// A UDP server: the successor reads from the very same socket, so no
// datagram queued during the upgrade is lost.
func ExampleUpgrader_ListenPacket() {
	ctx := context.Background()
	upg, err := handoff.New(ctx, handoff.Config{Name: "dns"})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Close()
	pc, err := upg.ListenPacket("udp", ":5353")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed: the successor reads from now on
			}
			pc.WriteTo(buf[:n], from) // echo
		}
	}()
	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	<-upg.Exit() // the successor serves; this process finishes its replies and exits
}

// session is one of a server's long-lived connections.
type session struct {
	conn  net.Conn
	state []byte // what a successor needs to resume it
}

func sessions() []session     { return nil }
func resume(net.Conn, []byte) {}
