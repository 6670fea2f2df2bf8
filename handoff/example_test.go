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

// An HTTP server that upgrades itself on SIGHUP and drains without losing
// a request. examples/httpserver is the complete program.
func Example() {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP) // before Ready: a SIGHUP may come at once

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
	go func() {
		for range hup {
			if err := upg.Upgrade(ctx); err != nil {
				log.Print("upgrade failed; still serving: ", err)
			}
		}
	}()
	<-upg.Exit() // a successor took over
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	srv.Shutdown(dctx)
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

	// The successor: resume what the predecessor handed over.
	go func() {
		for {
			conn, state, err := upg.AcceptConn(ctx)
			if errors.Is(err, io.EOF) {
				return // the predecessor is gone
			}
			if err != nil {
				return
			}
			go resume(conn, state)
		}
	}()
	upg.Ready()

	// The old process, once a successor took over: stop each session
	// between two messages and send it on.
	<-upg.Exit()
	var session net.Conn // one of this process's sessions
	var state []byte     // what the successor needs to resume it
	if err := upg.SendConn(ctx, session, state); err != nil {
		session.Close()
	}
}

func resume(net.Conn, []byte) {}
