package main

import (
	"errors"
	"flag"
	"io"
	"strings"
	"syscall"
	"testing"
)

func TestParseListen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want listenSpec
		err  string
	}{
		{in: "tcp://127.0.0.1:8080", want: listenSpec{network: "tcp", address: "127.0.0.1:8080"}},
		{in: "web=tcp4://0.0.0.0:80", want: listenSpec{name: "web", network: "tcp4", address: "0.0.0.0:80"}},
		{in: "tcp6://[::1]:443", want: listenSpec{network: "tcp6", address: "[::1]:443"}},
		{in: "tcp://:8080", want: listenSpec{network: "tcp", address: ":8080"}},
		{in: "dns=udp://127.0.0.1:53", want: listenSpec{name: "dns", network: "udp", address: "127.0.0.1:53"}},
		{in: "unix:///run/app.sock", want: listenSpec{network: "unix", address: "/run/app.sock"}},
		{in: "tcp://127.0.0.1", err: "want tcp://HOST:PORT"},
		{in: "tcp://127.0.0.1:99999", err: "bad port"},
		{in: "tcp://example.com:80", err: "must be an IP address"},
		{in: "tcp://127.0.0.1:80/path", err: "nothing else"},
		{in: "unix://relative/path", err: "want unix:///absolute/path"},
		{in: "http://127.0.0.1:80", err: "unknown scheme"},
		{in: "127.0.0.1:80", err: "is not a URL"},
		{in: "a:b=tcp://127.0.0.1:80", err: "no spaces or colons"},
		{in: "=tcp://127.0.0.1:80", err: "1 to 255 characters"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := parseListen(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseListen(%q) = %+v, %v; want an error with %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseListen(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseReady(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want readySpec
		err  string
	}{
		{in: "auto", want: readySpec{mode: readyAuto}},
		{in: "notify", want: readySpec{mode: readyNotify}},
		{in: "accepting", want: readySpec{mode: readyAccepting}},
		{in: "tcp://127.0.0.1:9000", want: readySpec{mode: readyTCP, addr: "127.0.0.1:9000"}},
		{in: "http://127.0.0.1:9000/health", want: readySpec{mode: readyHTTP, addr: "127.0.0.1:9000", url: "http://127.0.0.1:9000/health"}},
		{in: "2s", want: readySpec{mode: readyDelay, delay: 2e9}},
		{in: "tcp", err: "an address the child owns alone"},
		{in: "http", err: "an address the child owns alone"},
		{in: "0s", err: "must be positive"},
		{in: "ftp://x:1", err: "not a mode"},
		{in: "soon", err: "not a mode"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := parseReady(tt.in)
			if tt.err != "" {
				var ue *usageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseReady(%q) = %+v, %v; want a usage error with %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseReady(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

// TestCheckProbe: a probe that could reach a shared socket is refused,
// since the old child would answer it for the new one.
func TestCheckProbe(t *testing.T) {
	t.Parallel()
	tests := []struct {
		probe, listen string
		refused       bool
	}{
		{"tcp://127.0.0.1:8080", "tcp://127.0.0.1:8080", true},
		{"http://localhost:8080/health", "tcp://127.0.0.1:8080", true},
		{"tcp://127.0.0.1:8080", "tcp://0.0.0.0:8080", true},
		{"tcp://127.0.0.1:8080", "tcp://:8080", true},
		{"tcp://127.0.0.1:9090", "tcp://127.0.0.1:8080", false},
		{"tcp://127.0.0.2:8080", "tcp://127.0.0.1:8080", false},
		{"tcp://127.0.0.1:8080", "udp://127.0.0.1:8080", false},
	}
	for _, tt := range tests {
		ready, err := parseReady(tt.probe)
		if err != nil {
			t.Fatal(err)
		}
		l, err := parseListen(tt.listen)
		if err != nil {
			t.Fatal(err)
		}
		err = ready.checkProbe([]listenSpec{l})
		if refused := err != nil; refused != tt.refused {
			t.Errorf("probe %s with -listen %s: %v; want refused %v", tt.probe, tt.listen, err, tt.refused)
		}
	}
}

func TestParseSignal(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]syscall.Signal{"SIGTERM": syscall.SIGTERM, "quit": syscall.SIGQUIT, "INT": syscall.SIGINT, "10": syscall.SIGUSR1} {
		if got, err := parseSignal(in); err != nil || got != want {
			t.Errorf("parseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parseSignal("SIGNOPE"); err == nil {
		t.Error("parseSignal accepted SIGNOPE")
	}
}

// TestParseRun: mistakes in the command line are usage errors (exit 2);
// a command that does not exist is not (exit 1); -h prints help.
func TestParseRun(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args  []string
		usage bool
		err   string
	}{
		{args: []string{"-listen", "tcp://127.0.0.1:1", "--", "true"}},
		{args: []string{"--listen", "tcp://127.0.0.1:1", "--ready=accepting", "--", "true"}},
		{args: []string{"-listen", "tcp://127.0.0.1:1"}, usage: true, err: "no COMMAND"},
		{args: []string{"--", "true"}, usage: true, err: "no -listen"},
		{args: []string{"-nope", "--", "true"}, usage: true, err: "not defined"},
		{args: []string{"-listen", "a=tcp://127.0.0.1:1", "-listen", "a=tcp://127.0.0.1:2", "--", "true"}, usage: true, err: "used twice"},
		{args: []string{"-listen", "tcp://127.0.0.1:1", "-ready-timeout", "0s", "--", "true"}, usage: true, err: "must be positive"},
		{args: []string{"-listen", "tcp://127.0.0.1:1", "-stop-signal", "BOGUS", "--", "true"}, usage: true, err: "unknown signal"},
		{args: []string{"-listen", "tcp://127.0.0.1:1", "--", "no-such-command-at-all"}, err: "executable file not found"},
		{args: []string{"-listen", "tcp://127.0.0.1:1", "-socket-mode", "shared", "-nonblocking", "--", "true"}},
		{args: []string{"-listen", "tcp://127.0.0.1:1", "-socket-mode", "private", "--", "true"}, usage: true, err: "not auto or shared"},
	}
	for _, tt := range tests {
		cfg, err := parseRun(tt.args, io.Discard)
		var ue *usageError
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("parseRun(%q): %v", tt.args, err)
		case tt.err == "":
			if cfg.name != "true" || cfg.argv[0] != "true" || !strings.HasSuffix(cfg.path, "/true") || (cfg.socketMode != modeAuto && cfg.socketMode != modeShared) {
				t.Errorf("parseRun(%q) = name %q, argv %q, path %q", tt.args, cfg.name, cfg.argv, cfg.path)
			}
		case err == nil || !strings.Contains(err.Error(), tt.err) || errors.As(err, &ue) != tt.usage:
			t.Errorf("parseRun(%q) = %v; want an error with %q, usage error %v", tt.args, err, tt.err, tt.usage)
		}
	}
	var help strings.Builder
	if _, err := parseRun([]string{"-h"}, &help); !errors.Is(err, flag.ErrHelp) || !strings.Contains(help.String(), "Example:") || !strings.Contains(help.String(), "-ready-timeout") {
		t.Errorf("parseRun(-h) = %v, help:\n%s", err, help.String())
	}
}
