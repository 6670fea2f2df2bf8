// Command tableflipserver is cloudflare/tableflip's HTTP example
// (http_example_test.go, as its README points to): SIGHUP upgrades to a
// fresh copy of the binary, which inherits the listening socket; the old
// process then drains with http.Server.Shutdown.
//
//	tableflipserver -addr HOST:PORT -pidfile PATH [-h2c | -tls-cert FILE -tls-key FILE]
//
// GET / answers 200 with a body whose first line is the pid of the
// process that served it. It speaks HTTP/1.1; with -h2c, HTTP/2 without
// TLS too (prior knowledge); with -tls-cert and -tls-key, only TLS,
// HTTP/1.1 or HTTP/2 as ALPN chooses: the flags of examples/httpserver,
// so that the benchmark drives both over the same protocols. Shutdown
// sends HTTP/2 connections net/http's single GOAWAY.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to serve HTTP on")
	pidfile := flag.String("pidfile", "", "pid file, written once ready")
	h2c := flag.Bool("h2c", false, "serve HTTP/2 without TLS (prior knowledge) beside HTTP/1.1")
	cert := flag.String("tls-cert", "", "serve TLS (HTTP/1.1 and HTTP/2 by ALPN) with this PEM certificate (needs -tls-key)")
	key := flag.String("tls-key", "", "the PEM private key of -tls-cert")
	flag.Parse()
	if (*cert == "") != (*key == "") || *h2c && *cert != "" {
		log.Fatal("-tls-cert and -tls-key go together, and not with -h2c")
	}
	log.SetPrefix(fmt.Sprintf("%d ", os.Getpid()))

	upg, err := tableflip.New(tableflip.Options{PIDFile: *pidfile})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()

	// Catch SIGHUP before Ready writes the pid file: a restart that reads
	// it may signal at once, and an uncaught SIGHUP kills the process.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	go func() {
		for range sig {
			if err := upg.Upgrade(); err != nil {
				log.Println("upgrade failed:", err)
			}
		}
	}()

	ln, err := upg.Listen("tcp", *addr)
	if err != nil {
		log.Fatalln("can't listen:", err)
	}
	pid := os.Getpid()
	server := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%d\n", pid)
	})}
	if *h2c {
		var ps http.Protocols
		ps.SetHTTP1(true)
		ps.SetUnencryptedHTTP2(true)
		server.Protocols = &ps
	}
	go func() {
		serve := func() error { return server.Serve(ln) }
		if *cert != "" {
			serve = func() error { return server.ServeTLS(ln, *cert, *key) }
		}
		if err := serve(); err != http.ErrServerClosed {
			log.Println("HTTP server:", err)
		}
	}()

	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	<-upg.Exit()

	time.AfterFunc(30*time.Second, func() {
		log.Println("graceful shutdown timed out")
		os.Exit(1)
	})
	server.Shutdown(context.Background())
}
