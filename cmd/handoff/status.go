package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/handoffd/handoff/handoff"
)

// statusDetail is what the wrapper adds to `handoff status`.
type statusDetail struct {
	// Version is the wrapper's `handoff version` line, with the release
	// version that Status.Build (the module's) may not know.
	Version  string        `json:"version,omitempty"`
	Command  []string      `json:"command"`
	Ready    string        `json:"ready"`
	Children []childStatus `json:"children"`
	Restarts int           `json:"restarts"` // after a child died on its own
	// LastRollback says why the latest child that died within its canary
	// window was replaced by the previous executable.
	LastRollback string `json:"last_rollback,omitempty"`
	// CanaryUntil: till then a serving child that exits is replaced by
	// the previous executable (zero: no window runs).
	CanaryUntil time.Time `json:"canary_until,omitzero"`
	// Sockets says how the children get each -listen socket.
	Sockets []socketMode `json:"socket_modes,omitempty"`
}

// socketMode is how the children get one -listen socket.
type socketMode struct {
	Socket  string `json:"socket"`  // the -listen
	Address string `json:"address"` // where it is bound
	// Mode is "per-generation" (each child generation its own socket,
	// new connections steered to the newest ready one) or "shared" (every
	// child a duplicate of the wrapper's socket).
	Mode string `json:"mode"`
	Why  string `json:"why,omitempty"` // why the socket is shared
}

// childStatus is one child of the wrapper.
type childStatus struct {
	PID     int       `json:"pid"`
	Number  int       `json:"number"` // 1 for the wrapper's first child
	Role    string    `json:"role"`   // serving, starting, stopping
	Started time.Time `json:"started"`
	// Exe is the executable it runs, as it was when the child started.
	Exe *exeStatus `json:"exe,omitempty"`
}

// exeStatus is what the wrapper knows of a child's build: the file, and
// for a Go binary what the toolchain stamped into it.
type exeStatus struct {
	Path     string    `json:"path"`
	Size     int64     `json:"size"`
	Modified time.Time `json:"modified"`
	// Build is the Go build information in the file; nil for a program
	// that is not written in Go (or was built without it).
	Build *handoff.Build `json:"build,omitempty"`
}

// text is e for a person: "/usr/bin/app (modified 2026-12-03T06:00:00Z,
// 8.1 MB), build v1.2.0, rev 380d2cc1a2b3".
func (e *exeStatus) text() string {
	t := fmt.Sprintf("%s (modified %s, %.1f MB)", e.Path, e.Modified.Format(time.RFC3339), float64(e.Size)/1e6)
	if e.Build == nil {
		return t + ", no Go build information"
	}
	return t + ", build " + buildText(e.Build)
}

// printStatus writes st for a person.
func printStatus(w io.Writer, st handoff.Status) {
	fmt.Fprintf(w, "service:    %s\n", st.Service)
	var d statusDetail
	wrapper := len(st.Detail) > 0 && json.Unmarshal(st.Detail, &d) == nil && d.Command != nil
	label := "process:    pid %d (embeds the handoff library)"
	if wrapper {
		label = "wrapper:    pid %d (handoff run)"
	}
	fmt.Fprintf(w, label+", generation %d, %s, up %v\n", st.PID, st.Generation, st.State, time.Since(st.Started).Round(time.Second))
	if wrapper && d.Version != "" {
		fmt.Fprintf(w, "version:    %s\n", d.Version) // the wrapper's own, with its revision
	} else {
		fmt.Fprintf(w, "build:      %s\n", buildText(&st.Build))
	}
	if st.PredecessorBuild != nil {
		fmt.Fprintf(w, "took over:  from build %s\n", buildText(st.PredecessorBuild))
	}
	if wrapper {
		fmt.Fprintf(w, "command:    %s\n", strings.Join(d.Command, " "))
		fmt.Fprintf(w, "ready:      %s\n", d.Ready)
		if len(d.Children) == 0 {
			fmt.Fprintf(w, "child:      none running (a crashed child is restarted after a backoff)\n")
		}
		for _, c := range d.Children {
			fmt.Fprintf(w, "child:      %s (pid %d, child %d of this wrapper, up %v)\n", c.Role, c.PID, c.Number, time.Since(c.Started).Round(time.Second))
			if c.Exe != nil {
				fmt.Fprintf(w, "  runs:     %s\n", c.Exe.text())
			}
		}
		fmt.Fprintf(w, "restarts:   %d\n", d.Restarts)
		if !d.CanaryUntil.IsZero() {
			fmt.Fprintf(w, "canary:     until %s, the previous build stands by\n", d.CanaryUntil.Format(time.RFC3339))
		}
		if d.LastRollback != "" {
			fmt.Fprintf(w, "rollback:   %s\n", d.LastRollback)
		}
		for _, m := range d.Sockets {
			line := m.Socket + " at " + m.Address + ": " + m.Mode
			if m.Why != "" {
				line += " (" + m.Why + ")"
			}
			fmt.Fprintf(w, "socket mode: %s\n", line)
		}
	}
	for _, s := range st.Sockets {
		name := s.Name
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(w, "socket:     %s %s %s\n", name, s.Network, s.Address)
	}
	if r := st.LastReload; r != nil {
		result := "ok"
		switch {
		case r.RolledBack:
			result = r.Error // says it was rolled back, and why
		case r.Error != "":
			result = "failed: " + r.Error
		}
		if r.SuccessorBuild != nil {
			result += ", successor build " + buildText(r.SuccessorBuild)
		}
		fmt.Fprintf(w, "last reload: %s, took %v, %s\n", r.At.Format(time.RFC3339), r.Duration.Round(time.Millisecond), result)
	} else {
		fmt.Fprintf(w, "last reload: none\n")
	}
}

// buildText is b for a person: "v0.1.0, rev 380d2cc1a2b3".
func buildText(b *handoff.Build) string {
	text := b.Version
	if text == "" {
		text = "(unknown version)"
	}
	if rev := b.Revision; rev != "" {
		dirty := strings.HasSuffix(rev, "+dirty")
		rev = strings.TrimSuffix(rev, "+dirty")
		if len(rev) > 12 {
			rev = rev[:12]
		}
		text += ", rev " + rev
		if dirty {
			text += "+dirty"
		}
	}
	return text
}
