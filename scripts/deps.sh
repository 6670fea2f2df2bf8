#!/bin/sh
# Installs the Debian packages the integration tests need, if missing.
# Idempotent; needs root (or sudo) only when something is missing.
set -eu

# command:package pairs
needs="
unshare:util-linux
nsenter:util-linux
systemctl:systemd
lighttpd:lighttpd
gunicorn:gunicorn
nginx:nginx-light
"

missing=""
for pair in $needs; do
	cmd=${pair%%:*}
	pkg=${pair#*:}
	# servers live in /usr/sbin, which a PATH may lack
	command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing:$missing" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
