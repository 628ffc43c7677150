#!/usr/bin/env bash
# cni-bridge + cni-ipam vs the reference bridge + host-local, side by side in one run; then iperf3
# pod-to-pod throughput on a Tether bridge vs a bare veth pair. Run as root:
#   bench/bridge.sh [pods] [iperf seconds] [rounds]      (defaults 200, 2 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release -q -p cni-ipam -p cni-bridge -p tether-bench
out=target/x86_64-unknown-linux-gnu/release
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/ours" "$dir/ref"
cp "$out/cni-bridge" "$out/cni-ipam" "$dir/ours/"
cp /usr/lib/cni/bridge /usr/lib/cni/host-local "$dir/ref/"
"$out/bridge-bench" "$dir/ours" "$dir/ref" "${1:-200}" "${2:-2}" "${3:-3}"
