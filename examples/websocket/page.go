package main

import (
	_ "embed"
	"net/http"
)

//go:embed page.html
var page []byte

// servePage serves the page at /: it opens a WebSocket to /ws, sends a
// message every so often, and shows the answers as they come.
func servePage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(page)
}
