#!/usr/bin/env bash
# tether-netpol at scale: 250 pods on the node, 2,000 cluster-wide, 500 policies, in the API
# stand-in; full sync, nftables objects, relabel-to-kernel latency, RSS, iperf3 with and without
# the policies. Run as root:
#   bench/netpol-scale.sh [local] [pods] [policies] [iperf seconds]   (defaults 250 2000 500 2)
# Namespaces are named tbnp*; they are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release -q -p tether-netpol -p tether-bench
bin=$PWD/target/x86_64-unknown-linux-gnu/release
"$bin/netpol-scale" "$bin/tether-netpol" "${1:-250}" "${2:-2000}" "${3:-500}" "${4:-2}"
