package main

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/testbed"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/stats"
)

// The tests build this command with the race detector and drive its real
// processes: started, upgraded by SIGHUP, stopped by SIGTERM.

var (
	reaper  *testbed.Reaper
	builder *testbed.Builder
)

func TestMain(m *testing.M) {
	testbed.RunTests(m, ".", true, func(r *testbed.Reaper, b *testbed.Builder) { reaper, builder = r, b })
}

// startService builds the server and starts its first process with the
// service's -addr, -socket and -pidfile and extra flags; it returns the
// service and the first pid, once that process answers.
func startService(t *testing.T, extra ...string) (*testbed.Service, []string, int) {
	t.Helper()
	svc := testbed.NewService(t, reaper, builder.Build(t, "github.com/handoffd/handoff/examples/grpc"))
	args := append(svc.DefaultArgs(), extra...)
	pid := svc.Start(args...)
	svc.WaitPID(pid, 0, 30*time.Second)
	return svc, args, pid
}

// client is a grpc-go client that never retries on its own account
// (grpc.WithDisableRetry) and counts the attempts it makes, so that the
// transparent retries grpc-go still makes show up (see retries).
type client struct {
	cc       *grpc.ClientConn
	attempts *attempts
}

func dial(t testing.TB, addr string, a *attempts) *client {
	t.Helper()
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDisableRetry(),
		grpc.WithStatsHandler(a))
	if err != nil {
		t.Fatalf("grpc client: %v", err)
	}
	t.Cleanup(func() { cc.Close() })
	return &client{cc: cc, attempts: a}
}

// attempts is a client stats.Handler: it counts the attempts of RPCs,
// and among them grpc-go's transparent retries, which WithDisableRetry
// does not turn off. grpc-go makes one, once per RPC, when the first
// attempt never reached the server's application: the connection it was
// picked for was closing or had received GOAWAY before the stream was
// created, or the server refused the stream (RST_STREAM REFUSED_STREAM,
// or a stream id above a GOAWAY's last-stream-id).
type attempts struct {
	total, transparent atomic.Int64
}

func (a *attempts) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (a *attempts) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (a *attempts) HandleConn(context.Context, stats.ConnStats) {}
func (a *attempts) HandleRPC(_ context.Context, s stats.RPCStats) {
	if b, ok := s.(*stats.Begin); ok && b.Client {
		a.total.Add(1)
		if b.IsTransparentRetryAttempt {
			a.transparent.Add(1)
		}
	}
}

// served sums what the processes' "drained" lines say they completed:
// Get calls answered and Watch streams sent to their end.
func served(t *testing.T, svc *testbed.Service) (unary, streams int64, processes int) {
	t.Helper()
	re := regexp.MustCompile(`msg=drained unary=(\d+) streams=(\d+)`)
	for _, m := range re.FindAllSubmatch(svc.LogFrom(0), -1) {
		u, _ := strconv.ParseInt(string(m[1]), 10, 64)
		s, _ := strconv.ParseInt(string(m[2]), 10, 64)
		unary += u
		streams += s
		processes++
	}
	return unary, streams, processes
}

// waitExits waits for every pid to exit and fails t unless each exited 0
// (a race-enabled binary that saw a data race exits 66).
func waitExits(t *testing.T, svc *testbed.Service, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if ws := svc.WaitExit(pid, 60*time.Second); !ws.Exited() || ws.ExitStatus() != 0 {
			t.Errorf("process %d ended with %v, want exit status 0", pid, ws)
		}
	}
}

// tally counts a worker's outcomes.
type tally struct {
	mu     sync.Mutex
	ok     int
	failed int
	errs   []string // the first few failures
}

func (c *tally) add(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		c.ok++
		return
	}
	c.failed++
	if len(c.errs) < 10 {
		c.errs = append(c.errs, err.Error())
	}
}

func (c *tally) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("%d ok, %d failed %v", c.ok, c.failed, c.errs)
}
