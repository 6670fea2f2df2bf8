// Command plainshutdown is the way most Go servers stop, for the wrapper's
// tests: it takes its sockets from socket activation (go-systemd), serves
// HTTP on the listening ones (GET / answers the pid) and echoes the pid
// and the datagram on the datagram ones, and on SIGTERM calls
// http.Server.Shutdown and closes its datagram sockets, and nothing else:
// no drain of its own, unlike examples/activated. Go drops a request it
// reads after Shutdown began (golang/go#75591), so a connection it is
// handed while stopping may fail: what a socket per child generation,
// drained before the stop signal, is there to prevent.
//
// With -udp-drain D it goes on serving for D after SIGTERM before it
// closes its datagram sockets (and shuts its HTTP server down), as a
// server finishing the queries in its socket would: whatever reaches its
// datagram socket after its stop signal is answered, which shows whether
// the wrapper still sends it datagrams then.
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
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
)

func main() {
	udpDrain := flag.Duration("udp-drain", 0, "after SIGTERM, go on answering datagrams this long")
	flag.Parse()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	files := activation.Files(true)
	if len(files) == 0 {
		log.Fatal("no sockets passed (LISTEN_FDS)")
	}
	pid := os.Getpid()
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%d\n", pid) }),
		ReadHeaderTimeout: 10 * time.Second,
	}
	var (
		wg    sync.WaitGroup
		conns []net.PacketConn
	)
	for _, f := range files {
		if ln, err := net.FileListener(f); err == nil {
			f.Close()
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
					log.Print(err)
				}
			}()
			continue
		}
		pc, err := net.FilePacketConn(f)
		if err != nil {
			log.Fatalf("fd %d: %v", f.Fd(), err)
		}
		f.Close()
		conns = append(conns, pc)
		wg.Add(1)
		go func() { defer wg.Done(); echo(pc, pid) }()
	}
	<-stop
	time.Sleep(*udpDrain) // the datagram sockets keep being served meanwhile
	for _, pc := range conns {
		pc.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	wg.Wait()
}

// echo answers each datagram with "PID DATAGRAM" until pc is closed.
func echo(pc net.PacketConn, pid int) {
	buf := make([]byte, 2048)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(fmt.Appendf(nil, "%d %s", pid, buf[:n]), addr)
	}
}
