#!/usr/bin/env bash
# Builds a minimal OCI image archive from Debian's busybox-static, with no registry and no Docker:
#   tests/e2e/busybox-image.sh OUT.tar [IMAGE NAME] [CMD as a JSON list]
# The archive can be loaded with `ctr images import OUT.tar`. With a CMD such as
# '["/bin/sleep","2147483647"]' the image serves as a CRI sandbox's pause image.
set -euo pipefail
out=$1
name=${2:-docker.io/tether/busybox:e2e}
cmd=${3:-'["/bin/sh"]'}
busybox=$(command -v busybox)
file -L "$busybox" | grep -q "statically linked" || { echo "need busybox-static" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,run} "$work/oci/blobs/sha256"
cp "$busybox" "$root/bin/busybox"
for applet in sh ping ip ifconfig sleep cat ls hostname nc wget echo true; do
  ln -s busybox "$root/bin/$applet"
done
echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"

blob() { # blob FILE -> prints digest, moves FILE into the layout
  local digest
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  mv "$1" "$work/oci/blobs/sha256/$digest"
  echo "$digest"
}
size() { stat -c %s "$work/oci/blobs/sha256/$1"; }

tar -C "$root" --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -cf "$work/layer.tar" .
layer=$(blob "$work/layer.tar")
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":$cmd},"rootfs":{"type":"layers","diff_ids":["sha256:$layer"]}}
JSON
config=$(blob "$work/config.json")
cat > "$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$(size "$config")},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer","size":$(size "$layer")}]}
JSON
manifest=$(blob "$work/manifest.json")
cat > "$work/oci/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$(size "$manifest"),"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"${name##*:}"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"
tar -C "$work/oci" -cf "$out" .
