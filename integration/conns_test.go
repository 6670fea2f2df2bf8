//go:build linux

package integration_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
)

// idleClients opens n keep-alive connections to addr, sends one request
// on each and leaves them idle: the kind of client that keeps an old
// process draining when idle connections cannot move.
func idleClients(t testing.TB, addr string, n int) []*rawClient {
	t.Helper()
	var cs []*rawClient
	for range n {
		c := dialRaw(t, addr)
		if _, _, err := c.get("/"); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	return cs
}

// TestConnectionHandoffUnderLoad: 100 restarts per load mode, with idle
// keep-alive clients connected throughout. No request fails, and each old
// process exits soon after its canary window ends (at once when the next
// upgrade comes first, else after 10 s): the idle connections move to the
// successor instead of holding the old process for its drain timeout
// (30 s).
func TestConnectionHandoffUnderLoad(t *testing.T) {
	for _, mode := range []loadgen.Mode{loadgen.KeepAlive, loadgen.NewConn, loadgen.Mixed} {
		t.Run(mode.String(), func(t *testing.T) {
			checkNoChildren(t)
			s := newService(t, binary(t, "./examples/httpserver"))
			pid := s.Start()
			s.WaitPID(pid, 0, 30*time.Second)
			testbed.WaitServing(t, s.Addr, pid)
			idle := idleClients(t, s.Addr, 4)
			stopLoad := testbed.RunLoad(s.Addr, mode, 6)

			var (
				mu    sync.Mutex
				exits []time.Duration
				wg    sync.WaitGroup
			)
			for range 100 {
				s.Signal(pid, syscall.SIGHUP)
				next := s.WaitPID(0, pid, 30*time.Second)
				ready := time.Now()
				wg.Add(1)
				go func(old int) {
					defer wg.Done()
					ws := s.WaitExit(old, 60*time.Second)
					mu.Lock()
					defer mu.Unlock()
					exits = append(exits, time.Since(ready))
					if ws.ExitStatus() != 0 {
						t.Errorf("old process %d exited with %v", old, ws)
					}
				}(pid)
				pid = next
			}
			wg.Wait()
			requireNoFailures(t, stopLoad())
			for i, c := range idle { // still connected, now served by the last process
				body, closing, err := c.get("/")
				if err != nil || closing || !strings.HasPrefix(body, strconv.Itoa(pid)+"\n") {
					t.Errorf("idle client %d after 100 restarts: %q (Connection: close %v), %v", i, body, closing, err)
				}
			}
			worst := slicesMax(exits)
			t.Logf("old process exit after successor ready: median %v, max %v", testbed.Median(exits), worst)
			if worst > handoff.DefaultCanaryWindow+5*time.Second {
				t.Errorf("an old process took %v to exit after its successor was ready, its canary window (%v) included", worst, handoff.DefaultCanaryWindow)
			}
			s.Signal(pid, syscall.SIGTERM)
			s.WaitExit(pid, time.Minute)
		})
	}
}

// TestKeepAliveConnectionSurvivesRestarts: one client holds one keep-alive
// connection across 20 restarts, sending a request every few
// milliseconds. Every request is answered, on the same TCP connection (its
// local port never changes), by successive server processes.
func TestKeepAliveConnectionSurvivesRestarts(t *testing.T) {
	checkNoChildren(t)
	s := newService(t, binary(t, "./examples/httpserver"))
	pid := s.Start()
	s.WaitPID(pid, 0, 30*time.Second)
	testbed.WaitServing(t, s.Addr, pid)

	c := dialRaw(t, s.Addr)
	port := c.conn.LocalAddr().String()
	type answer struct {
		pid  int
		port string
		err  error
	}
	stop := make(chan struct{})
	answers := make(chan answer, 1<<16)
	go func() {
		defer close(answers)
		for n := 0; n < 100_000; n++ {
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Millisecond):
			}
			body, closing, err := c.get(fmt.Sprint("/", n))
			if err == nil && closing {
				err = fmt.Errorf("server closed the connection")
			}
			p, _ := strconv.Atoi(strings.SplitN(body, "\n", 2)[0])
			answers <- answer{pid: p, port: c.conn.LocalAddr().String(), err: err}
			if err != nil {
				return
			}
		}
	}()

	gens := []int{pid}
	for range 20 {
		s.Signal(pid, syscall.SIGHUP)
		pid = s.WaitPID(0, pid, 30*time.Second)
		gens = append(gens, pid)
	}
	// Let the client reach the last generation, then stop it.
	var seen []int
	var n int
	for a := range answers {
		n++
		if a.err != nil {
			t.Fatalf("request %d: %v", n, a.err)
		}
		if a.port != port {
			t.Fatalf("request %d went over %s, not the original connection %s", n, a.port, port)
		}
		if len(seen) == 0 || seen[len(seen)-1] != a.pid {
			seen = append(seen, a.pid)
		}
		if a.pid == pid {
			close(stop)
			for range answers {
			}
			break
		}
	}
	// The connection moves forward only: the pids answering it are a
	// subsequence of the generations, in order.
	i := 0
	for _, p := range seen {
		for i < len(gens) && gens[i] != p {
			i++
		}
		if i == len(gens) {
			t.Fatalf("answered by %v, not in generation order %v", seen, gens)
		}
	}
	t.Logf("%d requests over one connection (%s), answered by %d of %d generations", n, port, len(seen), len(gens))
	s.Signal(pid, syscall.SIGTERM)
	s.WaitExit(pid, time.Minute)
}

