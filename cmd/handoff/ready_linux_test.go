//go:build linux

package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/handoffd/handoff/internal/procfs"
)

// TestProbes: the tcp and http probes, against addresses the test owns.
func TestProbes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer ok.Close()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
	defer failing.Close()

	ctx := context.Background()
	if !probeTCP(ctx, ok.Listener.Addr().String()) || probeTCP(ctx, closed) {
		t.Error("probeTCP: want true for a listening address, false for a closed port")
	}
	if !probeHTTP(ctx, ok.URL) || probeHTTP(ctx, failing.URL) || probeHTTP(ctx, "http://"+closed+"/") {
		t.Error("probeHTTP: want true for 200, false for 503 and for a closed port")
	}
}

// TestReadyAuto: auto takes accepting for a child of a command that never
// notified, and also wants READY=1 once one of its children has sent it.
func TestReadyAuto(t *testing.T) {
	ns := serveNotify(t)
	sock, ino := testSocket(t)
	r := &readiness{spec: readySpec{mode: readyAuto}, notify: ns}
	gen := &generation{fds: []int{sock}, own: []bool{false}}
	sp := newTestSpawner(t)
	ctx := context.Background()

	silent := startHelper(t, sp, "epoll", nil, sock, testPipe(t))
	silent.gen = gen
	waitUntil(t, "a silent child that accepts is ready", func() bool { ok, err := r.check(ctx, silent); return err == nil && ok })

	notifier := startHelper(t, sp, "notify", []string{"NOTIFY_SOCKET=" + ns.path}, sock, testPipe(t))
	waitUntil(t, "READY=1 arrives", func() bool { return ns.state(notifier.pid).ready })

	silent2 := startHelper(t, sp, "epoll", nil, sock, testPipe(t))
	silent2.gen = gen
	waitUntil(t, "the next silent child accepts", func() bool { ok, _ := procfs.Accepting(silent2.pid, map[uint64]bool{ino: true}); return ok })
	if ok, err := r.check(ctx, silent2); ok || err != nil {
		t.Fatalf("auto: a child that accepts but never says READY=1, after one that did: ready %v, %v; want not ready", ok, err)
	}
}
