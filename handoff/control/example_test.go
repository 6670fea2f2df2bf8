package control_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/handoff/control"
)

// A deploy step: reload the service "api" and wait for the outcome, as
// `handoff reload -name api` does.
func ExampleReload() {
	socket, err := control.SocketPath("api")
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = control.Reload(ctx, socket, func(line string) { fmt.Println(line) })
	var refused *handoff.RefusedError
	switch {
	case errors.Is(err, handoff.ErrInProgress):
		log.Fatal("another reload is under way")
	case errors.As(err, &refused):
		log.Fatal("reload failed, the old build still serves: ", refused.Reason)
	case err != nil:
		log.Fatal(err)
	}
}

// Which process and which build serve the service "api".
func ExampleStatus() {
	socket, err := control.SocketPath("api")
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := control.Status(ctx, socket)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("pid %d, generation %d, %s, build %s %s\n", st.PID, st.Generation, st.State, st.Build.Version, st.Build.Revision)
}
