// Command grpc is a gRPC server that restarts without failing an RPC. It
// serves handoff.example.Pid (service.go): Get answers with the pid of the
// serving process, Watch streams it, one message per -tick.
//
//	grpc -addr HOST:PORT -socket PATH [-pidfile PATH] [-tick DURATION]
//	    [-drain-timeout DURATION] [-canary-window DURATION]
//
// SIGHUP upgrades to a fresh copy of the binary (read from disk again).
// Once the successor has taken over, this process drains with
// grpc.Server.GracefulStop: every connection gets GOAWAY, in two phases
// (grpc-go's server sends the first with stream id 2^31-1 and a PING, the
// final one after the PING's ACK, so no stream in flight towards it is
// refused), streams already open run to their end, and clients open
// their next connection to the successor, which serves on the same
// listening socket. -drain-timeout bounds that: then Stop cuts what is
// still open. SIGTERM or SIGINT drains the same way and exits.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/oklog/run"
	"google.golang.org/grpc"
)

// readyTimeout is how long a successor may take to become ready.
const readyTimeout = 10 * time.Second

// options are the command's flags.
type options struct {
	addr, socket, pidfile string
	tick, drain, canary   time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "127.0.0.1:8081", "address to serve gRPC on")
	flag.StringVar(&o.socket, "socket", "", "control socket path (default: derived from the service name)")
	flag.StringVar(&o.pidfile, "pidfile", "", "file to keep the serving process's pid in")
	flag.DurationVar(&o.tick, "tick", 100*time.Millisecond, "interval between the messages of a Watch stream")
	flag.DurationVar(&o.drain, "drain-timeout", handoff.DefaultDrainTimeout, "how long GracefulStop may wait for open RPCs before Stop cuts them")
	flag.DurationVar(&o.canary, "canary-window", handoff.DefaultCanaryWindow, "after an upgrade, stand by this long to take the service back should the successor die (negative: off)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := serve(log, o); err != nil {
		log.Error("grpc server failed", "err", err)
		os.Exit(1)
	}
}

func serve(log *slog.Logger, o options) error {
	// Catch the signals before anything else: once this process is ready,
	// a SIGHUP or SIGTERM may come at any moment.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	upg, err := handoff.New(context.Background(), handoff.Config{
		Name:         "grpc-example",
		Socket:       o.socket,
		PIDFile:      o.pidfile,
		ReadyTimeout: readyTimeout,
		DrainTimeout: o.drain,
		CanaryWindow: o.canary,
		Logger:       log,
	})
	if err != nil {
		return err
	}
	defer upg.Close()
	ln, err := upg.Listen("tcp", o.addr)
	if err != nil {
		return err
	}

	svc := &pidServer{pid: int64(os.Getpid()), tick: o.tick}
	gs := grpc.NewServer()
	gs.RegisterService(&serviceDesc, svc)
	defer func() {
		log.Info("drained", "unary", svc.unary.Load(), "streams", svc.streams.Load())
	}()

	// stopping is closed before this process closes its listening socket
	// on a stop signal (upg.Stop); after a handover the Upgrader closes it,
	// and Exit is closed first. Either way Serve's error is then expected.
	stopping := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	var g run.Group
	g.Add(func() error { // serve until the drain is over
		err := gs.Serve(ln)
		select {
		case <-upg.Exit():
		case <-stopping:
		default:
			if err != nil {
				return err
			}
		}
		<-ctx.Done()
		return nil
	}, func(error) { cancel() })
	g.Add(func() error { // ready once serving, then upgrade on SIGHUP
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
			close(stopping)
			upg.Stop()
		case <-ctx.Done():
			// Ready or Serve failed: the predecessor, if any, still
			// serves; finish what this process accepted.
		}
		dctx, dcancel := context.WithTimeout(context.Background(), o.drain)
		defer dcancel()
		return gracefulStop(dctx, gs)
	}, func(error) { cancel() })

	return g.Run()
}

// gracefulStop drains gs with GracefulStop until ctx ends, then stops it
// hard with Stop, which cuts the RPCs still open, and returns ctx.Err().
func gracefulStop(ctx context.Context, gs *grpc.Server) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		gs.GracefulStop()
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		gs.Stop() // GracefulStop returns once Stop has closed every connection
		<-done
		return ctx.Err()
	}
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
