#!/usr/bin/env bash
# tether-csi's node service inside the QEMU guest (tests/vm/run.sh): NodeStage+NodePublish latency
# for directory and image volumes, and write throughput of an image volume vs a directory volume.
# The guest is emulated (TCG, no KVM): absolute numbers are far below real hardware; compare the
# two layouts with each other. Run as root:  bench/csi-node.sh [rounds]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build -q -p tether-csi --tests
test_binary=$(cargo test -q -p tether-csi --test vm --no-run --message-format=json 2>/dev/null |
  jq -r 'select(.executable != null and .target.name == "vm") | .executable' | tail -1)
BENCH_ROUNDS=${1:-10} tests/vm/run.sh -- env BENCH_ROUNDS="${1:-10}" "$test_binary" \
  --exact guest_node_bench --ignored --nocapture --test-threads 1 2>&1 | grep -E '^\|' || true
