package main

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionLineOf(t *testing.T) {
	t.Parallel()
	platform := runtime.Version() + ", " + runtime.GOOS + "/" + runtime.GOARCH
	info := func(module string, settings ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/handoffd/handoff", Version: module}}
		for i := 0; i+1 < len(settings); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return bi
	}
	const rev = "380d2cc1a2b3c4d5e6f708192a3b4c5d6e7f8091"
	tests := []struct {
		name    string
		version string
		bi      *debug.BuildInfo
		want    string
	}{
		{"release", "v0.1.0", info("(devel)", "vcs.revision", rev, "vcs.modified", "false"),
			"handoff v0.1.0 (rev 380d2cc1a2b3, " + platform + ")"},
		{"release from a modified tree", "v0.1.0-dirty", info("(devel)", "vcs.revision", rev, "vcs.modified", "true"),
			"handoff v0.1.0-dirty (rev 380d2cc1a2b3+dirty, " + platform + ")"},
		{"local build", "", info("(devel)", "vcs.revision", rev),
			"handoff (devel) (rev 380d2cc1a2b3, " + platform + ")"},
		{"go install of a tagged module", "", info("v0.1.0"),
			"handoff v0.1.0 (" + platform + ")"},
		{"short revision kept whole", "", info("(devel)", "vcs.revision", "380d2cc"),
			"handoff (devel) (rev 380d2cc, " + platform + ")"},
		{"modified without a revision says nothing of it", "", info("(devel)", "vcs.modified", "true"),
			"handoff (devel) (" + platform + ")"},
		{"no build information", "", nil,
			"handoff (unknown) (" + platform + ")"},
		{"no build information, release", "v0.1.0", nil,
			"handoff v0.1.0 (" + platform + ")"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := versionLineOf(tt.version, tt.bi); got != tt.want {
				t.Errorf("versionLineOf(%q, ...) = %q, want %q", tt.version, got, tt.want)
			}
		})
	}
}

// TestVersionLine: the version set by -ldflags -X main.version wins over
// the module version, and the line ends with the Go version and platform.
func TestVersionLine(t *testing.T) {
	defer func(v string) { version = v }(version)
	version = "v9.8.7"
	got := versionLine()
	if !strings.HasPrefix(got, "handoff v9.8.7 (") || !strings.HasSuffix(got, runtime.Version()+", "+runtime.GOOS+"/"+runtime.GOARCH+")") {
		t.Fatalf("versionLine() = %q, want \"handoff v9.8.7 (..., %s, %s/%s)\"", got, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	}
}

// TestVersionCommand: `handoff version` and `-version` print the line and
// exit 0.
func TestVersionCommand(t *testing.T) {
	for _, arg := range []string{"version", "-version", "--version"} {
		var out, errOut strings.Builder
		if code := dispatch([]string{arg}, &out, &errOut); code != exitOK || out.String() != versionLine()+"\n" || errOut.Len() != 0 {
			t.Errorf("handoff %s: exit %d, stdout %q, stderr %q; want the version line", arg, code, out.String(), errOut.String())
		}
	}
}
