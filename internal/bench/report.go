//go:build unix

package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
	"golang.org/x/sys/unix"
)

// row is what one scenario saw in one load mode.
type row struct {
	scenario  string
	mode      loadgen.Mode
	protocol  loadgen.Protocol
	steady    *loadgen.Result // load without restarts
	load      *loadgen.Result // load through the restarts
	durations []time.Duration // each restart: trigger until a new process serves and the process it ends is gone
	retried   int             // restarts that had to be triggered again
}

// restarts is the number of restarts, with those signalled again.
func (r row) restarts() string {
	if r.retried == 0 {
		return fmt.Sprint(len(r.durations))
	}
	return fmt.Sprintf("%d (%d signalled again)", len(r.durations), r.retried)
}

// failRate is the share of failed requests during the restarts.
func (r row) failRate() float64 {
	if r.load.Requests == 0 {
		return 0
	}
	return float64(r.load.FailedCount()) / float64(r.load.Requests)
}

// p99Ratio is the p99 latency during the restarts over the steady one.
func (r row) p99Ratio() float64 {
	steady := r.steady.Latency.Quantile(0.99)
	if steady == 0 {
		return 0
	}
	return float64(r.load.Latency.Quantile(0.99)) / float64(steady)
}

// outageGap separates outages: failed requests less than this apart
// belong to the same one.
const outageGap = 50 * time.Millisecond

// outage is the longest outage: the span from the first to the last of a
// run of failed requests (by when they were sent) with no gap of
// outageGap or more. With restarts far enough apart, that is the worst
// restart's.
func (r row) outage() time.Duration {
	failed := slices.Clone(r.load.Failed)
	slices.Sort(failed)
	var longest time.Duration
	for i, start := 0, 0; i < len(failed); i++ {
		if i > 0 && failed[i]-failed[i-1] >= outageGap {
			start = i
		}
		longest = max(longest, failed[i]-failed[start])
	}
	return longest
}

func (r row) summary() string {
	return fmt.Sprintf("%d restarts, %d requests, %d failed, %d rerouted; p99 %s (steady %s); restart %s",
		len(r.durations), r.load.Requests, r.load.FailedCount(), r.load.Rerouted, ms(r.load.Latency.Quantile(0.99)),
		ms(r.steady.Latency.Quantile(0.99)), ms(testbed.Median(r.durations)))
}

// moved counts the requests answered first by a new process on a kept
// connection, with their median latency, or "—".
func (r row) moved() string {
	m := &r.load.Moved
	if m.Count() == 0 {
		return "—"
	}
	return fmt.Sprintf("%d, %s", m.Count(), ms(m.Quantile(0.5)))
}

// failures lists the failed requests by kind, or "0".
func (r row) failures() string {
	var kinds []string
	for _, k := range loadgen.Kinds {
		if n := r.load.Failures[k]; n > 0 {
			kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
		}
	}
	if len(kinds) == 0 {
		return "0"
	}
	return fmt.Sprintf("**%d** (%s)", r.load.FailedCount(), strings.Join(kinds, ", "))
}

// ms formats d in milliseconds with three significant digits.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	case v >= 10:
		return fmt.Sprintf("%.1f ms", v)
	}
	return fmt.Sprintf("%.2f ms", v)
}

// markdown is the report: the machine, the command, the table, and what
// each column and scenario means.
func markdown(env string, all []scenario, rows []row, flags string, took time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Measured %s on %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), env)
	fmt.Fprintf(&b, "Command: `go run ./internal/bench %s` (`make bench`); the run took %v.\n\n", flags, took.Round(time.Second))
	b.WriteString("| scenario | protocol | load | restarts | requests | failed (by kind) | failed % | p50 | p99 | p99.9 | max | steady p99 | p99 ÷ steady | moved (n, p50) | outage | restart |\n")
	b.WriteString("|---|---|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rows {
		l := &r.load.Latency
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %s | %.3f%% | %s | %s | %s | %s | %s | %.2f | %s | %s | %s |\n",
			r.scenario, r.protocol, r.mode, r.restarts(), r.load.Requests, r.failures(), 100*r.failRate(),
			ms(l.Quantile(0.5)), ms(l.Quantile(0.99)), ms(l.Quantile(0.999)), ms(l.Max()),
			ms(r.steady.Latency.Quantile(0.99)), r.p99Ratio(), r.moved(), ms(r.outage()), ms(testbed.Median(r.durations)))
	}
	b.WriteString(`
Columns: *restarts*, one every -period or back to back when they take
longer (a restart the old process refused, as
tableflip does until it has seen its own parent exit, is signalled again
and counted once); *requests* sent during the restarts by clients that
never retry, each starting a request at most every -interval;
*failed*: requests without a complete 200 response (refused, reset, EOF
before the response, timeout, other) and, over HTTP/2, *retried*:
requests that net/http's Transport, which the HTTP/2 clients use, wrote
a second time (after a GOAWAY or REFUSED_STREAM refused them, or on
another connection after theirs died), answered or not: a client that
never retries would have failed them, and that is what the figure
counts (a request the Transport moved to another connection before
writing it, its first going away, reached no server before and is not
counted); latency of the successful requests
during the restarts; *steady p99*: the same server and load without
restarts, just before; *moved*: responses from a new process on a
connection kept open (the connection moved to it), and their median
latency; *outage*: the longest run of failed requests (none
50 ms or more apart), from the first sent to the last (0 with no or one
failure);
*restart*: median time from the trigger until a new process serves and the
process the restart ends is gone: the old one; with a canary window, the
one that stood by for the old one, which this restart's handover
releases (so each restart still waits for one drain); in the crash
scenarios, until a process serves again. Load modes: *keepalive* (requests on persistent
connections), *newconn* (a connection per request), *mixed* (half each).
Protocols: *http1* (HTTP/1.1 over TCP, every scenario), *tls* (HTTP/1.1
over TLS, ALPN http/1.1), *h2c* (HTTP/2 over TCP, prior knowledge), *h2*
(HTTP/2 over TLS, ALPN h2), the last three for tableflip and
handoff-embedded only, whose servers get -h2c or -tls-cert and -tls-key
(a self-signed certificate; the clients skip verifying it); on HTTP/2,
clients keeping connections share one -streams at a time, as many
streams in flight on it. HTTP/1.1 requests go over raw connections and
are never retried.

Scenarios:
`)
	for _, sc := range all {
		fmt.Fprintf(&b, "- *%s*: %s.\n", sc.name, sc.how)
	}
	return b.String()
}

// describeMachine says what the numbers were measured on.
func describeMachine() string {
	var u unix.Utsname
	unix.Uname(&u)
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if name, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
				break
			}
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	return fmt.Sprintf("%d × %s, Linux %s, %s; load average before the run: %s",
		runtime.NumCPU(), cpu, unix.ByteSliceToString(u.Release[:]), runtime.Version(), strings.Join(strings.Fields(string(load))[:3], " "))
}
