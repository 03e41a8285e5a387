#!/usr/bin/env bash
# `make lab`: bring the one-machine lab up and show it working.
#
#   LAB_NODES (3)  LAB_TOPOLOGY (hybrid)  LAB_DUAL_STACK (empty; 1 for IPv6 too)
#
# Leaves the lab running for you to explore; `tailroute lab down` removes it.
# If a lab is already up, shows that one instead of building another.
set -euo pipefail

tr=${TAILROUTE:-target/release/tailroute}
nodes=${LAB_NODES:-3}
topology=${LAB_TOPOLOGY:-hybrid}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if "$tr" lab status >/dev/null 2>&1; then
  say "a lab is already up (tear it down with: $tr lab down)"
  "$tr" lab status
else
  "$tr" lab up --nodes "$nodes" --topology "$topology" ${LAB_DUAL_STACK:+--dual-stack}
fi

status=$("$tr" lab status --json)
kubectl=$(jq -r .lab.kubectl <<<"$status")
export KUBECONFIG
KUBECONFIG=$("$tr" lab kubeconfig)

say "Nodes, as kube-apiserver sees them (InternalIP = the node's tailnet IP; podCIDR from kube-controller-manager)"
"$kubectl" get nodes -o custom-columns='NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,INTERNAL-IP:.status.addresses[0].address,POD-CIDRS:.spec.podCIDRs'

ip2=$(jq -r '.lab.nodes[1].tailnet_ips[0]' <<<"$status")
say "n1 pings n2 at its tailnet IP $ip2, over tailscale0 (in hybrid, the only path between nodes)"
"$tr" lab exec n1 -- ping -c 3 -I tailscale0 "$ip2"

say "n1's view of the tailnet"
"$tr" lab exec n1 -- "$(jq -r .lab.tailscale <<<"$status")" --socket="$(jq -r .lab.nodes[0].tailscaled_socket <<<"$status")" status

say "Each node's agent advertised its podCIDR, got it approved through Headscale's API, and says so on the Node"
"$kubectl" get nodes -o custom-columns='NAME:.metadata.name,NETWORK-UNAVAILABLE:.status.conditions[?(@.type=="NetworkUnavailable")].status,REASON:.status.conditions[?(@.type=="NetworkUnavailable")].reason'
"$kubectl" get events --field-selector involvedObject.kind=Node --sort-by=.lastTimestamp | tail -n 8

say "A Deployment of 3: kube-scheduler places the pods, tailroute-bridge gives them IPs from their node's podCIDR"
"$kubectl" create deployment web --image=lab/builtin-server --replicas=3 --port=8080 \
  --dry-run=client -o yaml | "$kubectl" apply -f -
"$kubectl" wait --for=condition=Ready pod -l app=web --timeout=60s >/dev/null
"$kubectl" get pods -o wide

first=$("$kubectl" get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
for ip in $("$kubectl" get pods -l app=web -o jsonpath='{.items[*].status.podIP}'); do
  say "pod $first asks the pod at $ip (the server sees the client pod's own IP: no SNAT)"
  "$tr" lab exec "default/$first" -- bash -c \
    "exec 3<>/dev/tcp/$ip/8080; printf 'GET / HTTP/1.0\r\n\r\n' >&3; tail -n 1 <&3" || true
done

say "The lab is up"
echo "  kubectl:   export KUBECONFIG=$KUBECONFIG  (kubectl: $kubectl)"
echo "  a node:    $tr lab exec n1 -- ip addr show tailscale0"
echo "  status:    $tr lab status"
echo "  tear down: $tr lab down"
