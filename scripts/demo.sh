#!/usr/bin/env bash
# The Tether demo: builds everything, then shows cni-ipam leasing and releasing addresses for a
# few containers the way a container runtime calls it. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

bold "Building Tether (release)"
cargo build --release -q --workspace
bin=target/x86_64-unknown-linux-gnu/release

work=$(mktemp -d /tmp/tether-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM

conf=$(jq -n --arg dir "$work/leases" '{
  cniVersion: "1.1.0", name: "demo-pods", type: "cni-ipam",
  ipam: { type: "cni-ipam", dataDir: $dir,
          ranges: [[{subnet: "10.244.1.0/29"}], [{subnet: "fd00:244:1::/120"}]],
          routes: [{dst: "0.0.0.0/0"}, {dst: "::/0"}] } }')

ipam() { # ipam VERB CONTAINER [extra env...]
  local verb=$1 id=$2; shift 2
  echo "$conf" | env CNI_COMMAND="$verb" CNI_CONTAINERID="$id" CNI_IFNAME=eth0 \
    CNI_NETNS="/var/run/netns/$id" CNI_PATH="$bin" "$@" "$bin/cni-ipam"
}
show() { jq -c '[.ips[]? | .address] // .' ; }

bold "Network demo-pods: 10.244.1.0/29 + fd00:244:1::/120 (dual-stack: one address per family)"
for pod in web-0 web-1 db-0; do
  printf '  ADD %-6s -> %s\n' "$pod" "$(ipam ADD "$pod" | show)"
done
printf '  ADD %-6s -> %s   (asked for .6 with CNI_ARGS IP=)\n' cache-0 \
  "$(ipam ADD cache-0 CNI_ARGS='IgnoreUnknown=1;IP=10.244.1.6' | show)"

bold "web-1 goes away; its addresses are not reused at once (round-robin)"
ipam DEL web-1 && echo "  DEL web-1 -> ok"
ipam DEL web-1 && echo "  DEL web-1 again -> ok (idempotent)"
printf '  ADD %-6s -> %s\n' web-2 "$(ipam ADD web-2 | show)"
printf '  ADD %-6s -> %s   (the last free IPv4 address)\n' api-0 "$(ipam ADD api-0 | show)"

bold "Errors are CNI error objects with spec codes"
err() { jq -c '{code, msg}'; }
printf '  ADD web-0 again  -> %s\n' "$(ipam ADD web-0 2>/dev/null | err || true)"
printf '  ADD api-1        -> %s\n' "$(ipam ADD api-1 2>/dev/null | err || true)"
printf '  STATUS           -> %s\n' "$(ipam STATUS '' 2>/dev/null | err || true)"

bold "GC: the runtime says only web-0 and db-0 are still alive"
conf=$(echo "$conf" | jq '. + {"cni.dev/valid-attachments": [{containerID: "web-0", ifname: "eth0"}, {containerID: "db-0", ifname: "eth0"}]}')
ipam GC '' && echo "  GC -> ok"
printf '  STATUS -> %s\n' "$(ipam STATUS '' >/dev/null && echo 'ok: addresses free again')"

bold "Leases on disk ($work/leases/demo-pods), host-local compatible"
for f in "$work/leases/demo-pods"/*; do
  name=$(basename "$f")
  case "$name" in
    [0-9]*|fd*) printf '  %-16s %s\n' "$name" "$(tr '\r\n' '  ' < "$f")" ;;
    attachment:*) printf '  %-26s -> %s\n' "$name" "$(readlink "$f")" ;;
  esac
done
bold "Done: everything the demo made is removed on exit"
