//go:build unix

package testbed

import (
	"fmt"
	"os"
)

// Program is the TB of a command (the demo, the benchmark): Logf prints
// to stdout, Fatalf prints to stderr, runs the cleanups and exits 1.
type Program struct {
	Name string // prefixes Fatalf's message

	cleanups []func()
	failed   bool
}

// Helper does nothing; it is part of TB.
func (p *Program) Helper() {}

// Logf prints a line to stdout.
func (p *Program) Logf(format string, a ...any) { fmt.Printf(format+"\n", a...) }

// Cleanup registers f to run at Close, the last registered first.
func (p *Program) Cleanup(f func()) { p.cleanups = append(p.cleanups, f) }

// Failed reports whether Fatalf was called.
func (p *Program) Failed() bool { return p.failed }

// Fatalf reports a failure, cleans up and exits 1.
func (p *Program) Fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, p.Name+": "+format+"\n", a...)
	p.failed = true
	p.Close()
	os.Exit(1)
}

// Close runs the cleanups, the last registered first.
func (p *Program) Close() {
	for len(p.cleanups) > 0 {
		f := p.cleanups[len(p.cleanups)-1]
		p.cleanups = p.cleanups[:len(p.cleanups)-1]
		f()
	}
}
