#!/bin/sh
# Builds the release binaries of cmd/handoff into dist/: static
# (CGO_ENABLED=0), -trimpath, stripped, with the version stamped in
# (-X main.version), one per platform, then dist/SHA256SUMS. Plain
# binaries rather than archives: one file to download and run, which
# `go version -m` and `file` inspect as it is; LICENSE goes beside them.
#
#   scripts/release.sh            # VERSION from git describe, else "dev"
#   VERSION=v0.1.0 scripts/release.sh
#
# Needs only Go (git for the version and the revision Go stamps in, when
# there is a checkout) and sha256sum or shasum.
set -eu

cd "$(dirname "$0")/.."
GO=${GO:-go}
PLATFORMS=${PLATFORMS:-"linux/amd64 linux/arm64"}

if [ -z "${VERSION:-}" ]; then
	VERSION=$(git describe --tags --always --dirty 2>/dev/null) || VERSION=dev
fi
case $VERSION in
'' | *[!A-Za-z0-9._+-]*)
	echo "release: VERSION=$VERSION: only letters, digits and . _ + - please" >&2
	exit 1
	;;
esac

if command -v sha256sum >/dev/null 2>&1; then
	sha256() { sha256sum "$@"; }
elif command -v shasum >/dev/null 2>&1; then
	sha256() { shasum -a 256 "$@"; }
else
	echo "release: neither sha256sum nor shasum found" >&2
	exit 1
fi

mkdir -p dist
rm -f dist/handoff-* dist/SHA256SUMS dist/LICENSE
for platform in $PLATFORMS; do
	os=${platform%/*}
	arch=${platform#*/}
	out=dist/handoff-$VERSION-$os-$arch
	echo "release: $out"
	# -buildvcs=auto: the revision is stamped in where git can tell it,
	# whatever GOFLAGS says, and left out (no error) where it cannot.
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch "$GO" build -trimpath -buildvcs=auto \
		-ldflags "-s -w -X main.version=$VERSION" -o "$out" ./cmd/handoff
done
cp LICENSE dist/LICENSE
(cd dist && sha256 handoff-* LICENSE >SHA256SUMS)
echo "release: dist/SHA256SUMS"
cat dist/SHA256SUMS
