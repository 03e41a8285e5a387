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

say "A Deployment of 3: kube-scheduler places the pods on lab nodes"
"$kubectl" create deployment web --image=lab/builtin-server --replicas=3 --port=8080 \
  --dry-run=client -o yaml | "$kubectl" apply -f -
sleep 3
"$kubectl" get pods -o wide
echo
echo "The pods stay Pending until a CNI configuration exists on their node; the"
echo "node agent (tailroute-agent) writes it. Why, in the kubelet's words:"
"$kubectl" get pods -o jsonpath='{range .items[0].status.conditions[?(@.status=="False")]}  {.type}: {.message}{"\n"}{end}'

say "The lab is up"
echo "  kubectl:   export KUBECONFIG=$KUBECONFIG  (kubectl: $kubectl)"
echo "  a node:    $tr lab exec n1 -- ip addr show tailscale0"
echo "  status:    $tr lab status"
echo "  tear down: $tr lab down"
