//go:build linux

package integration_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/testbed"
)

// Datagram servers under the wrapper: each child generation gets a UDP
// socket of its own, and the steering sends every datagram to the newest
// ready child's. So no datagram is lost at a reload, and none reaches a
// child after its stop signal.

// udpProtocol is how udpReloads talks to a server: query is the datagram
// with sequence number seq, answer reads the sequence number and the
// answering child's pid back from a reply.
type udpProtocol struct {
	query  func(seq int) []byte
	answer func(reply []byte) (seq, pid int, ok bool)
}

// udpResult is what udpReloads saw.
type udpResult struct {
	sent, answered int
	byPID          map[int]int // answers by child pid
	// late lists the answers by a child to datagrams sent after the
	// wrapper logged that child's stop signal: with steering a stopped
	// child's socket gets nothing.
	late []string
}

// udpReloads sends a datagram every 2 ms to s.Addr, reloads the wrapper n
// times with SIGHUP meanwhile, waits (at most 5 s) for the last answers,
// and returns what it saw and the serving child.
func udpReloads(t *testing.T, s *testbed.Service, wrapper, child, n int, p udpProtocol) (udpResult, int) {
	t.Helper()
	from := s.LogSize()
	c, err := net.Dial("udp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		sentAt   []time.Time
		answered = map[int]int{} // seq → pid
	)
	reading := make(chan struct{})
	go func() { // until c is closed
		defer close(reading)
		buf := make([]byte, 2048)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if seq, pid, ok := p.answer(buf[:n]); ok {
				mu.Lock()
				if _, dup := answered[seq]; !dup {
					answered[seq] = pid
				}
				mu.Unlock()
			}
		}
	}()
	stop := make(chan struct{})
	sending := make(chan struct{})
	go func() {
		defer close(sending)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			mu.Lock()
			seq := len(sentAt)
			sentAt = append(sentAt, time.Now())
			mu.Unlock()
			if _, err := c.Write(p.query(seq)); err != nil {
				t.Errorf("send: %v", err)
				return
			}
		}
	}()
	for range n {
		s.Signal(wrapper, syscall.SIGHUP)
		next := servingChild(t, s, child)
		waitGone(t, child, 30*time.Second)
		child = next
	}
	close(stop)
	<-sending
	count := func() (int, int) { mu.Lock(); defer mu.Unlock(); return len(answered), len(sentAt) }
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got, sent := count(); got >= sent {
			break
		}
	}
	c.Close()
	<-reading

	stopped := stopSignalTimes(t, s.LogFrom(from))
	res := udpResult{sent: len(sentAt), answered: len(answered), byPID: map[int]int{}}
	for seq, pid := range answered {
		res.byPID[pid]++
		// The log's time is truncated to the millisecond.
		if at, ok := stopped[pid]; ok && sentAt[seq].After(at.Add(time.Millisecond)) {
			res.late = append(res.late, fmt.Sprintf("datagram %d sent %v after child %d's stop signal, answered by it", seq, sentAt[seq].Sub(at).Round(time.Millisecond), pid))
		}
	}
	return res, child
}

// stopSignalTimes reads from a wrapper's log when it sent each child its
// stop signal (it logs "stopping child" just before it sends it).
func stopSignalTimes(t *testing.T, log []byte) map[int]time.Time {
	t.Helper()
	stopped := map[int]time.Time{}
	sc := bufio.NewScanner(bytes.NewReader(log))
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `msg="stopping child"`) {
			continue
		}
		var at time.Time
		pid := 0
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "time="); ok {
				at, _ = time.Parse(time.RFC3339Nano, v)
			} else if v, ok := strings.CutPrefix(f, "child="); ok {
				pid, _ = strconv.Atoi(v)
			}
		}
		if at.IsZero() || pid == 0 {
			t.Fatalf("unreadable log line %q", line)
		}
		stopped[pid] = at
	}
	return stopped
}

// echoProtocol speaks to integration/plainshutdown's echo socket: the
// datagram is the sequence number, the answer "PID SEQ".
var echoProtocol = udpProtocol{
	query: func(seq int) []byte { return []byte(strconv.Itoa(seq)) },
	answer: func(reply []byte) (int, int, bool) {
		pid, seq, _ := bytes.Cut(reply, []byte(" "))
		p, err1 := strconv.Atoi(string(pid))
		n, err2 := strconv.Atoi(string(seq))
		return n, p, err1 == nil && err2 == nil
	},
}

