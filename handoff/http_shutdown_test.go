package handoff

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestHTTPServerShutdownRightAfterServe: Shutdown closes the listeners
// itself before net/http's Shutdown closes them again; as long as Serve has
// not returned yet, net/http sees the second close fail. That must not make
// a clean drain report an error (httpserver then exits 1 on SIGTERM).
func TestHTTPServerShutdownRightAfterServe(t *testing.T) {
	for i := range 1000 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &HTTPServer{Server: &http.Server{Handler: http.NotFoundHandler()}}
		served := startServing(t, srv, ln)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = srv.Shutdown(ctx)
		cancel()
		if err != nil {
			t.Fatalf("round %d: Shutdown = %v, want nil", i, err)
		}
		if err := recvWithin(t, served, "Serve to return after Shutdown"); err != http.ErrServerClosed {
			t.Fatalf("round %d: Serve = %v, want ErrServerClosed", i, err)
		}
	}
}

// startServing runs srv.Serve(ln) and returns, with the channel Serve's
// result comes on, once Serve serves ln.
func startServing(t testing.TB, srv *HTTPServer, ln net.Listener) <-chan error {
	t.Helper()
	srv.setup.Do(srv.install) // before the poll below reads what it sets up
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	waitFor(t, "Serve to start", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.listeners) == 1
	})
	return served
}
