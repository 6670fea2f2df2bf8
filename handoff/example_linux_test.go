package handoff_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/handoffd/handoff/handoff"
)

// A new process takes over from the one serving: started by a deploy
// script, a second unit, or in another container that shares the control
// socket's directory, it calls New with the same Config, which receives
// the listening sockets; it serves on them and calls Ready, and the old
// process, its Exit closed, drains and exits. Here both generations run
// in one process, so that the example runs; in production each is a
// process of its own, typically of a new build.
func Example_takeover() {
	dir, err := os.MkdirTemp("", "takeover") // private: the control socket lives here
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := handoff.Config{
		Name:         "api",
		Socket:       filepath.Join(dir, "api.sock"),
		CanaryWindow: 100 * time.Millisecond, // for the example; by default 10 s
	}
	ctx := context.Background()

	// The process serving so far.
	old, err := handoff.New(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer old.Close()
	ln, err := old.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go answer(ln, "old")
	if err := old.Ready(); err != nil {
		log.Fatal(err)
	}

	// The new process.
	upg, err := handoff.New(ctx, cfg) // receives the old process's sockets
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Close()
	ln2, err := upg.Listen("tcp", "127.0.0.1:0") // the same arguments: the same socket
	if err != nil {
		log.Fatal(err)
	}
	go answer(ln2, "new")
	if err := upg.Ready(); err != nil { // the old process stops accepting
		log.Fatal(err)
	}

	<-old.Exit() // once the canary window has passed; the old process drains
	fmt.Println("generation", upg.Generation(), "on the same address:", ln2.Addr().String() == ln.Addr().String())
	fmt.Println("the server answers:", ask(ln.Addr().String()))
	// Output:
	// generation 2 on the same address: true
	// the server answers: new
}

// answer writes text to every connection ln accepts, until it is closed.
func answer(ln net.Listener, text string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.WriteString(c, text)
		c.Close()
	}
}

// ask returns what the server on addr answers.
func ask(addr string) string {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	b, _ := io.ReadAll(c)
	return string(b)
}
