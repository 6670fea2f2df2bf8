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
h2load:nghttp2-client
wrk:wrk
chromium:chromium
uvicorn:uvicorn
php-fpm8.2:php8.2-fpm
uwsgi:uwsgi-plugin-python3
kresd:knot-resolver
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
# The tests start these servers themselves, on loopback ports of their
# own: keep the packages from starting theirs (nginx, lighttpd on port 80)
# while installing, with Debian's policy-rc.d, unless one is in place.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
	$sudo chmod 755 "$policy"
	trap '$sudo rm -f "$policy"' EXIT
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
