#!/usr/bin/env bash
# Snapshots and restores with and without tether-nfs-agent, beside csi-driver-nfs's method (tar.gz
# of the volume directory), on nfs-ganesha exporting a loop-mounted XFS filesystem (reflink=1).
# Run as root:
#   bench/csi-snapshots.sh [image_mib] [files] [reps]     (defaults 1024, 100000, 5)
# csi-driver-nfs itself cannot run here (it mounts with the kernel's NFS client, which this
# machine lacks): its method is run as tar on the server's filesystem directly, which is faster
# than through an NFS mount — a lower bound for it.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}; files=${2:-100000}; reps=${3:-5}
scripts/setup.sh >/dev/null
cargo build --release -q -p tether-csi -p tether-nfs-agent -p tether-bench
bin=$PWD/target/x86_64-unknown-linux-gnu/release
. scripts/lib/nfs.sh
work=$(mktemp -d /tmp/tb-snap.XXXXXX)
ns=tb-snap-nfs
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
  nfs_stop "$ns" "$work" 2>/dev/null || true
  umount "$work/export" 2>/dev/null || umount -l "$work/export" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
nfs_stop "$ns" "$work" 2>/dev/null || true

# The share: XFS with reflinks, big enough for every copy the copy path makes.
truncate -s $(( (mib * 6 + files / 100 + 2048) ))M "$work/fs.img"
mkfs.xfs -q -f -m reflink=1 "$work/fs.img"
mkdir -p "$work/export"
mount -o loop "$work/fs.img" "$work/export"
nfs_start "$ns" "$work"
share=$work/export

# A CA, the agent's certificate and the controller's.
tls=$work/tls; mkdir -p "$tls/csi"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
  -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$tls/server.ext"
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > "$tls/client.ext"
for who in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$who" \
    -keyout "$tls/$who.key" -out "$tls/$who.csr" 2>/dev/null
  openssl x509 -req -days 1 -in "$tls/$who.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
    -CAcreateserial -extfile "$tls/$who.ext" -out "$tls/$who.crt" 2>/dev/null
done
cp "$tls/ca.crt" "$tls/csi/ca.crt"; cp "$tls/client.crt" "$tls/csi/tls.crt"; cp "$tls/client.key" "$tls/csi/tls.key"

ip netns exec "$ns" "$bin/tether-nfs-agent" --export "$share" --listen 127.0.0.1:9820 \
  --tls-cert "$tls/server.crt" --tls-key "$tls/server.key" --client-ca "$tls/ca.crt" 2>"$work/agent.log" &
pids+=($!)
ip netns exec "$ns" "$bin/tether-csi" --mode controller --endpoint "unix://$work/csi.sock" \
  --share "$NFS_ADDRESS:$share" --agent-tls-dir "$tls/csi" 2>"$work/csi.log" &
pids+=($!)
until [ -S "$work/csi.sock" ]; do sleep 0.05; done
echo "snapshots and restores: $mib MiB image, $files files, $reps rounds (the NFS copy of many files: fewer)" >&2
"$bin/csi-snapshots" "$work/csi.sock" "$NFS_ADDRESS" "$share" "$share" 127.0.0.1:9820 "$mib" "$files" "$reps"
