//go:build !unix

package handoff

func checkPrivateDir(string) error { return notSupported() }
