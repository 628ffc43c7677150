#!/usr/bin/env bash
# Installs everything Tether's build, demo and tests need on Debian 12. Run as root; safe to repeat.
set -euo pipefail

packages=(
  build-essential            # the C toolchain some crates link with
  containernetworking-plugins  # the reference plugins, for compatibility tests and benchmarks
  iproute2                   # ip(8), for inspecting kernel state in tests and the demo
  nftables                   # masquerade rules
  jq                         # readable JSON in the demo
  iputils-ping               # reachability checks in tests and the demo
  iperf3                     # throughput benchmarks
  containerd runc            # the real runtime of the end-to-end tests
  busybox-static             # the e2e container image, built without a registry
  file                       # checks that busybox is static
  etcd-server                # the overlay datastore in tests and the demo
  protobuf-compiler          # protoc, for gRPC code generated at build time (etcd client, CSI)
  libprotobuf-dev            # the well-known .proto files protoc imports (google/protobuf/*.proto)
  nfs-ganesha nfs-ganesha-vfs  # a user-space NFS server for the CSI tests and the demo
  rpcbind                    # NFSv3 needs it (run inside the tests' own namespaces)
  e2fsprogs xfsprogs         # mkfs/resize of image-layout volumes
  qemu-system-x86 linux-image-amd64 cpio  # tests/vm/run.sh: a real kernel NFS client under QEMU
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs packages and the tests create network namespaces)" >&2
  exit 1
fi

missing=()
for p in $(printf "%s\n" "${packages[@]}" | tr " " "\n"); do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Offline validation of deploy/ against the Kubernetes API schemas (scripts/test.sh).
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  echo "setup.sh: installing kubernetes-validate (PyPI)"
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi

# A gRPC C-core client (csi-driver/tests/grpc_clients.rs): Python grpcio from PyPI.
if ! python3 -c 'import grpc' 2>/dev/null; then
  echo "setup.sh: installing grpcio (PyPI)"
  python3 -m pip install -q --disable-pip-version-check grpcio==1.85.3
fi

if ! command -v cargo >/dev/null; then
  echo "setup.sh: Rust is missing. Install a current toolchain with rustup (https://rustup.rs), then re-run." >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup.sh: installing cargo-nextest"
  cargo install --locked -q cargo-nextest
fi
echo "setup.sh: ready"
