#!/usr/bin/env bash
# Build the real peers the end-to-end tests run against, from the Go module
# proxy only (GOTOOLCHAIN=local CGO_ENABLED=0), into a versioned cache:
#
#   ${TAILROUTE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tailroute}/peers/<name>-<version>/
#
#   tailscale   tailscaled, tailscale
#   tailscale-identity   a trimmed tailscaled for identity pods
#   headscale   headscale
#   kubernetes  kube-apiserver, kube-controller-manager, kube-scheduler, kubeadm,
#               kubectl
#   etcd        etcd, etcdctl
#   cnitool     cnitool (in $CACHE/tools/cnitool-<version>/, shared with
#               scripts/install-test-deps.sh so it is built once)
#   helm        helm (in $CACHE/tools/helm-<version>/)
#   kubeconform kubeconform (in $CACHE/tools/kubeconform-<version>/)
#   k8s-schemas kubeconform's JSON schemas for the Kubernetes peer's API, made
#               by scripts/k8s-json-schemas.py from the k8s.io/kubernetes
#               module's OpenAPI document (needs python3), in
#               $CACHE/tools/k8s-schemas-<kubernetes version>-r<revision>/
#               v<kubernetes version>-standalone-strict/
#
# Versions are pinned in scripts/peers.env. Each entry is built into
# <dir>.tmp and renamed when complete, so a killed build never leaves a half
# entry (the next run discards the .tmp). Idempotent: a warm run only checks
# the cache and prints, one line per peer on stdout, "name version dir".
# Progress and the wall-clock time of each cold build go to stderr (and to
# <dir>/.build-info).
#
# Usage: build-peers.sh [--list] [NAME...]
#   NAME...   only these peers (default: all)
#   --list    print "name version dir state" without building anything
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=peers.env
. "$here/peers.env"

CACHE=${TAILROUTE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tailroute}
PEERS_DIR=$CACHE/peers
ALL_PEERS=(tailscale tailscale-identity headscale kubernetes etcd cnitool helm kubeconform k8s-schemas)

log() { echo "build-peers: $*" >&2; }
die() { echo "build-peers: $*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit "${1:-0}"
}

version_of() {
  case $1 in
    tailscale) echo "$TAILSCALE_VERSION" ;;
    tailscale-identity) echo "$TAILSCALE_VERSION-r$TAILSCALE_IDENTITY_REVISION" ;;
    headscale) echo "$HEADSCALE_VERSION" ;;
    kubernetes) echo "$KUBERNETES_VERSION" ;;
    etcd) echo "$ETCD_VERSION" ;;
    cnitool) echo "$CNITOOL_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    kubeconform) echo "$KUBECONFORM_VERSION" ;;
    k8s-schemas) echo "$KUBERNETES_VERSION-r$K8S_SCHEMAS_REVISION" ;;
    *) return 1 ;;
  esac
}

dir_of() {
  case $1 in
    cnitool|helm|kubeconform|k8s-schemas) echo "$CACHE/tools/$1-$(version_of "$1")" ;;
    *) echo "$PEERS_DIR/$1-$(version_of "$1")" ;;
  esac
}

bins_of() {
  case $1 in
    tailscale) echo "tailscaled tailscale" ;;
    tailscale-identity) echo "tailscaled" ;;
    headscale) echo "headscale" ;;
    kubernetes) echo "kube-apiserver kube-controller-manager kube-scheduler kubeadm kubectl" ;;
    etcd) echo "etcd etcdctl" ;;
    cnitool) echo "cnitool" ;;
    helm) echo "helm" ;;
    kubeconform) echo "kubeconform" ;;
  esac
}

# Files (not programs) an entry must have to count as built.
files_of() {
  case $1 in
    k8s-schemas) echo "v${KUBERNETES_VERSION#v}-standalone-strict/daemonset-apps-v1.json" ;;
  esac
}

is_built() {
  local dir b
  dir=$(dir_of "$1")
  for b in $(bins_of "$1"); do
    [ -x "$dir/$b" ] || return 1
  done
  for b in $(files_of "$1"); do
    [ -s "$dir/$b" ] || return 1
  done
}

# --- Go toolchain (only needed when something has to be built) ------------

GO_READY=
require_go() {
  [ -n "$GO_READY" ] && return 0
  local hint="install Go >= $GO_MIN_VERSION from https://go.dev/dl/ (Debian 12's golang-go is 1.19, too old) and put its bin/ on PATH"
  command -v go >/dev/null 2>&1 || die "the peers are built from the Go module proxy and 'go' is not on PATH: $hint"
  local v
  v=$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null) || die "'go env GOVERSION' failed: $hint"
  v=${v#go}
  v=${v%%[!0-9.]*}   # go1.27rc1 -> 1.27
  if [ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$v" | sort -V | head -n1)" != "$GO_MIN_VERSION" ]; then
    die "found Go $v at $(command -v go), need >= $GO_MIN_VERSION (GOTOOLCHAIN=local: no toolchain download): $hint"
  fi
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off
  # Keep the user's GOFLAGS (e.g. -buildvcs=false), add -mod=mod so wrapper
  # modules get their go.sum filled in. GOCACHE/GOMODCACHE stay the defaults.
  GOFLAGS_BASE="$(go env GOFLAGS)"
  GO_READY=1
}

