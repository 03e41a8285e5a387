#!/usr/bin/env bash
# Two pods on a tailroute-bridge network, on this machine, touching nothing
# of the real host: a throwaway "node" namespace holds the bridge, two
# throwaway "pod" namespaces get a veth each. ADD, CHECK, ping, STATUS, DEL,
# GC, then everything is removed (also on failure or Ctrl-C).
set -euo pipefail

PLUGIN=$(realpath "${1:-target/release/tailroute-bridge}")
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it creates network namespaces): sudo make demo" >&2; exit 1; }
[ -x "$PLUGIN" ] || { echo "demo: $PLUGIN not found; run make build" >&2; exit 1; }

tag=trdemo$$
node=$tag-node
work=$(mktemp -d)
cleanup() {
  for ns in "$node" "$tag-pod1" "$tag-pod2"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

ip netns add "$node"
ip netns add "$tag-pod1"
ip netns add "$tag-pod2"

cat >"$work/conf.json" <<JSON
{
  "cniVersion": "1.1.0",
  "name": "demo",
  "type": "tailroute-bridge",
  "bridge": "trdemo0",
  "mtu": 1280,
  "ipam": {
    "ranges": [[{"subnet": "10.244.7.0/24"}], [{"subnet": "fd00:10:244:7::/64"}]],
    "dataDir": "$work/ipam"
  }
}
JSON

plugin() { # COMMAND POD [extra env...]
  local cmd=$1 pod=$2; shift 2
  ip netns exec "$node" env -i PATH="$PATH" CNI_COMMAND="$cmd" CNI_CONTAINERID="$pod" \
    CNI_NETNS="/run/netns/$tag-$pod" CNI_IFNAME=eth0 \
    CNI_ARGS="K8S_POD_NAMESPACE=demo;K8S_POD_NAME=$pod;K8S_POD_UID=uid-$pod" "$@" "$PLUGIN"
}
step() { printf '\n== %s\n' "$*"; }

for pod in pod1 pod2; do
  step "ADD $pod"
  plugin ADD "$pod" <"$work/conf.json" | tee "$work/$pod.json"
  echo
done
ip1=$(sed -E 's/.*"address":"([0-9.]+)\/.*/\1/' "$work/pod1.json")
ip2=$(sed -E 's/.*"address":"([0-9.]+)\/.*/\1/' "$work/pod2.json")

step "pod1 ($ip1) -> pod2 ($ip2), pod1 -> gateway, over IPv4 and IPv6"
ip netns exec "$tag-pod1" ping -c 2 -W 2 "$ip2" | tail -n 2
ip netns exec "$tag-pod1" ping -c 1 -W 2 10.244.7.1 | tail -n 1
ip netns exec "$tag-pod1" ping -6 -c 1 -W 2 fd00:10:244:7::1 | tail -n 1

step "CHECK pod1 against its ADD result"
with_key() { # FILE KEY JSON: the config with one more top-level key
  local conf
  conf=$(cat "$work/conf.json")
  printf '%s, "%s": %s}\n' "${conf%\}*}" "$2" "$3" >"$1"
}
with_key "$work/check.json" prevResult "$(cat "$work/pod1.json")"
plugin CHECK pod1 <"$work/check.json"
echo "CHECK: ok"

step "STATUS"
plugin STATUS pod1 <"$work/conf.json"
echo "STATUS: ready for ADD"

step "attachment records (what DEL, GC and tailroute-agent read)"
cat "$work/ipam/demo/state.json"; echo

step "DEL pod1 (its namespace still exists), GC with only pod2 valid"
plugin DEL pod1 <"$work/conf.json"
echo "DEL: ok"
with_key "$work/gc.json" cni.dev/valid-attachments '[{"containerID": "pod2", "ifname": "eth0"}]'
plugin GC pod2 <"$work/gc.json"
echo "GC: ok"
plugin DEL pod2 <"$work/conf.json"
echo "DEL pod2: ok"
cat "$work/ipam/demo/state.json"; echo

step "done: namespaces and files are removed on exit"