// TestSessionsSurviveRestarts: examples/counter keeps a counter per
// session; a client connected before 10 restarts (upgrades and takeovers)
// is still connected after them, with its count intact, even with half a
// command in flight at a restart.
func TestSessionsSurviveRestarts(t *testing.T) {
	checkNoChildren(t)
	s := newService(t, binary(t, "./examples/counter"))
	pid := s.Start()
	s.WaitPID(pid, 0, 30*time.Second)

	clients := make([]*lineClient, 3)
	for i := range clients {
		clients[i] = dialLines(t, s.Addr)
	}
	want := make([]int, len(clients))
	check := func(when string) {
		t.Helper()
		for i, c := range clients {
			want[i]++
			n, by, err := c.incr()
			if err != nil || n != want[i] {
				t.Fatalf("%s: client %d counted %d (by %d), %v; want %d", when, i, n, by, err, want[i])
			}
		}
	}
	check("before the restarts")
	var prev int
	for r := range 10 {
		prev = pid
		// Half a command before the restart, the rest after it.
		fmt.Fprint(clients[0].conn, "in")
		if r%2 == 0 {
			s.Signal(pid, syscall.SIGHUP)
			pid = s.WaitPID(0, pid, 30*time.Second)
		} else {
			next := s.Start()
			pid = s.WaitPID(next, 0, 30*time.Second)
		}
		fmt.Fprint(clients[0].conn, "cr\n")
		want[0]++
		if n, _, err := clients[0].read(); err != nil || n != want[0] {
			t.Fatalf("restart %d: split command counted %d, %v; want %d", r+1, n, err, want[0])
		}
		check(fmt.Sprintf("after restart %d", r+1))
	}
	// The sessions move once the last old process's canary window ends.
	s.WaitExit(prev, handoff.DefaultCanaryWindow+30*time.Second)
	_, by, err := clients[1].incr()
	if err != nil || by != pid {
		t.Fatalf("last answer from %d, %v; want the last process %d", by, err, pid)
	}
	s.Signal(pid, syscall.SIGTERM)
	s.WaitExit(pid, time.Minute)
}

// rawClient is an HTTP/1.1 keep-alive client on one connection; it never
// retries or reconnects.
type rawClient struct {
	conn net.Conn
	br   *bufio.Reader
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{conn: c, br: bufio.NewReader(c)}
}

func (c *rawClient) get(path string) (body string, closing bool, err error) {
	c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c.conn, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path); err != nil {
		return "", false, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return "", false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), resp.Close, err
}

// lineClient speaks examples/counter's line protocol.
type lineClient struct {
	conn net.Conn
	br   *bufio.Reader
}

func dialLines(t testing.TB, addr string) *lineClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &lineClient{conn: c, br: bufio.NewReader(c)}
}

// incr counts one more and returns the count and the answering pid.
func (c *lineClient) incr() (count, pid int, err error) {
	if _, err := fmt.Fprint(c.conn, "incr\n"); err != nil {
		return 0, 0, err
	}
	return c.read()
}

func (c *lineClient) read() (count, pid int, err error) {
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := c.br.ReadString('\n')
	if err != nil {
		return 0, 0, err
	}
	if _, err := fmt.Sscanf(line, "%d %d", &count, &pid); err != nil {
		return 0, 0, fmt.Errorf("answer %q: %w", line, err)
	}
	return count, pid, nil
}
