package sdnotify

import (
	"fmt"
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

// CheckFDName applies systemd's rules for FileDescriptorName= and
// FDNAME=: 1 to MaxFDName bytes of printable ASCII, no space and no colon
// (the LISTEN_FDNAMES separator).
func CheckFDName(name string) error {
	if name == "" || len(name) > MaxFDName {
		return fmt.Errorf("socket name must be 1 to %d characters", MaxFDName)
	}
	for _, r := range name {
		if r <= ' ' || r > '~' || r == ':' {
			return fmt.Errorf("socket name %q: only printable ASCII, no spaces or colons", name)
		}
	}
	return nil
}

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
