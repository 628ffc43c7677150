#!/usr/bin/env bash
# Tether across two nodes of one segment, with direct routing (the default: a plain route via the
# other node's underlay address) and over VXLAN (--direct-routing=false), vs a hand-built
# flannel-style VXLAN, a hand-built flannel "host-gw" pair with the same settings, a hand-built
# Calico-style routed-veth pair (no bridge), and the
# underlay itself (the limit), interleaved in one run; the same across an L3 boundary (two subnets
# joined by a router: Tether keeps VXLAN to a peer beyond its L2, beside a hand-built VXLAN over
# the same router); then the time from a node joining to the first successful cross-node ping,
# and tether-overlayd's memory. Run as root:
#   bench/overlay.sh [iperf seconds] [repetitions]      (defaults 5 and 3)
# Everything lives in namespaces named tb-ov-*; they are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}; reps=${2:-3}
scripts/setup.sh >/dev/null
cargo build --release -q -p cni-ipam -p cni-bridge -p cni-overlay
bin=$PWD/target/x86_64-unknown-linux-gnu/release
work=$(mktemp -d /tmp/tb-ov.XXXXXX)
pids=()
declare -A daemon_pid
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
  for ns in $(ip netns list | awk '{print $1}' | grep '^tb-ov-' || true); do ip netns del "$ns"; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
nsx() { local ns=$1; shift; ip netns exec "tb-ov-$ns" "$@"; }

# The L2 segment, with etcd on it.
ip netns add tb-ov-ul
nsx ul ip link set lo up; nsx ul ip link add ul0 type bridge; nsx ul ip addr add 192.168.78.1/24 dev ul0; nsx ul ip link set ul0 up
ip netns exec tb-ov-ul etcd --name b --data-dir "$work/etcd" --listen-client-urls http://192.168.78.1:2379 \
  --advertise-client-urls http://192.168.78.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
  --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster b=http://127.0.0.1:2380 >/dev/null 2>&1 &
pids+=($!)

# A second subnet behind the same namespace, which routes between the two (an L3 boundary).
nsx ul ip link add ul1 type bridge; nsx ul ip addr add 192.168.79.1/24 dev ul1; nsx ul ip link set ul1 up
nsx ul sysctl -qw net.ipv4.ip_forward=1