// TestWrapperUDPReloads: datagrams sent at a steady rate (one every 2 ms)
// to the plain child's echo socket through 10 reloads. The child goes on
// answering for 300 ms after its stop signal (-udp-drain), so a datagram
// that reached it then would be answered by it. With a socket per
// generation every datagram is answered, and none sent after a child's
// stop signal by that child. With -socket-mode shared the old child reads
// from the one socket until it closes it: the counts are logged, not
// required.
func TestWrapperUDPReloads(t *testing.T) {
	const reloads = 10
	for _, tt := range []struct{ flag, mode string }{{"auto", "per-generation"}, {"shared", "shared"}} {
		t.Run(tt.flag, func(t *testing.T) {
			checkNoChildren(t)
			s := newService(t, binary(t, "./cmd/handoff"))
			wrapper := s.Start("run", "-socket", s.Socket, "-pidfile", s.PIDFile, "-listen", "echo=udp://"+s.Addr, "-socket-mode", tt.flag,
				"-ready-timeout", "10s", "-drain-timeout", "10s", "--", binary(t, "./integration/plainshutdown"), "-udp-drain", "300ms")
			s.WaitPID(wrapper, 0, 30*time.Second)
			child := servingChild(t, s, 0)
			requireSocketMode(t, s, tt.mode)
			res, child := udpReloads(t, s, wrapper, child, reloads, echoProtocol)
			t.Logf("-socket-mode %s, %d reloads: %d datagrams sent, %d answered, by %d children; %d answered by a child after its stop signal",
				tt.flag, reloads, res.sent, res.answered, len(res.byPID), len(res.late))
			if tt.mode == "per-generation" {
				if res.answered != res.sent {
					t.Errorf("%d of %d datagrams lost", res.sent-res.answered, res.sent)
				}
				for _, l := range res.late {
					t.Error(l)
				}
			}
			stopWrapper(t, s, wrapper, child)
		})
	}
}

// kresdProtocol speaks DNS to kresd configured by TestWrapperKresdReloads:
// a query for q.test. A with the sequence number as its id; the answer's
// address is 10.x.y.z, the answering process's pid in its low 24 bits.
var kresdProtocol = udpProtocol{
	query: func(seq int) []byte {
		q := []byte{byte(seq >> 8), byte(seq)}
		q = append(q, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0) // RD; one question
		q = append(q, 1, 'q', 4, 't', 'e', 's', 't', 0)
		return append(q, 0, 1, 0, 1) // A, IN
	},
	answer: func(reply []byte) (int, int, bool) {
		if len(reply) < 16 || reply[3]&0x0f != 0 || reply[6] != 0 || reply[7] != 1 {
			return 0, 0, false // not one answer, or an error
		}
		a := reply[len(reply)-4:] // the answer's RDATA ends the message
		if a[0] != 10 {
			return 0, 0, false
		}
		return int(reply[0])<<8 | int(reply[1]), int(a[1])<<16 | int(a[2])<<8 | int(a[3]), true
	},
}

// TestWrapperKresdReloads: Knot Resolver 5.6 (Debian's knot-resolver),
// a DNS resolver, takes the wrapper's UDP socket with `kresd -S 3` and
// stops on SIGTERM. Its configuration answers every query itself (no
// upstream: the test has no network) with an address that names the
// answering process. Queries every 2 ms through 10 reloads: every one is
// answered, and none sent after a child's stop signal by that child.
func TestWrapperKresdReloads(t *testing.T) {
	kresd, err := lookPath("kresd")
	if err != nil {
		t.Fatalf("kresd is not installed (scripts/deps.sh installs knot-resolver): %v", err)
	}
	const reloads = 10
	checkNoChildren(t)
	s := newService(t, binary(t, "./cmd/handoff"))
	config := fmt.Sprintf(`trust_anchors.remove('.')
cache.open(10 * MB, 'lmdb://%s/cache')
local pid = worker.pid
local addr = string.format('10.%%d.%%d.%%d', math.floor(pid / 65536) %% 256, math.floor(pid / 256) %% 256, pid %% 256)
policy.add(policy.all(policy.ANSWER({[kres.type.A] = {rdata = kres.str2ip(addr), ttl = 0}}, true)))
`, s.Dir)
	if err := os.WriteFile(filepath.Join(s.Dir, "kresd.conf"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	wrapper := s.Start("run", "-socket", s.Socket, "-pidfile", s.PIDFile, "-listen", "dns=udp://"+s.Addr,
		"-ready-timeout", "10s", "-drain-timeout", "10s", "--", kresd, "-n", "-c", filepath.Join(s.Dir, "kresd.conf"), "-S", "3", s.Dir)
	s.WaitPID(wrapper, 0, 30*time.Second)
	child := servingChild(t, s, 0)
	requireSocketMode(t, s, "per-generation")
	res, child := udpReloads(t, s, wrapper, child, reloads, kresdProtocol)
	t.Logf("kresd, %d reloads: %d queries sent, %d answered, by %d children; %d answered by a child after its stop signal",
		reloads, res.sent, res.answered, len(res.byPID), len(res.late))
	if res.answered != res.sent {
		t.Errorf("%d of %d queries unanswered", res.sent-res.answered, res.sent)
	}
	if len(res.byPID) != reloads+1 {
		t.Errorf("answers by %d children, want %d: %v", len(res.byPID), reloads+1, res.byPID)
	}
	for _, l := range res.late {
		t.Error(l)
	}
	stopWrapper(t, s, wrapper, child)
}
