//go:build !unix

package handoff

import "context"

func lockFile(context.Context, string) (func(), error) { return nil, notSupported() }
