// Command minimal serves HTTP on :8080 and restarts without failing a
// request: SIGHUP starts a fresh copy of the binary, which takes over;
// SIGTERM drains and exits.
package main

import (
	"context"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/handoffd/handoff/handoff"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	// Catch the signals before Ready: from then on they may come at any time.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM)

	ctx := context.Background()
	upg, err := handoff.New(ctx, handoff.Config{Name: "api"})
	if err != nil {
		return err
	}
	defer upg.Close()
	ln, err := upg.Listen("tcp", ":8080") // the predecessor's socket, or a new one
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello\n"))
	})
	srv := &handoff.HTTPServer{Server: &http.Server{Handler: mux}, Upgrader: upg}
	go srv.Serve(ln)
	defer srv.Shutdown(ctx) // drain, before Close: every accepted request is answered

	if err := upg.Ready(); err != nil { // the predecessor stops accepting only now
		return err
	}
	for {
		select {
		case <-upg.Exit(): // a successor has taken over
			return nil
		case sig := <-sigs:
			if sig == syscall.SIGTERM {
				upg.Stop() // no successor: stop accepting, then drain
				return nil
			}
			if err := upg.Upgrade(ctx); err != nil { // SIGHUP: a fresh copy of the binary
				log.Print("upgrade failed; still serving: ", err)
			}
		}
	}
}