# Print a field of `go mod download -json MODULE@VERSION` (e.g. GoMod, Dir).
mod_field() {
  local json
  json=$(go mod download -json "$1" 2>&1) || die "go mod download $1 failed (is the Go module proxy reachable? does that version exist?): $json"
  printf '%s\n' "$json" | sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}\$/\1/p" | head -n1
}

# The upstream commit of MODULE@VERSION, when the proxy's .info records it
# (proxy.golang.org's does for most modules); empty otherwise.
commit_of() {
  go list -m -f '{{with .Origin}}{{.Hash}}{{end}}' "$1" 2>/dev/null || true
}

# --- builders: each fills the directory $1 (a fresh .tmp) -----------------

build_tailscale() {
  # The version stamps upstream's build_dist.sh sets; without them a module
  # build reports "1.98.10-ERR-BuildInfo" (to `tailscale version` and, as
  # Hostinfo.IPNVersion, to the control server).
  local v=$TAILSCALE_VERSION commit
  commit=$(commit_of "tailscale.com@$v")
  GOBIN="$1" GOFLAGS="$GOFLAGS_BASE -mod=mod" go install -trimpath -ldflags="-s -w \
    -X tailscale.com/version.shortStamp=${v#v} \
    -X tailscale.com/version.longStamp=${v#v}${commit:+-t${commit:0:9}} \
    ${commit:+-X tailscale.com/version.gitCommitStamp=$commit}" \
    "tailscale.com/cmd/tailscaled@$v" "tailscale.com/cmd/tailscale@$v"
}

# The trimmed tailscaled run once per identity pod (node-agent/src/identity):
# every feature tag omitted but these, each needed by v1.98.10:
#   osrouter            kernel TUN: addresses, routes (table 52), policy rules
#   netstack            without it, any packet tailscaled injects into the TUN
#                       (TSMP pong or reject, disco advert, ICMP ping) panics
#   unixsocketidentity  without it, every LocalAPI call is refused (403)
#   tailnetlock         without it, the stock CLI cannot decode the netmap's
#                       lock head and `tailscale up` fails
#   ipnbus, advertiseroutes, c2n, useroutes, health, bakedroots
# Dropping dns/resolved/dbus/networkmanager also means it never touches the
# node's resolver. Measured (20 instances, docs/per-pod-identity.md): about
# 9 MiB PSS each at rest, against 24-41 MiB for the stock build.
TAILSCALE_IDENTITY_OMIT="ace acme advertiseexitnode appconnectors aws bird \
cachenetmap captiveportal capture cliconndiag clientmetrics clientupdate cloud \
colorable completion completion_scripts conn25 dbus debug debugeventbus \
debugportmapper desktop_sessions dns doctor drive gro hujsonconf \
identityfederation iptables kube linkspeed linuxdnsfight listenrawdisco logtail \
netlog networkmanager oauthkey outboundproxy peerapiclient \
peerapiserver portlist portmapper posture qrcodes relayserver resolved sdnotify \
serve ssh synology syspolicy systray taildrop tap tpm tundevstats useexitnode \
useproxy usermetrics wakeonlan webbrowser webclient"

build_tailscale_identity() {
  local v=$TAILSCALE_VERSION commit tags
  commit=$(commit_of "tailscale.com@$v")
  # shellcheck disable=SC2086 # the list is split into words on purpose
  tags=$(printf 'ts_omit_%s,' $TAILSCALE_IDENTITY_OMIT); tags=${tags%,}
  GOBIN="$1" GOFLAGS="$GOFLAGS_BASE -mod=mod" go install -trimpath -tags="$tags" -ldflags="-s -w \
    -X tailscale.com/version.shortStamp=${v#v} \
    -X tailscale.com/version.longStamp=${v#v}${commit:+-t${commit:0:9}} \
    ${commit:+-X tailscale.com/version.gitCommitStamp=$commit}" \
    "tailscale.com/cmd/tailscaled@$v"
}

