#!/usr/bin/env bash
# The Tether sandbox: a small cluster on one machine, no Kubernetes needed. Run as root:
#
#   scripts/demo.sh                  (TETHER_DEMO_PROFILE=debug skips the optimised build)
#
# 1. builds Tether;
# 2. makes three nodes (network namespaces on one L2 segment) with tether-overlayd each, an etcd
#    datastore, and two pods per node through the real cni-overlay -> cni-bridge -> cni-ipam chain;
# 3. shows pods talking across nodes with their own addresses (no NAT), and egress masqueraded;
# 4. starts nfs-ganesha and uses tether-csi to create a volume, snapshot it, restore the snapshot
#    into a new volume, and delete everything;
# 5. prints a short report. It removes everything it made on exit (also on Ctrl-C) and can be run
#    again at once.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
profile=${TETHER_DEMO_PROFILE:-release}
prefix=td

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step() { printf '   %s\n' "$*"; }
report=()
note() { report+=("$*"); step "$*"; }

[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root (it creates network namespaces)" >&2; exit 1; }

work=/tmp/tether-demo
pids=()
cleanup() {
  set +e
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  # Containers that a failed run left: their shims, by the pid files in our state directory.
  for pidfile in "$work"/ctrd/state/io.containerd.runtime.v2.task/tether-demo/*/shim.pid; do
    [ -f "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null
  done
  # containerd's shims keep state under /run/containerd whatever the config says; others may
  # use it too, so only empty directories go.
  if [ -d "$work/ctrd" ]; then
    rm -rf /run/containerd/runc/tether-demo
    rmdir /run/containerd/runc /run/containerd/s /run/containerd 2>/dev/null
    umount -R "$work/ctrd/root" 2>/dev/null
  fi
  if [ -f "$work/nfs/server.pid" ]; then
    . "$root/scripts/lib/nfs.sh"
    nfs_stop "$prefix-nfs" "$work/nfs"
  fi
  for ns in $(ip netns list | awk '{print $1}' | grep "^$prefix-"); do
    for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null; done
    ip netns del "$ns"
  done
  rm -rf "$work"
}
# A run interrupted with kill -9 leaves things behind: start clean.
cleanup
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$work"

bold "Building Tether ($profile)"
flag=--release; [ "$profile" = debug ] && flag=
cargo build $flag -p cni-ipam -p cni-bridge -p cni-portmap -p cni-bandwidth -p cni-overlay -p tether-csi
bin=$root/target/x86_64-unknown-linux-gnu/$profile
step "binaries in $bin"

nsx() { local ns=$1; shift; ip netns exec "$prefix-$ns" "$@"; }

bold "A cluster of three nodes in network namespaces"
ip netns add $prefix-ul
nsx ul ip link set lo up
nsx ul ip link add ul0 type bridge
nsx ul ip addr add 192.168.90.1/24 dev ul0
nsx ul ip link set ul0 up
nsx ul ip addr add 203.0.113.1/32 dev lo   # a host "outside the cluster"
ip netns exec $prefix-ul etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls http://192.168.90.1:2379 --advertise-client-urls http://192.168.90.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster demo=http://127.0.0.1:2380 >"$work/etcd.log" 2>&1 &
pids+=($!)
step "underlay segment 192.168.90.0/24, etcd at 192.168.90.1:2379"

cluster_cidr=10.250.0.0/16
for i in 1 2 3; do
  n=n$i
  ip netns add $prefix-$n
  nsx ul ip link add p$i type veth peer name eth0 netns $prefix-$n
  nsx ul ip link set p$i master ul0 up
  nsx $n ip link set lo up
  nsx $n ip link set eth0 mtu 1500 up
  nsx $n ip addr add 192.168.90.1$i/24 dev eth0
  nsx $n ip route add default via 192.168.90.1
  mkdir -p "$work/$n"
  ip netns exec $prefix-$n "$bin/tether-overlayd" --node-name node$i --cluster-cidr $cluster_cidr \
    --datastore etcd --etcd-endpoints http://192.168.90.1:2379 --run-dir "$work/$n/run" \
    --metrics-addr 127.0.0.1:9402 --resync-seconds 2 2>"$work/$n/overlayd.log" &
  pids+=($!)
done
for i in 1 2 3; do
  deadline=$((SECONDS + 60))
  until [ -f "$work/n$i/run/overlay.json" ] &&
        nsx n$i bash -c 'exec 3<>/dev/tcp/127.0.0.1/9402; printf "GET /healthz HTTP/1.0\r\n\r\n" >&3; grep -q "200 OK" <&3' 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "tether-overlayd on node$i did not get ready:" >&2; cat "$work/n$i/overlayd.log" >&2; exit 1; }
    sleep 0.2
  done
  subnet=$(jq -r '.subnets[0]' "$work/n$i/run/overlay.json")
  mtu=$(jq -r '.mtu' "$work/n$i/run/overlay.json")
  note "node$i: underlay 192.168.90.1$i, pod subnet $subnet (leased in etcd), VXLAN MTU $mtu"
done

bold "Pods through cni-overlay -> cni-bridge -> cni-ipam"
declare -A pod_ip pod_node
for i in 1 2 3; do
  for p in a b; do
    pod=pod$i$p
    ip netns add $prefix-$pod
    nsx $pod ip link set lo up
    conf=$(jq -n --arg run "$work/n$i/run" --arg state "$work/n$i/state" --arg leases "$work/n$i/leases" \
      '{cniVersion: "1.1.0", name: "demo", type: "cni-overlay", runDir: $run, stateDir: $state,
        ipam: {dataDir: $leases}}')
    echo "$conf" > "$work/n$i/conf.json"
    result=$(echo "$conf" | ip netns exec $prefix-n$i env CNI_COMMAND=ADD CNI_CONTAINERID=$pod \
      CNI_NETNS=/var/run/netns/$prefix-$pod CNI_IFNAME=eth0 CNI_PATH="$bin" "$bin/cni-overlay")
    pod_ip[$pod]=$(echo "$result" | jq -r '.ips[0].address' | cut -d/ -f1)
    pod_node[$pod]=node$i
    step "$pod on node$i: ${pod_ip[$pod]}"
  done
done
report+=("6 pods: $(for p in pod1a pod1b pod2a pod2b pod3a pod3b; do printf '%s=%s ' $p "${pod_ip[$p]}"; done)")

bold "Traffic between pods on different nodes"
deadline=$((SECONDS + 30))
until nsx pod1a ping -c1 -W1 "${pod_ip[pod3b]}" >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { echo "the overlay did not converge" >&2; exit 1; }
  sleep 0.2
done
ok=0; total=0
for from in pod1a pod2a pod3a; do
  for to in pod1b pod2b pod3b; do
    [ "${pod_node[$from]}" = "${pod_node[$to]}" ] && continue
    total=$((total + 1))
    if nsx $from ping -c1 -W2 "${pod_ip[$to]}" >/dev/null 2>&1; then ok=$((ok + 1)); fi
  done
done
note "cross-node pings: $ok of $total answered"
[ "$ok" -eq "$total" ]

# A server in pod3b prints the address each connection comes from.
nsx pod3b python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(1)
c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()
' > /dev/null 2>&1 &
server=$!
sleep 0.5
seen=$(nsx pod1a python3 -c "
import socket, time
s = socket.create_connection(('${pod_ip[pod3b]}', 7000), timeout=5)
print(s.recv(64).decode())
")
wait $server || true
note "pod3b (node3) saw a connection from $seen; pod1a (node1) is ${pod_ip[pod1a]}: $([ "$seen" = "${pod_ip[pod1a]}" ] && echo 'its own address, no NAT' || echo 'NAT!')"
[ "$seen" = "${pod_ip[pod1a]}" ]
nsx pod2a ping -c1 -W2 203.0.113.1 >/dev/null
note "egress to 203.0.113.1 (outside the cluster CIDR, no route back to pods) answers: masqueraded to node2's address"
entries=$(nsx n1 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9402; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' | awk '/^tether_overlay_entries / {print $2}')
note "node1 keeps $entries kernel entries for its 2 peers: on its segment, a plain route each (direct routing; a peer beyond a router would take a VXLAN neighbour + FDB + route)"

if command -v containerd >/dev/null && command -v ctr >/dev/null && command -v runc >/dev/null &&
   file -L "$(command -v busybox 2>/dev/null || echo /nonexistent)" 2>/dev/null | grep -q 'statically linked'; then
  bold "A real container on node1 (containerd, same conflist)"
  ctrd=$work/ctrd
  mkdir -p "$ctrd/cni/net.d" "$ctrd/cni/bin"
  cat > "$ctrd/config.toml" <<CONF
version = 2
root = "$ctrd/root"
state = "$ctrd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$ctrd/containerd.sock"
[ttrpc]
  address = "$ctrd/containerd.sock.ttrpc"
[debug]
  address = "$ctrd/debug.sock"
CONF
  containerd --config "$ctrd/config.toml" >"$ctrd/containerd.log" 2>&1 &
  pids+=($!)
  ctr() { command ctr -a "$ctrd/containerd.sock" -n tether-demo "$@"; }
  until ctr version >/dev/null 2>&1; do sleep 0.1; done
  bash tests/e2e/busybox-image.sh "$ctrd/busybox.tar" docker.io/tether/busybox:demo
  ctr images import "$ctrd/busybox.tar" >/dev/null
  for plugin in cni-overlay cni-bridge cni-ipam cni-portmap cni-bandwidth; do cp "$bin/$plugin" "$ctrd/cni/bin/"; done
  jq -n --arg run "$work/n1/run" --arg state "$work/n1/state" --arg leases "$work/n1/leases" \
    '{cniVersion: "1.0.0", name: "demo", plugins: [{type: "cni-overlay", runDir: $run, stateDir: $state, ipam: {dataDir: $leases}}]}' \
    > "$ctrd/cni/net.d/10-tether.conflist"
  # ctr reads the fixed paths /etc/cni/net.d and /opt/cni/bin: give it ours in a private mount
  # namespace (overlays, so the host's directories are never touched).
  cat > "$ctrd/in-node.sh" <<SCRIPT
set -e
for d in etc opt; do
  mkdir -p "$ctrd/ov/\$d/up" "$ctrd/ov/\$d/work"
  mount -t overlay overlay -o lowerdir=/\$d,upperdir="$ctrd/ov/\$d/up",workdir="$ctrd/ov/\$d/work" /\$d
done
mkdir -p /etc/cni/net.d /opt/cni/bin
mount --bind "$ctrd/cni/net.d" /etc/cni/net.d
mount --bind "$ctrd/cni/bin" /opt/cni/bin
exec "\$@"
SCRIPT
  out=$(ip netns exec $prefix-n1 unshare -m --propagation private bash "$ctrd/in-node.sh" \
    ctr -a "$ctrd/containerd.sock" -n tether-demo run --cni --rm docker.io/tether/busybox:demo c1 \
    sh -c "ip -4 -o addr show eth0 | awk '{print \$4}'; ping -c 2 -W 2 ${pod_ip[pod3b]} >/dev/null && echo reached")
  container_ip=$(echo "$out" | head -1)
  note "container c1 on node1 got $container_ip from cni-ipam and $(echo "$out" | grep -q reached && echo "reached pod3b on node3 (${pod_ip[pod3b]})" || echo "could NOT reach pod3b")"
  echo "$out" | grep -q reached
fi

bold "Volumes on an NFS share with tether-csi"
. "$root/scripts/lib/nfs.sh"
nfs_start "$prefix-nfs" "$work/nfs"
share=$work/nfs/export
step "nfs-ganesha serves $NFS_ADDRESS:$share (NFSv3 + NFSv4.1, in namespace $prefix-nfs)"
ip netns exec $prefix-nfs "$bin/tether-csi" --mode controller --endpoint "unix://$work/csi.sock" \
  --share "$NFS_ADDRESS:$share" 2>"$work/csi.log" &
pids+=($!)
until [ -S "$work/csi.sock" ]; do sleep 0.05; done
csictl() { "$bin/tether-csictl" --endpoint "unix://$work/csi.sock" "$@"; }
step "tether-csi: $(csictl info | jq -c '{name, vendorVersion, ready}')"
params=(--param server=$NFS_ADDRESS --param share=$share)
volume=$(csictl create-volume pvc-demo --capacity 1Gi "${params[@]}" --mount-option nfsvers=4.1 | jq -r .volumeId)
note "CreateVolume pvc-demo (1 GiB): $volume"
echo "written before the snapshot" > "$share/pvc-demo/hello.txt"
snapshot=$(csictl create-snapshot snap-demo --source "$volume" | jq -r .snapshotId)
note "CreateSnapshot snap-demo: $snapshot ($(csictl list-snapshots --source "$volume" | jq length) snapshot of the volume)"
echo "written after the snapshot" > "$share/pvc-demo/hello.txt"
restored=$(csictl create-volume pvc-restored --capacity 1Gi "${params[@]}" --from-snapshot "$snapshot" | jq -r .volumeId)
note "restored from the snapshot into $restored: hello.txt says \"$(cat "$share/pvc-restored/hello.txt")\""
csictl expand-volume "$volume" --capacity 2Gi >/dev/null
note "ControllerExpandVolume pvc-demo to 2 GiB: $(csictl list-volumes | jq -r --arg v "$volume" '.[] | select(.volumeId == $v) | .capacityBytes') bytes"
csictl delete-snapshot "$snapshot" >/dev/null
csictl delete-volume "$restored" >/dev/null
csictl delete-volume "$volume" >/dev/null
left=$(find "$share" -mindepth 1 -maxdepth 1 ! -name .tether | wc -l)
note "deleted both volumes and the snapshot: $left volume directories left on the share"
[ "$left" -eq 0 ]

bold "Cleaning up pods"
for pod in "${!pod_ip[@]}"; do
  n=${pod_node[$pod]#node}
  ip netns exec $prefix-n$n env CNI_COMMAND=DEL CNI_CONTAINERID=$pod CNI_NETNS= CNI_IFNAME=eth0 \
    CNI_PATH="$bin" "$bin/cni-overlay" < "$work/n$n/conf.json"
done
leases=$(find "$work"/n*/leases -type f -name '10.250.*' | wc -l)
step "every pod deleted through the CNI plugins; leases left: $leases"
[ "$leases" -eq 0 ]

bold "Report"
for line in "${report[@]}"; do printf '  * %s\n' "$line"; done
printf '\nEverything above is removed on exit; run it again any time.\n'
