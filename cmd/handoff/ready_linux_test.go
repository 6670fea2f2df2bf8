//go:build linux

package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
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
