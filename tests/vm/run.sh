#!/usr/bin/env bash
# Boots a real Linux kernel under QEMU (software emulation) with an NFS server ready, and runs a
# command inside the guest as root:
#
#   tests/vm/run.sh [--timeout SECONDS] [--] COMMAND [ARGS...]
#
# - The kernel is Debian's linux-image-amd64 from /boot; a small initramfs (busybox-static and the
#   kernel's virtio, 9p, NFS, loop, ext4 and xfs modules) is built once and cached in
#   target/vm/.
# - The guest sees this machine's root filesystem read-only (9p) and runs COMMAND chrooted into
#   it, so every built binary and every tool on PATH works inside, at the same paths. /tmp,
#   /run and /var/tmp are fresh tmpfs (the host's are not visible); /tmp/scratch is a writable
#   directory shared with the host.
# - nfs-ganesha (NFSv3 and NFSv4.1) runs in a network namespace of its own; the guest reaches it
#   over virtio-net on a tap device in that namespace. COMMAND gets NFS_SERVER and NFS_SHARE.
# - COMMAND's output streams here; the script exits with COMMAND's exit code.
# - The guest can ask the host to stop or start the NFS server (`nfs-stop`, `nfs-start`) or to
#   fill a volume with many files and empty it again (`fill DIR COUNT`, `unfill DIR`): it writes the request to
#   /tmp/scratch/host-request and waits for /tmp/scratch/host-reply.
# Everything (QEMU, the server, the namespace, the scratch directory) is removed at exit.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
limit=900
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) limit=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--timeout SECONDS] [--] COMMAND [ARGS...]" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "$0: run as root" >&2; exit 2; }

# The newest kernel in /boot whose modules are installed.
kernel=
for candidate in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V -r); do
  version=${candidate#/boot/vmlinuz-}
  if [ -d "/lib/modules/$version" ]; then kernel=$candidate; break; fi
done
[ -n "$kernel" ] || { echo "$0: no kernel in /boot (install linux-image-amd64: scripts/setup.sh)" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null || { echo "$0: qemu-system-x86 is missing (scripts/setup.sh)" >&2; exit 2; }
[ -x /bin/busybox ] && file -L /bin/busybox | grep -q 'statically linked' ||
  { echo "$0: busybox-static is missing (scripts/setup.sh)" >&2; exit 2; }

cache=$root/target/vm
mkdir -p "$cache"
initramfs=$cache/initramfs-$version-$(sha256sum "$root/tests/vm/init" | cut -c1-12).cpio.gz
if [ ! -f "$initramfs" ]; then
  echo "vm: building the initramfs for $version" >&2
  build=$(mktemp -d)
  mkdir -p "$build"/{bin,dev,proc,sys,host,lib/modules/$version}
  cp /bin/busybox "$build/bin/busybox"
  cp "$root/tests/vm/init" "$build/init"; chmod +x "$build/init"
  mods=/lib/modules/$version
  wanted="virtio_pci virtio_net 9pnet_virtio 9p nfsv3 nfsv4 loop ext4 crc32c_generic xfs bridge veth"
  # Each module with everything it depends on, from modules.dep.
  files=$(for m in $wanted; do modprobe -S "$version" --show-depends "$m" 2>/dev/null; done |
          awk '$1 == "insmod" {print $2}' | sort -u)
  for f in $files; do
    mkdir -p "$build$(dirname "$f")"
    cp "$f" "$build$f"
  done
  cp "$mods"/modules.{dep,alias,builtin,order} "$build$mods/" 2>/dev/null || true
  (cd "$build" && find . | cpio -o -H newc --quiet | gzip -1) > "$initramfs.tmp"
  mv "$initramfs.tmp" "$initramfs"
  rm -rf "$build"
fi

. "$root/scripts/lib/nfs.sh"
work=$(mktemp -d /tmp/tether-vm.XXXXXX)
ns=tt-vm-$$
qemu_pid=
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null || true
  nfs_stop "$ns" "$work/nfs" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

nfs_start "$ns" "$work/nfs"
chmod 0777 "$work/nfs/export"
ip -n "$ns" tuntap add dev vmtap0 mode tap
ip -n "$ns" addr add 10.251.1.1/24 dev vmtap0
ip -n "$ns" link set vmtap0 up

scratch=$work/scratch
mkdir -p "$scratch"
{
  echo "export NFS_SERVER=$NFS_ADDRESS NFS_SHARE=$work/nfs/export TETHER_IN_VM=1"
  echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH HOME=/tmp"
  printf 'cd %q 2>/dev/null || cd /\n' "$PWD"
  printf 'exec'; printf ' %q' "$@"; echo
} > "$scratch/cmd.sh"

ip netns exec "$ns" qemu-system-x86_64 -accel tcg -M q35 -cpu max -smp 2 -m 1536 \
  -kernel "$kernel" -initrd "$initramfs" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$scratch",mount_tag=scratch,security_model=none \
  -netdev tap,id=n0,ifname=vmtap0,script=no,downscript=no -device virtio-net-pci,netdev=n0,romfile= \
  -fw_cfg name=etc/sercon-port,string=0 \
  -nodefaults -vga none -display none -no-reboot -serial stdio </dev/null \
  2> >(grep -v --line-buffered 'sercon-port' >&2) &
qemu_pid=$!

# Serve the guest's requests to the host until QEMU exits or time runs out.
deadline=$((SECONDS + limit))
while kill -0 "$qemu_pid" 2>/dev/null; do
  if [ -f "$scratch/host-request" ]; then
    request=$(cat "$scratch/host-request"); rm -f "$scratch/host-request"
    case $request in
      nfs-stop) nfs_stop_server "$work/nfs"; echo ok > "$scratch/host-reply.tmp" ;;
      nfs-start) nfs_start_server "$ns" "$work/nfs"; echo ok > "$scratch/host-reply.tmp" ;;
      fill\ *)
        # fill DIR COUNT: COUNT small files in a new directory DIR/many of the export (a large
        # volume, made on the server side in a second where the guest would need minutes).
        read -r _ fill_dir fill_count <<<"$request"
        case $fill_dir in */*|.*|'') echo "bad fill $fill_dir" > "$scratch/host-reply.tmp" ;;
          *) mkdir -p "$work/nfs/export/$fill_dir/many" &&
             (cd "$work/nfs/export/$fill_dir/many" && seq 1 "$fill_count" | xargs touch) &&
             echo ok > "$scratch/host-reply.tmp" ;;
        esac ;;
      unfill\ *)
        read -r _ fill_dir <<<"$request"
        case $fill_dir in */*|.*|'') echo "bad unfill $fill_dir" > "$scratch/host-reply.tmp" ;;
          *) rm -rf "$work/nfs/export/$fill_dir/many" && echo ok > "$scratch/host-reply.tmp" ;;
        esac ;;
      *) echo "unknown request $request" > "$scratch/host-reply.tmp" ;;
    esac
    mv "$scratch/host-reply.tmp" "$scratch/host-reply"
  fi
  if [ $SECONDS -ge $deadline ]; then
    echo "vm: timed out after $limit s" >&2
    exit 124
  fi
  sleep 0.2
done
wait "$qemu_pid" || true
qemu_pid=
if [ ! -f "$scratch/exit-code" ]; then
  echo "vm: the guest stopped without reporting an exit code" >&2
  exit 125
fi
exit "$(cat "$scratch/exit-code")"
