// Package testenv names the environment variables through which a test
// runs the handoff package's or cmd/handoff's test binary as a helper
// process: the packages' own tests and the integration tests (chaos,
// hostile peers, a broken build under the wrapper) both start them, so
// both must spell them alike.
package testenv

const (
	// Helper is the role the test binary plays instead of running tests.
	Helper = "HANDOFF_TEST_HELPER"
	// ChaosFile names a file that holds the step at which the
	// chaos-successor role dies.
	ChaosFile = "HANDOFF_TEST_CHAOS_FILE"
	// Service is the service name the chaos and hostile roles present.
	Service = "HANDOFF_TEST_SERVICE"
	// Hostile is the attack the hostile-peer role makes.
	Hostile = "HANDOFF_TEST_HOSTILE"
	// Conns is how many connections the hostile-peer role opens.
	Conns = "HANDOFF_TEST_CONNS"
	// Role is the role cmd/handoff's test binary plays (a child of the
	// wrapper) instead of running tests.
	Role = "HANDOFF_TEST_ROLE"
	// CrashAfter is when cmd/handoff's canary-crash role ends: a
	// duration after it started (it exits 3 then, having accepted
	// nothing), or CrashOnFirstConn.
	CrashAfter = "HANDOFF_TEST_CRASH_AFTER"
)

// CrashOnFirstConn, as CrashAfter, makes the canary-crash role panic on
// the first connection it accepts.
const CrashOnFirstConn = "first-connection"