node() { # node NAME IP [SEGMENT]: on 192.168.78.0/24 (ul0) or, with SEGMENT ul1, 192.168.79.0/24
  local segment=${3:-ul0} gateway=192.168.78.1
  [ "$segment" = ul1 ] && gateway=192.168.79.1
  ip netns add "tb-ov-$1"
  nsx ul ip link add "p-$1" type veth peer name eth0 netns "tb-ov-$1"
  nsx ul ip link set "p-$1" master "$segment" up
  nsx "$1" ip link set lo up; nsx "$1" ip link set eth0 mtu 1500 up
  nsx "$1" ip addr add "$2/24" dev eth0; nsx "$1" ip route add default via "$gateway"
}
daemon() { # daemon NODE CLUSTER [ARGS...]: each cluster its own etcd prefix and CIDR
  local n=$1 c=$2; shift 2
  mkdir -p "$work/$n"
  # Started by `ip netns exec` itself (not through a shell function), so that $! is the daemon.
  ip netns exec "tb-ov-$n" "$bin/tether-overlayd" --node-name "$n" --cluster-cidr "10.$c.0.0/16" --datastore etcd \
    --etcd-endpoints http://192.168.78.1:2379 --etcd-prefix "/bench-$c" --run-dir "$work/$n/run" --resync-seconds 1 \
    "$@" 2>"$work/$n/daemon.log" &
  pids+=($!); daemon_pid[$n]=$!
  local deadline=$((SECONDS + 30))
  until [ -f "$work/$n/run/overlay.json" ]; do
    [ $SECONDS -lt $deadline ] || { echo "tether-overlayd on $n did not start:" >&2; cat "$work/$n/daemon.log" >&2; exit 1; }
    sleep 0.05
  done
}
pod() { # pod NODE POD -> prints the pod address
  ip netns add "tb-ov-$2"; nsx "$2" ip link set lo up
  jq -n --arg run "$work/$1/run" --arg st "$work/$1/state" --arg lease "$work/$1/leases" \
    '{cniVersion:"1.1.0",name:"bench",type:"cni-overlay",runDir:$run,stateDir:$st,ipam:{dataDir:$lease}}' |
    nsx "$1" env CNI_COMMAND=ADD CNI_CONTAINERID="$2" CNI_NETNS="/var/run/netns/tb-ov-$2" CNI_IFNAME=eth0 \
      CNI_PATH="$bin" "$bin/cni-overlay" | jq -r '.ips[0].address' | cut -d/ -f1
}
iperf() { # iperf SERVER_NS CLIENT_NS SERVER_IP -> Gbit/s
  # Server on CPU 1, client on CPU 0: the scheduler moving them is much of the run-to-run noise.
  nsx "$1" taskset -c 1 iperf3 -s -1 -B "$3" >/dev/null 2>&1 & local s=$!
  sleep 0.3
  nsx "$2" taskset -c 0 iperf3 -c "$3" -t "$secs" -J | jq '.end.sum_received.bits_per_second / 1e9'
  wait "$s" 2>/dev/null || true
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "setting up: Tether nodes t1, t2 (direct) and v1, v2 (VXLAN); hand-built h1, h2 (VXLAN) and g1, g2 (host-gw)" >&2
node t1 192.168.78.11; node t2 192.168.78.12
daemon t1 245; daemon t2 245
ta=$(pod t1 ta); tb=$(pod t2 tb)
until nsx ta ping -c1 -W1 "$tb" >/dev/null 2>&1; do sleep 0.1; done
node v1 192.168.78.31; node v2 192.168.78.32
daemon v1 247 --direct-routing=false; daemon v2 247 --direct-routing=false
va=$(pod v1 va); vb=$(pod v2 vb)
until nsx va ping -c1 -W1 "$vb" >/dev/null 2>&1; do sleep 0.1; done
# What the pod MTU costs: direct routing with the tunnel's MTU on the pods (--pod-mtu=vxlan).
node m1 192.168.78.61; node m2 192.168.78.62
daemon m1 243 --pod-mtu=vxlan; daemon m2 243 --pod-mtu=vxlan
ma=$(pod m1 ma); mb=$(pod m2 mb)
until nsx ma ping -c1 -W1 "$mb" >/dev/null 2>&1; do sleep 0.1; done

# flannel-style by hand: VXLAN (vni 2, port 8472, learning off, MTU 1450), the subnet's network
# address on it, cni0 with the gateway, a veth pod; static neighbour + FDB + onlink route;
# masquerade of traffic leaving the cluster, as Tether and flannel do.
node h1 192.168.78.21; node h2 192.168.78.22
forward_and_masquerade() { # NODE NET16 N: forwarding on, NET16.N.0/24 masqueraded out of NET16.0.0/16
  nsx "$1" sysctl -qw net.ipv4.ip_forward=1
  printf '%s\n' 'add table inet hand' \
    'add chain inet hand post { type nat hook postrouting priority srcnat; policy accept; }' \
    "add rule inet hand post ip saddr $2.$3.0/24 ip daddr != $2.0.0/16 masquerade" |
    nsx "$1" nft -f -
}
hand() { # hand NODE LOCAL_IP N PEER_IP PEER_N PEER_MAC_SUFFIX MAC_SUFFIX
  local n=$1 local=$2 i=$3 peer=$4 j=$5 peermac=0e:00:00:00:00:$6 mac=0e:00:00:00:00:$7
  nsx "$n" ip link add vx type vxlan id 2 dstport 8472 local "$local" dev eth0 nolearning
  nsx "$n" ip link set vx address "$mac" mtu 1450 up
  nsx "$n" ip addr add "10.246.$i.0/32" dev vx
  nsx "$n" ip neigh add "10.246.$j.0" lladdr "$peermac" dev vx nud permanent
  nsx "$n" bridge fdb append "$peermac" dev vx dst "$peer" self permanent
  nsx "$n" ip route add "10.246.$j.0/24" via "10.246.$j.0" dev vx onlink
  nsx "$n" ip link add cni0 type bridge; nsx "$n" ip addr add "10.246.$i.1/24" dev cni0; nsx "$n" ip link set cni0 up
  # flannel masquerades traffic leaving the cluster too; the same rule (and so conntrack) here.
  forward_and_masquerade "$n" 10.246 "$i"
  ip netns add "tb-ov-$n-pod"
  nsx "$n" ip link add vethp mtu 1450 type veth peer name eth0 mtu 1450 netns "tb-ov-$n-pod"
  nsx "$n" ip link set vethp master cni0 up
  nsx "$n-pod" ip addr add "10.246.$i.2/24" dev eth0; nsx "$n-pod" ip link set eth0 up; nsx "$n-pod" ip link set lo up
  nsx "$n-pod" ip route add default via "10.246.$i.1"
}
hand h1 192.168.78.21 1 192.168.78.22 2 02 01
hand h2 192.168.78.22 2 192.168.78.21 1 01 02
nsx h1-pod ping -c1 -W2 10.246.2.2 >/dev/null

# Across the router: Tether nodes r1 (192.168.78.51) and r2 (192.168.79.52), cluster 249 (the
# peer is beyond r1's L2, so VXLAN); hand-built VXLAN nodes k1 and k2 the same way.
echo "setting up: Tether r1, r2 and hand-built k1, k2 on two subnets joined by a router" >&2
node r1 192.168.78.51; node r2 192.168.79.52 ul1
daemon r1 249; daemon r2 249
ra=$(pod r1 ra); rb=$(pod r2 rb)
until nsx ra ping -c1 -W1 "$rb" >/dev/null 2>&1; do sleep 0.1; done
node k1 192.168.78.61; node k2 192.168.79.62 ul1
hand k1 192.168.78.61 1 192.168.79.62 2 04 03
hand k2 192.168.79.62 2 192.168.78.61 1 03 04
nsx k1-pod ping -c1 -W2 10.246.2.2 >/dev/null

# flannel "host-gw" by hand: cni0 with the gateway, a veth pod, a plain route to the other node's
# pod subnet via its underlay address (the full underlay MTU, no encapsulation), and flannel's
# masquerade of traffic leaving the cluster (its --ip-masq, on in its manifest), so conntrack
# runs on the node as it does on a flannel node (and on Tether's).
hostgw() { # hostgw NODE N PEER_IP PEER_N
  local n=$1 i=$2 peer=$3 j=$4
  nsx "$n" ip link add cni0 type bridge; nsx "$n" ip addr add "10.248.$i.1/24" dev cni0; nsx "$n" ip link set cni0 up
  forward_and_masquerade "$n" 10.248 "$i"
  nsx "$n" ip route add "10.248.$j.0/24" via "$peer" dev eth0
  ip netns add "tb-ov-$n-pod"
  nsx "$n" ip link add vethp mtu 1500 type veth peer name eth0 mtu 1500 netns "tb-ov-$n-pod"
  nsx "$n" ip link set vethp master cni0 up
  nsx "$n-pod" ip addr add "10.248.$i.2/24" dev eth0; nsx "$n-pod" ip link set eth0 up; nsx "$n-pod" ip link set lo up
  nsx "$n-pod" ip route add default via "10.248.$i.1"
}
node g1 192.168.78.41; node g2 192.168.78.42
hostgw g1 1 192.168.78.42 2
hostgw g2 2 192.168.78.41 1
nsx g1-pod ping -c1 -W2 10.248.2.2 >/dev/null

# Calico-style routed veth by hand (the shape of Tether's routed datapath, with nothing else): the pod's
# host-side veth with proxy ARP and a /32 route to the pod, the pod's default route via
# 169.254.1.1 on its eth0; a plain route to the other node's pods, the same masquerade rule.
routed() { # routed NODE N PEER_IP PEER_N
  local n=$1 i=$2 peer=$3 j=$4
  forward_and_masquerade "$n" 10.250 "$i"
  nsx "$n" ip route add "10.250.$j.0/24" via "$peer" dev eth0
  ip netns add "tb-ov-$n-pod"
  nsx "$n" ip link add vethp mtu 1500 type veth peer name eth0 mtu 1500 netns "tb-ov-$n-pod"
  nsx "$n" ip link set vethp up
  nsx "$n" sysctl -qw net.ipv4.conf.vethp.proxy_arp=1
  nsx "$n" ip route add "10.250.$i.2/32" dev vethp
  nsx "$n-pod" ip addr add "10.250.$i.2/32" dev eth0; nsx "$n-pod" ip link set eth0 up; nsx "$n-pod" ip link set lo up
  nsx "$n-pod" ip route add 169.254.1.1 dev eth0; nsx "$n-pod" ip route add default via 169.254.1.1 dev eth0
}
node c1 192.168.78.71; node c2 192.168.78.72
routed c1 1 192.168.78.72 2
routed c2 2 192.168.78.71 1
nsx c1-pod ping -c1 -W2 10.250.2.2 >/dev/null

t=(); v=(); h=(); g=(); u=(); l=(); k=(); w=(); lk=(); m=(); tu=(); gu=(); c=(); cu=()
# Every path once a round, in an order rotated by one place each round, so that no path always
# runs first or right after the same neighbour (a fixed order had put Tether first in every round
# and its underlay right after it). Ratios are paired within a round.
declare -A ends=(
  [t]="tb ta $tb" [u]="t2 t1 192.168.78.12" [g]="g2-pod g1-pod 10.248.2.2" [c]="c2-pod c1-pod 10.250.2.2"
  [m]="mb ma $mb" [v]="vb va $vb" [h]="h2-pod h1-pod 10.246.2.2"
  [l]="rb ra $rb" [k]="k2-pod k1-pod 10.246.2.2" [w]="r2 r1 192.168.79.52"
)
order=(t u g c m v h l k w)
for r in $(seq 1 "$reps"); do
  echo "iperf3 round $r/$reps ($secs s each)" >&2
  declare -A got=()
  for ((i = 0; i < ${#order[@]}; i++)); do
    path=${order[(i + r) % ${#order[@]}]}
    # unquoted on purpose: the server namespace, the client namespace and the address
    got[$path]=$(iperf ${ends[$path]})
  done
  t+=("${got[t]}"); u+=("${got[u]}"); g+=("${got[g]}"); c+=("${got[c]}"); m+=("${got[m]}")
  v+=("${got[v]}"); h+=("${got[h]}"); l+=("${got[l]}"); k+=("${got[k]}"); w+=("${got[w]}")
  tu+=("$(awk "BEGIN {print ${got[t]}/${got[u]}}")")
  gu+=("$(awk "BEGIN {print ${got[g]}/${got[u]}}")")
  cu+=("$(awk "BEGIN {print ${got[c]}/${got[u]}}")")
  lk+=("$(awk "BEGIN {print ${got[l]}/${got[k]}}")")
done 2>/dev/null
tm=$(printf '%s\n' "${t[@]}" | median); vm=$(printf '%s\n' "${v[@]}" | median)
hm=$(printf '%s\n' "${h[@]}" | median); gm=$(printf '%s\n' "${g[@]}" | median); um=$(printf '%s\n' "${u[@]}" | median)
lm=$(printf '%s\n' "${l[@]}" | median); km=$(printf '%s\n' "${k[@]}" | median); wm=$(printf '%s\n' "${w[@]}" | median)
lkm=$(printf '%s\n' "${lk[@]}" | median); mm=$(printf '%s\n' "${m[@]}" | median)
tum=$(printf '%s\n' "${tu[@]}" | median); gum=$(printf '%s\n' "${gu[@]}" | median)
cm=$(printf '%s\n' "${c[@]}" | median); cum=$(printf '%s\n' "${cu[@]}" | median)

# Convergence: a third node joins; time from starting its daemon to the first successful ping from
# a pod on t1 to a pod on the new node (its pod is created as soon as the node facts exist).
node t3 192.168.78.13
start=$(date +%s%N)
daemon t3 245
tc=$(pod t3 tc)
until nsx ta ping -c1 -W1 -i 0.01 "$tc" >/dev/null 2>&1; do :; done
converge_ms=$(( ($(date +%s%N) - start) / 1000000 ))
rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/${daemon_pid[t1]}/status")

# One line per path for bench/plot.py (overlay-throughput.png), this run's medians.
mkdir -p target/bench
run=$(date -u +%Y-%m-%dT%H:%M:%SZ)
{
  [ -s target/bench/overlay-throughput.csv ] || echo "run,segment,path,gbit_per_s"
  printf '%s,one L2,underlay (node to node),%s\n' "$run" "$um"
  printf '%s,one L2,Tether direct routing,%s\n' "$run" "$tm"
  printf '%s,one L2,Tether direct (pod MTU 1450),%s\n' "$run" "$mm"
  printf '%s,one L2,Tether VXLAN,%s\n' "$run" "$vm"
  printf '%s,one L2,flannel-style VXLAN (by hand),%s\n' "$run" "$hm"
  printf '%s,one L2,flannel host-gw (by hand),%s\n' "$run" "$gm"
  printf '%s,one L2,Calico-style routed veth (by hand),%s\n' "$run" "$cm"
  printf '%s,across a router,underlay (node to node),%s\n' "$run" "$wm"
  printf '%s,across a router,Tether VXLAN,%s\n' "$run" "$lm"
  printf '%s,across a router,flannel-style VXLAN (by hand),%s\n' "$run" "$km"
} >> target/bench/overlay-throughput.csv

pct() { awk "BEGIN {printf \"%.0f%%\", 100*$1/$2}"; }
printf '\n| iperf3 TCP, median of %s x %s s | Gbit/s | vs underlay | vs hand-built VXLAN |\n|---|---|---|---|\n' "$reps" "$secs"
printf '| pod to pod across nodes, Tether direct routing (default, pod MTU 1500) | %.1f | %s (paired rounds: %.2fx) | %s |\n' "$tm" "$(pct "$tm" "$um")" "$tum" "$(pct "$tm" "$hm")"
printf '| pod to pod across nodes, Tether direct routing, pod MTU 1450 (--pod-mtu=vxlan) | %.1f | %s | %s |\n' "$mm" "$(pct "$mm" "$um")" "$(pct "$mm" "$hm")"
printf '| pod to pod across nodes, Tether over VXLAN | %.1f | %s | %s |\n' "$vm" "$(pct "$vm" "$um")" "$(pct "$vm" "$hm")"
printf '| pod to pod across nodes, hand-built flannel-style VXLAN | %.1f | %s | 100%% |\n' "$hm" "$(pct "$hm" "$um")"
printf '| pod to pod across nodes, hand-built flannel host-gw (plain route) | %.1f | %s (paired rounds: %.2fx) | %s |\n' "$gm" "$(pct "$gm" "$um")" "$gum" "$(pct "$gm" "$hm")"
printf '| pod to pod across nodes, hand-built Calico-style routed veth (no bridge, plain route) | %.1f | %s (paired rounds: %.2fx) | %s |\n' "$cm" "$(pct "$cm" "$um")" "$cum" "$(pct "$cm" "$hm")"
printf '| node to node on the underlay (limit) | %.1f | 100%% | %s |\n' "$um" "$(pct "$um" "$hm")"
printf '\n| across a router (two subnets), median of %s x %s s | Gbit/s | vs underlay across the router | vs hand-built VXLAN across the router |\n|---|---|---|---|\n' "$reps" "$secs"
printf '| pod to pod, Tether (VXLAN to a peer beyond the L2) | %.1f | %s | %s (paired rounds: %.2fx) |\n' "$lm" "$(pct "$lm" "$wm")" "$(pct "$lm" "$km")" "$lkm"
printf '| pod to pod, hand-built flannel-style VXLAN | %.1f | %s | 100%% |\n' "$km" "$(pct "$km" "$wm")"
printf '| node to node across the router (limit) | %.1f | 100%% | %s |\n' "$wm" "$(pct "$wm" "$km")"
printf '\n| measure | value |\n|---|---|\n'
printf '| node join to first cross-node ping | %s ms |\n' "$converge_ms"
printf '| tether-overlayd RSS | %s KiB (%.1f MB) |\n' "$rss_kb" "$(awk "BEGIN {print $rss_kb/1024}")"
