package sdnotify

import (
	"net/url"
	"strings"
)

// storePrefix starts the FDNAME= of every socket the handoff package
// stores; the rest is the socket's key, escaped. So a process restarted
// with the store's sockets tells them from a socket unit's, and finds
// them by key.
const storePrefix = "handoff."

// MaxFDName is systemd's limit on FDNAME=.
const MaxFDName = 255

// StoreName is the FDNAME= under which the socket with key is stored:
// printable ASCII without ':' (LISTEN_FDNAMES separates names with it).
// It reports false when the name would be longer than MaxFDName.
func StoreName(key string) (string, bool) {
	name := storePrefix + url.QueryEscape(key)
	return name, len(name) <= MaxFDName
}

// StoredKey is the key of a socket passed under the fd store name name,
// or false when name is not one of ours.
func StoredKey(name string) (string, bool) {
	esc, ok := strings.CutPrefix(name, storePrefix)
	if !ok {
		return "", false
	}
	key, err := url.QueryUnescape(esc)
	return key, err == nil && key != ""
}
