package handoff

import "github.com/handoffd/handoff/internal/ctl"

// handoffSupport reports why this platform cannot pass sockets between
// processes (nil where it can): ctl.Supported, by build tags. A variable
// only so that the tests on Linux run the code path every other platform
// takes (support_test.go).
var handoffSupport = ctl.Supported
