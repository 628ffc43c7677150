#!/usr/bin/env bash
# Pods per node: cni-bridge + cni-ipam vs the reference bridge + host-local in one run, 500 pods
# on one node's /23, p50/p99 per 100 pods. Run as root:
#   bench/pods-per-node.sh [pods] [rounds]      (defaults 500 and 3)
# Every call goes to target/bench/pods-per-node.csv (bench/plot.py draws it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release -q -p cni-ipam -p cni-bridge -p tether-bench
out=target/x86_64-unknown-linux-gnu/release
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/ours" "$dir/ref" target/bench
cp "$out/cni-bridge" "$out/cni-ipam" "$dir/ours/"
cp /usr/lib/cni/bridge /usr/lib/cni/host-local "$dir/ref/"
"$out/pods-per-node" "$dir/ours" "$dir/ref" "${1:-500}" "${2:-3}" target/bench
