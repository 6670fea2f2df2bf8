// Command tableflipserver is cloudflare/tableflip's HTTP example
// (http_example_test.go, as its README points to): SIGHUP upgrades to a
// fresh copy of the binary, which inherits the listening socket; the old
// process then drains with http.Server.Shutdown.
//
//	tableflipserver -addr HOST:PORT -pidfile PATH
//
// GET / answers 200 with a body whose first line is the pid of the
// process that served it.
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
	flag.Parse()
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
	go func() {
		if err := server.Serve(ln); err != http.ErrServerClosed {
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
