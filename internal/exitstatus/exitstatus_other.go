//go:build !unix

package exitstatus

import "os"

// Go's own words are all there is: no wait status or signal names.

func describeSys(*os.ProcessState) (string, bool) { return "", false }

func signalName(os.Signal) (string, bool) { return "", false }
