#!/usr/bin/env bash
# cni-ipam vs the reference host-local plugin, side by side in one run. Run as root from anywhere:
#   bench/ipam.sh [calls]          (default 500)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/lib/cni/host-local ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containernetworking-plugins
fi
cargo build --release -q -p cni-ipam -p tether-bench
out=target/x86_64-unknown-linux-gnu/release
# Both binaries live in one directory each, named by their type, as a runtime would find them.
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/ours" "$dir/ref"
cp "$out/cni-ipam" "$dir/ours/"
cp /usr/lib/cni/host-local "$dir/ref/"
"$out/ipam-bench" "$dir/ours/cni-ipam" "$dir/ref/host-local" "${1:-500}"