build_headscale() {
  # Not `go install ...@version`: that also fetches the module's version list
  # to look for a deprecation notice, and a proxy that refuses the list (the Go
  # module proxy here answers 403 for headscale's) makes it fail. A wrapper module
  # only fetches the pinned version (`headscale version` still reports it).
  local out=$1 mod=$1/module v=$HEADSCALE_VERSION gomod
  mkdir -p "$mod"
  gomod=$(mod_field "github.com/juanfont/headscale@$v" GoMod)
  [ -f "$gomod" ] || die "no go.mod for github.com/juanfont/headscale@$v"
  {
    echo "// Generated by scripts/build-peers.sh: builds headscale $v."
    echo "module tailroute.invalid/peers/headscale"
    echo
    grep -E '^(go|godebug)[[:space:]]' "$gomod"
    echo
    echo "require github.com/juanfont/headscale $v"
  } >"$mod/go.mod"
  (cd "$mod" && GOFLAGS="$GOFLAGS_BASE -mod=mod" go build -trimpath -ldflags="-s -w" -o "$out/" \
    github.com/juanfont/headscale/cmd/headscale)
}

build_cnitool() {
  # Exactly the command scripts/install-test-deps.sh runs, so either script's
  # build is the other's cache hit.
  GOBIN="$1" GOFLAGS=-mod=mod go install "github.com/containernetworking/cni/cnitool@$CNITOOL_VERSION"
}

