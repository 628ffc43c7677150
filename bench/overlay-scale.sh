#!/usr/bin/env bash
# tether-overlayd's control plane at 100, 1,000 and 5,000 nodes: one real daemon, a simulated
# cluster in the Kubernetes API stand-in (real wire protocol: list, watch, 410 Gone), one peer
# the kernel refuses. Prints the tables; change latencies go to target/bench/overlay-scale-N.csv
# (bench/plot.py draws them). Run as root:
#   bench/overlay-scale.sh [sizes]      (default "100 1000 5000")
# Namespaces are named tbos*; they are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${1:-100 1000 5000}
scripts/setup.sh >/dev/null
cargo build --release -q -p cni-overlay -p tether-bench
bin=$PWD/target/x86_64-unknown-linux-gnu/release
mkdir -p target/bench
# shellcheck disable=SC2086
"$bin/overlay-scale" "$bin/tether-overlayd" target/bench $sizes
