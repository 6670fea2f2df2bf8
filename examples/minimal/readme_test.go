package main

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// readmeHeading is the README.md section whose Go block is main.go.
const readmeHeading = "## Embed it in a Go server"

// TestReadmeShowsThisProgram fails when the Go block under readmeHeading in
// README.md is not main.go, so that README shows a program that compiles.
func TestReadmeShowsThisProgram(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	block, err := goBlockUnder(string(readme), readmeHeading)
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	got, want := trimLines(block), trimLines(string(src))
	for i := 0; i < len(got) || i < len(want); i++ {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Fatalf("README.md's Go block under %q differs from examples/minimal/main.go at line %d of the program:\nREADME:  %q\nmain.go: %q\ncopy main.go into README.md (or the other way round)", readmeHeading, i+1, g, w)
		}
	}
}

// goBlockUnder returns the body of the first ```go block in the section of
// the Markdown text md that starts at the line heading.
func goBlockUnder(md, heading string) (string, error) {
	lines := strings.Split(md, "\n")
	start := -1
	for i, l := range lines {
		if strings.TrimRight(l, " \t\r") == heading {
			start = i + 1
			break
		}
	}
	if start < 0 {
		return "", errors.New("README.md: no line " + heading)
	}
	for i := start; i < len(lines); i++ {
		l := strings.TrimRight(lines[i], " \t\r")
		if strings.HasPrefix(l, "## ") {
			break
		}
		if l != "```go" {
			continue
		}
		for j := i + 1; j < len(lines); j++ {
			if strings.TrimRight(lines[j], " \t\r") == "```" {
				return strings.Join(lines[i+1:j], "\n"), nil
			}
		}
		return "", errors.New("README.md: the ```go block under " + heading + " is not closed")
	}
	return "", errors.New("README.md: no ```go block under " + heading)
}

// trimLines splits s into lines without their trailing white space, and
// without the blank lines at the end.
func trimLines(s string) []string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " \t\r")
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}