build_kubernetes() {
  local out=$1 mod=$1/module v=$KUBERNETES_VERSION gomod commit date staging minor
  mkdir -p "$mod"
  gomod=$(mod_field "k8s.io/kubernetes@$v" GoMod)
  [ -f "$gomod" ] || die "no go.mod for k8s.io/kubernetes@$v"
  commit=$(commit_of "k8s.io/kubernetes@$v")
  date=$(go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' "k8s.io/kubernetes@$v" 2>/dev/null || true)
  # Staging modules: required at v0.0.0 and/or replaced with ./staging/... in
  # that version's go.mod. Each is published on its own as v0.<minor>.<patch>.
  staging=$({
    sed -n 's/^[[:space:]]*\(k8s\.io\/[^[:space:]]*\)[[:space:]][[:space:]]*v0\.0\.0\([[:space:]].*\)\{0,1\}$/\1/p' "$gomod"
    sed -n 's/^[[:space:]]*\(k8s\.io\/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\.\/staging\/.*$/\1/p' "$gomod"
  } | sort -u)
  [ -n "$staging" ] || die "found no staging modules in $gomod"
  local sv="v0.${v#v1.}"   # v1.35.6 -> v0.35.6
  minor=${v#v1.}; minor=${minor%%.*}
  {
    echo "// Generated by scripts/build-peers.sh: builds k8s.io/kubernetes $v"
    echo "// with its staging modules taken from the proxy at $sv."
    echo "module tailroute.invalid/peers/kubernetes"
    echo
    # Same go and godebug lines as k8s.io/kubernetes, so the binaries get the
    # GODEBUG defaults upstream builds with.
    grep -E '^(go|godebug)[[:space:]]' "$gomod"
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    echo "replace ("
    local m
    for m in $staging; do echo "	$m => $m $sv"; done
    echo ")"
  } >"$mod/go.mod"
  # Upstream's ldflags (hack/lib/version.sh, hack/lib/golang.sh), so that
  # `kubeadm version` and the apiserver's /version report the real version.
  local ld="-s -w" k val
  for k in gitVersion:$v gitMajor:1 gitMinor:$minor gitCommit:$commit gitTreeState:clean buildDate:$date; do
    val=${k#*:}; k=${k%%:*}
    ld+=" -X k8s.io/client-go/pkg/version.$k=$val -X k8s.io/component-base/version.$k=$val"
  done
  # One go build for all five, so shared packages compile once.
  (cd "$mod" && GOFLAGS="$GOFLAGS_BASE -mod=mod" go build -trimpath -tags=selinux,notest,grpcnotrace \
    -ldflags="$ld" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubeadm \
    k8s.io/kubernetes/cmd/kubectl)
}

build_etcd() {
  local out=$1 mod=$1/module v=$ETCD_VERSION commit gomod
  mkdir -p "$mod"
  gomod=$(mod_field "go.etcd.io/etcd/server/v3@$v" GoMod)
  [ -f "$gomod" ] || die "no go.mod for go.etcd.io/etcd/server/v3@$v"
  commit=$(commit_of "go.etcd.io/etcd/server/v3@$v")
  # server/v3 and etcdctl/v3 replace their sibling modules with ../api etc.;
  # here every go.etcd.io/etcd module comes from the proxy at the same version.
  cat >"$mod/go.mod" <<EOF
// Generated by scripts/build-peers.sh: builds etcd $v and etcdctl $v.
module tailroute.invalid/peers/etcd

$(grep -E '^go[[:space:]]' "$gomod")

require (
	go.etcd.io/etcd/server/v3 $v
	go.etcd.io/etcd/etcdctl/v3 $v
)
EOF
  (cd "$mod" && GOFLAGS="$GOFLAGS_BASE -mod=mod" go build -trimpath \
    -ldflags="-s -w${commit:+ -X go.etcd.io/etcd/api/v3/version.GitSHA=${commit:0:10}}" -o "$out/" \
    go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3)
  # go build names a main package ending in /v3 after the element before it.
  mv "$out/server" "$out/etcd"
}

build_helm() {
  # Upstream's version stamps (its Makefile's LDFLAGS), so `helm version`
  # reports the pinned version instead of a bare "v4.3".
  local v=$HELM_VERSION commit
  commit=$(commit_of "helm.sh/helm/v4@$v")
  GOBIN="$1" GOFLAGS="$GOFLAGS_BASE -mod=mod" go install -trimpath -ldflags="-s -w \
    -X helm.sh/helm/v4/internal/version.version=$v \
    -X helm.sh/helm/v4/internal/version.metadata= \
    ${commit:+-X helm.sh/helm/v4/internal/version.gitCommit=$commit} \
    -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v4/cmd/helm@$v"
}

build_kubeconform() {
  GOBIN="$1" GOFLAGS="$GOFLAGS_BASE -mod=mod" go install -trimpath \
    -ldflags="-s -w -X main.version=$KUBECONFORM_VERSION" \
    "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
}

build_k8s_schemas() {
  # The OpenAPI document of the very Kubernetes the lab builds, from the Go
  # module cache (downloaded from the proxy if the kubernetes peer has not
  # been built yet): no schema registry is ever contacted.
  local v=$KUBERNETES_VERSION dir swagger
  command -v python3 >/dev/null 2>&1 || die "k8s-schemas needs python3 (Debian: apt-get install python3)"
  dir=$(mod_field "k8s.io/kubernetes@$v" Dir)
  swagger=$dir/api/openapi-spec/swagger.json
  [ -f "$swagger" ] || die "k8s.io/kubernetes@$v has no $swagger"
  python3 "$here/k8s-json-schemas.py" "$swagger" "$1/v${v#v}-standalone-strict"
}

# --- driver ---------------------------------------------------------------

build_one() {
  local name=$1 version dir tmp start end secs b
  version=$(version_of "$name")
  dir=$(dir_of "$name")
  is_built "$name" && return 0
  require_go
  tmp=$dir.tmp
  rm -rf "$tmp"                    # leftover of a killed build
  if [ -e "$dir" ]; then           # incomplete entry from an older script
    log "discarding incomplete $dir"
    rm -rf "$dir"
  fi
  mkdir -p "$tmp"
  log "building $name $version into $dir"
  start=$(date +%s%N)
  "build_${name//-/_}" "$tmp" >&2 || { rm -rf "$tmp"; die "building $name $version failed (see the go output above)"; }
  end=$(date +%s%N)
  for b in $(bins_of "$name"); do
    [ -x "$tmp/$b" ] || { rm -rf "$tmp"; die "building $name $version produced no $b"; }
  done
  for b in $(files_of "$name"); do
    [ -s "$tmp/$b" ] || { rm -rf "$tmp"; die "building $name $version produced no $b"; }
  done
  secs=$(( (end - start) / 1000000000 ))
  if [ "$name" != cnitool ]; then  # keep cnitool's directory as install-test-deps.sh makes it
    printf 'name=%s\nversion=%s\nbuild_seconds=%s\nbuilt_at=%s\ngo=%s\n' \
      "$name" "$version" "$secs" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(go env GOVERSION)" >"$tmp/.build-info"
  fi
  mv -T "$tmp" "$dir"
  log "built $name $version in ${secs}s ($(du -sh "$dir" | cut -f1)): $dir"
}

list=
names=()
for arg in "$@"; do
  case $arg in
    --list) list=1 ;;
    -h|--help) usage 0 ;;
    -*) echo "build-peers: unknown option $arg" >&2; usage 2 ;;
    *) version_of "$arg" >/dev/null || die "unknown peer '$arg' (known: ${ALL_PEERS[*]})"; names+=("$arg") ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=("${ALL_PEERS[@]}")

if [ -n "$list" ]; then
  for n in "${names[@]}"; do
    state=missing; is_built "$n" && state=built
    printf '%s\t%s\t%s\t%s\n' "$n" "$(version_of "$n")" "$(dir_of "$n")" "$state"
  done
  exit 0
fi

need=0
for n in "${names[@]}"; do is_built "$n" || need=1; done
if [ "$need" = 1 ]; then
  mkdir -p "$PEERS_DIR" "$CACHE/tools"
  # One builder at a time per cache (two runs must not share a .tmp).
  exec 9>"$PEERS_DIR/.lock"
  flock 9
  for n in "${names[@]}"; do build_one "$n"; done
fi
for n in "${names[@]}"; do
  printf '%s\t%s\t%s\n' "$n" "$(version_of "$n")" "$(dir_of "$n")"
done
