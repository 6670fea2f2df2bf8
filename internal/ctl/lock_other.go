//go:build !unix

package ctl

import "context"

// LockFile takes an exclusive lock on path.
func LockFile(context.Context, string) (func(), error) { return nil, notSupported() }

// RemoveLock removes the lock file at path, under the lock.
func RemoveLock(context.Context, string) error { return notSupported() }
