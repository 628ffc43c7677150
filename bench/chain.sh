#!/usr/bin/env bash
# The deployed CNI conflist (cni-overlay, running cni-bridge -> cni-ipam, cni-portmap and cni-bandwidth in-process) vs
# the reference chain (bridge + host-local, portmap, bandwidth), side by side in one run: ADD and
# DEL of pods with a hostPort and a bandwidth limit. Run as root:
#   bench/chain.sh [pods] [rounds]      (defaults 100 and 2)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release -q -p cni-ipam -p cni-bridge -p cni-overlay -p cni-portmap -p cni-bandwidth -p tether-bench
out=target/x86_64-unknown-linux-gnu/release
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/ours" "$dir/ref"
cp "$out/cni-overlay" "$out/cni-bridge" "$out/cni-ipam" "$out/cni-portmap" "$out/cni-bandwidth" "$dir/ours/"
cp /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/portmap /usr/lib/cni/bandwidth "$dir/ref/"
"$out/chain-bench" "$dir/ours" "$dir/ref" "${1:-100}" "${2:-2}"
