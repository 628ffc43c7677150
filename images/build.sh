#!/usr/bin/env bash
# Builds Tether's container image as an OCI image archive, without a Docker daemon or any image
# tool: the layer is a plain tar, the config, manifest and index are written here.
#
#   images/build.sh [--name NAME] [--tag TAG] [--profile release|debug] [--out DIR]
#
# Defaults: tether.local/tether:0.1.0, release build, target/images/. The image holds every
# Tether binary in /opt/tether/bin (static) plus the few tools they run: nft (masquerade rules),
# mkfs.ext4, resize2fs, mkfs.xfs, xfs_growfs and blkid (image-layout volumes), copied with the shared
# libraries they need. Load it with `ctr -n k8s.io images import <archive>` (containerd, k3s:
# `k3s ctr images import`), or push it to a registry with `skopeo copy oci-archive:<archive>
# docker://<registry>/<name>:<tag>`, then point deploy/ at it with scripts/set-image.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
name=tether.local/tether
tag=0.1.0
profile=release
out=$root/target/images
while [ $# -gt 0 ]; do
  case $1 in
    --name) name=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--name NAME] [--tag TAG] [--profile release|debug] [--out DIR]" >&2; exit 2 ;;
  esac
done
binaries="cni-overlay cni-bridge cni-ipam cni-portmap cni-bandwidth tether-overlayd tether-cni-install tether-netpol tether-csi tether-csictl tether-nfs-agent"
tools="/usr/sbin/nft /usr/sbin/mkfs.ext4 /usr/sbin/resize2fs /usr/sbin/mkfs.xfs /usr/sbin/xfs_growfs /usr/sbin/blkid"

cd "$root"
flag=--release; [ "$profile" = debug ] && flag=
cargo build $flag -q -p cni-ipam -p cni-bridge -p cni-portmap -p cni-bandwidth -p cni-overlay -p tether-csi -p tether-netpol -p tether-nfs-agent
bindir=$root/target/x86_64-unknown-linux-gnu/$profile

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs/opt/tether/bin" "$rootfs/tmp" "$rootfs/etc/tether" "$rootfs/run" "$rootfs/var/lib"
chmod 1777 "$rootfs/tmp"
for b in $binaries; do install -m 0755 "$bindir/$b" "$rootfs/opt/tether/bin/$b"; done
# The tools, resolved through symlinks, with their libraries and the dynamic loader.
copy() { mkdir -p "$rootfs$(dirname "$1")"; cp -L "$1" "$rootfs$1"; }
for t in $tools; do
  [ -e "$t" ] || { echo "$0: $t is missing (scripts/setup.sh installs it)" >&2; exit 2; }
  copy "$t"
  for lib in $(ldd "$t" | awk '/=> \// {print $3} /^[ \t]*\// {print $1}'); do copy "$lib"; done
done
printf 'root:x:0:0:root:/:/opt/tether/bin/tether-csi\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\n' > "$rootfs/etc/group"

layout=$work/layout
mkdir -p "$layout/blobs/sha256"
# A reproducible layer: fixed owners, times and order.
tar --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name -C "$rootfs" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -6 "$work/layer.tar"
layer_digest=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar.gz")
mv "$work/layer.tar.gz" "$layout/blobs/sha256/$layer_digest"

blob() { # blob FILE -> prints "digest size" after storing FILE as a blob
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1); s=$(stat -c %s "$1")
  mv "$1" "$layout/blobs/sha256/$d"
  echo "$d $s"
}
jq -n --arg diff "sha256:$diff_id" --arg version "$tag" '{
  architecture: "amd64", os: "linux",
  config: {
    Env: ["PATH=/opt/tether/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    WorkingDir: "/",
    Labels: {"org.opencontainers.image.title": "tether", "org.opencontainers.image.version": $version}
  },
  rootfs: {type: "layers", diff_ids: [$diff]},
  history: [{created_by: "images/build.sh"}]
}' > "$work/config.json"
read -r config_digest config_size < <(blob "$work/config.json")
jq -n --arg cd "sha256:$config_digest" --argjson cs "$config_size" \
      --arg ld "sha256:$layer_digest" --argjson ls "$layer_size" '{
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $ld, size: $ls}]
}' > "$work/manifest.json"
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")
jq -n --arg md "sha256:$manifest_digest" --argjson ms "$manifest_size" --arg tag "$tag" --arg ref "$name:$tag" '{
  schemaVersion: 2,
  manifests: [{
    mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $md, size: $ms,
    platform: {architecture: "amd64", os: "linux"},
    annotations: {"org.opencontainers.image.ref.name": $tag, "io.containerd.image.name": $ref}
  }]
}' > "$layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"

mkdir -p "$out"
archive=$out/tether-$tag.oci.tar
tar --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name -C "$layout" -cf "$archive" .
echo "$archive ($name:$tag, $(du -h "$archive" | cut -f1))"
