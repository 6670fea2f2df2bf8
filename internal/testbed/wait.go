//go:build unix

package testbed

import "time"

// Eventually polls cond every few milliseconds until it holds, and fails
// tb, saying what it waited for, if it does not within bound.
func Eventually(tb TB, bound time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("waited %v for %s", bound, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
