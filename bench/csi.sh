#!/usr/bin/env bash
# tether-csi's controller against a local nfs-ganesha: CreateVolume+DeleteVolume latency with 1
# and 16 clients, volumes per second, and the controller's memory. Run as root:
#   bench/csi.sh [pairs] [nfsvers] [--snapshots [image_mib] [files] [reps]]
#     (defaults 500 and 4.1; --snapshots then also runs bench/csi-snapshots.sh: snapshot, restore
#     and clone times with and without tether-nfs-agent, beside csi-driver-nfs's method)
# The reference Go driver (csi-driver-nfs) cannot run here: it mounts the share with the kernel's
# NFS client, which this machine does not have. The table stands on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-500}; vers=${2:-4.1}
snapshots=(); [ "${3:-}" = --snapshots ] && snapshots=("${@:4}") && snapshots=(run "${snapshots[@]}")
scripts/setup.sh >/dev/null
cargo build --release -q -p tether-csi -p tether-bench
bin=$PWD/target/x86_64-unknown-linux-gnu/release
. scripts/lib/nfs.sh
work=$(mktemp -d /tmp/tb-csi.XXXXXX)
ns=tb-csi-nfs
csi_pid=
cleanup() {
  [ -n "$csi_pid" ] && kill "$csi_pid" 2>/dev/null && while kill -0 "$csi_pid" 2>/dev/null; do sleep 0.05; done
  nfs_stop "$ns" "$work"
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
nfs_stop "$ns" "$work" 2>/dev/null || true
nfs_start "$ns" "$work"
share=$work/export
query=; [ "$vers" = 3 ] && query='?nfsvers=3'
ip netns exec "$ns" "$bin/tether-csi" --mode controller --endpoint "unix://$work/csi.sock" \
  --share "$NFS_ADDRESS:$share$query" 2>"$work/csi.log" &
csi_pid=$!
until [ -S "$work/csi.sock" ]; do sleep 0.05; done
echo "NFSv$vers, $pairs CreateVolume+DeleteVolume pairs per row (after 20 warm-up pairs)" >&2
"$bin/csi-bench" "$work/csi.sock" "$NFS_ADDRESS" "$share" "$pairs" "$vers"
rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$csi_pid/status")
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$csi_pid/status")
printf '\n| tether-csi controller memory | KiB |\n|---|---|\n| RSS after the run | %s |\n| peak RSS | %s |\n' "$rss" "$hwm"
if [ "${#snapshots[@]}" -gt 0 ]; then
  echo
  bench/csi-snapshots.sh "${snapshots[@]:1}"
fi
