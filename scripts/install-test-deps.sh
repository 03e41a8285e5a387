#!/usr/bin/env bash
# Install what the test tiers and the benchmark need on a fresh Debian 12
# machine, and nothing else: iproute2 and ping for the namespace tests,
# Debian's reference CNI plugins (the baseline the benchmark and the cnitool
# test compare against), GNU time (the benchmark's peak-RSS launcher),
# nftables (the lab's NAT routers), openssl (the lab's certificates),
# jq (the lab demo), iperf3 (the agent benchmark's throughput figures),
# vagrant and python3-venv (bootstrap/tests/provisioning.rs: vagrant validate,
# the venv of scripts/install-python-tools.sh),
# and cnitool built from the Go module
# proxy into a versioned cache. Safe to run again: a warm run takes a second.
#
# Prints nothing on success but the cnitool path on the last line.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.env
. "$here/peers.env"   # CNITOOL_VERSION, shared with build-peers.sh
CACHE=${TAILROUTE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tailroute}
CNITOOL_DIR=$CACHE/tools/cnitool-$CNITOOL_VERSION

die() { echo "install-test-deps: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root: the namespace tests create network namespaces, bridges and veths (run: sudo make test)"

missing=()
for pkg in iproute2 iputils-ping containernetworking-plugins time nftables openssl jq iperf3 vagrant python3-venv; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-test-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
fi
if [ ! -x /usr/lib/cni/bridge ] || [ ! -x /usr/lib/cni/host-local ]; then
  die "/usr/lib/cni/bridge or host-local missing after installing containernetworking-plugins"
fi

if [ ! -x "$CNITOOL_DIR/cnitool" ]; then
  command -v go >/dev/null 2>&1 \
    || die "cnitool is built from the Go module proxy and needs Go >= 1.21: install it (apt-get install golang-go, or https://go.dev/doc/install) and run again"
  echo "install-test-deps: building cnitool $CNITOOL_VERSION into $CNITOOL_DIR" >&2
  mkdir -p "$CNITOOL_DIR.tmp"
  GOBIN="$CNITOOL_DIR.tmp" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod \
    go install "github.com/containernetworking/cni/cnitool@$CNITOOL_VERSION" >&2 \
    || die "go install cnitool@$CNITOOL_VERSION failed (is the Go module proxy reachable?)"
  rm -rf "$CNITOOL_DIR" && mv "$CNITOOL_DIR.tmp" "$CNITOOL_DIR"
fi
echo "$CNITOOL_DIR/cnitool"
