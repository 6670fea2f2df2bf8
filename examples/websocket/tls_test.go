//go:build linux

package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestTLSWebSocketGoesAway: a WebSocket over TLS cannot move (its session
// keys cannot leave the process): at an upgrade the old process answers
// the message its client is in the middle of sending, then closes it with
// 1001 going away; the successor serves new ones.
func TestTLSWebSocketGoesAway(t *testing.T) {
	cert, key := selfSigned(t)
	s, pid := startService(t, "-tls-cert", cert, "-tls-key", key)
	c := dialWSS(t, s.Addr)
	if a, err := c.ask("first"); err != nil || a.pid != pid || a.count != 1 {
		t.Fatalf("first answer %+v, %v", a, err)
	}
	goesAwayAfterInFlight(t, s, c, pid, syscall.SIGHUP, "cannot hand a WebSocket over")
	next := s.WaitPID(0, pid, 30*time.Second)
	if st := s.WaitExit(pid, time.Minute); st.ExitStatus() != 0 {
		t.Fatalf("the old process exited with %v", st)
	}
	if a, err := dialWSS(t, s.Addr).ask("again"); err != nil || a.pid != next || a.count != 1 {
		t.Fatalf("a new WebSocket after the upgrade: %+v, %v; want one answered by %d", a, err, next)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths.
func selfSigned(t *testing.T) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}
