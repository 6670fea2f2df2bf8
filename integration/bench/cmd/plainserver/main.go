// Command plainserver is a net/http server that knows nothing about
// restarts. The benchmark restarts it the ways people do without a
// handoff: stop then start (naive), or start a second process on the same
// port with SO_REUSEPORT, then stop the first (reuseport).
//
//	plainserver -addr HOST:PORT -pidfile PATH [-reuseport]
//
// GET / answers 200 with a body whose first line is the pid of the
// process that served it. SIGTERM drains with http.Server.Shutdown and
// exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to serve HTTP on")
	pidfile := flag.String("pidfile", "", "file to write this process's pid to once it listens")
	reuseport := flag.Bool("reuseport", false, "listen with SO_REUSEPORT, so that a second process can listen too")
	flag.Parse()
	if err := serve(*addr, *pidfile, *reuseport); err != nil {
		log.Fatal(err)
	}
}

func serve(addr, pidfile string, reuseport bool) error {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	var lc net.ListenConfig
	if reuseport {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			})
			return errors.Join(err, serr)
		}
	}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return err
	}
	pid := os.Getpid()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%d\n", pid)
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if pidfile != "" {
		if err := writePIDFile(pidfile, pid); err != nil {
			return err
		}
	}
	select {
	case err := <-served:
		return err
	case <-stop:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return srv.Shutdown(ctx)
}

// writePIDFile replaces path atomically.
func writePIDFile(path string, pid int) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".pid")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(strconv.Itoa(pid) + "\n"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
