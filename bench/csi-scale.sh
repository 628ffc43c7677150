#!/usr/bin/env bash
# tether-csi's controller with tens of thousands of volumes on one share (nfs-ganesha here):
# CreateVolume and DeleteVolume latency as the share fills and empties (16 clients), ListVolumes
# of everything with paging, GetCapacity, 100 clients at once, the controller's memory, and a
# restart with that many volumes (nothing is scanned at start). Run as root:
#   bench/csi-scale.sh [counts] [nfsvers]     (defaults "10000 50000" and 4.1)
# CSVs of every call go to target/bench/csi-scale-COUNT.csv (bench/plot.py draws them).
set -euo pipefail
cd "$(dirname "$0")/.."
counts=${1:-10000 50000}; vers=${2:-4.1}
scripts/setup.sh >/dev/null
cargo build --release -q -p tether-csi -p tether-bench
bin=$PWD/target/x86_64-unknown-linux-gnu/release
. scripts/lib/nfs.sh
work=$(mktemp -d /tmp/tb-csis.XXXXXX)
ns=tb-csis-nfs
csi_pid=
mkdir -p target/bench
stop_csi() {
  if [ -n "$csi_pid" ]; then
    kill "$csi_pid" 2>/dev/null || true
    while kill -0 "$csi_pid" 2>/dev/null; do sleep 0.05; done
    csi_pid=
  fi
}
cleanup() { stop_csi; cp "$work/csi.log" target/bench/csi-scale.log 2>/dev/null || true; nfs_stop "$ns" "$work"; rm -rf "$work"; }
trap cleanup EXIT INT TERM
nfs_stop "$ns" "$work" 2>/dev/null || true
nfs_start "$ns" "$work"
share=$work/export
query=; [ "$vers" = 3 ] && query='?nfsvers=3'
up_ms=
start_csi() { # sets csi_pid, and up_ms to how long the socket took to appear
  rm -f "$work/csi.sock"
  local t0; t0=$(date +%s%N)
  ip netns exec "$ns" "$bin/tether-csi" --mode controller --endpoint "unix://$work/csi.sock" \
    --share "$NFS_ADDRESS:$share$query" >>"$work/csi.log" 2>&1 &
  csi_pid=$!
  until [ -S "$work/csi.sock" ]; do sleep 0.01; done
  up_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
}
kib() { awk "/^$1:/ {print \$2}" "/proc/$csi_pid/status"; }
for count in $counts; do
  csv=target/bench/csi-scale-$count.csv
  rm -f "$csv"
  echo "## $count volumes on one share, NFSv$vers"
  start_csi
  "$bin/csi-scale" fill "$work/csi.sock" "$NFS_ADDRESS" "$share" "$count" "$vers" "$csv"
  rss_fill=$(kib VmRSS)
  "$bin/csi-scale" list "$work/csi.sock"
  rss_list=$(kib VmRSS)
  stop_csi
  start_csi
  t0=$(date +%s%N)
  "$bin/csi-scale" list "$work/csi.sock" > "$work/after-restart.txt"
  first_list_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  "$bin/csi-scale" burst "$work/csi.sock" "$NFS_ADDRESS" "$share" "$vers"
  "$bin/csi-scale" drain "$work/csi.sock" "$NFS_ADDRESS" "$share" "$count" "$vers" "$csv"
  printf '\n| controller with %s volumes | value |\n|---|---|\n' "$count"
  printf '| RSS after filling | %s KiB |\n| RSS after listing everything | %s KiB |\n' "$rss_fill" "$rss_list"
  printf '| peak RSS (whole run) | %s KiB |\n' "$(kib VmHWM)"
  printf '| restart: socket up after | %s ms |\n' "$up_ms"
  printf '| restart: first full ListVolumes after | %s ms |\n\n' "$first_list_ms"
  stop_csi
done
