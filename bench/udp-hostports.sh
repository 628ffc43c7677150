#!/usr/bin/env bash
# UDP hostPorts with ~100,000 conntrack entries on the node: cni-portmap vs the reference portmap
# in one run, ADD and DEL of one pod's N UDP mappings (each removes the stale flows of its ports).
# Run as root:
#   bench/udp-hostports.sh [ports] [rounds]      (defaults 200 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release -q -p cni-ipam -p cni-bridge -p cni-portmap -p tether-bench
out=target/x86_64-unknown-linux-gnu/release
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/ours" "$dir/ref"
cp "$out/cni-bridge" "$out/cni-ipam" "$out/cni-portmap" "$dir/ours/"
cp /usr/lib/cni/portmap "$dir/ref/"
"$out/udp-hostports" "$dir/ours" "$dir/ref" "${1:-200}" "${2:-3}"
