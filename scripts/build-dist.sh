#!/usr/bin/env bash
# Builds dist/: each overlay of deploy/ as one file to apply without kustomize
# (`kubectl apply -f dist/tether.yaml`). scripts/test.sh (deploy/validate.py) fails when dist/
# differs from what this script would write, so run it after changing deploy/.
#   scripts/build-dist.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/kubectl.sh
check=false
[ "${1:-}" = "--check" ] && check=true
mkdir -p dist
status=0
build() {
  local overlay=$1 out=$2 what=$3
  local text
  text="# Tether $what, built from deploy/$overlay by scripts/build-dist.sh: do not edit, edit deploy/.
# kubectl apply -f $out
$("$TETHER_KUBECTL" kustomize "deploy/$overlay")"
  if $check; then
    if ! diff -q <(printf '%s\n' "$text") "$out" >/dev/null 2>&1; then
      echo "$out differs from deploy/$overlay: run scripts/build-dist.sh" >&2
      status=1
    fi
  else
    printf '%s\n' "$text" > "$out.tmp" && mv "$out.tmp" "$out"
    echo "$out"
  fi
}
build overlays/kubeadm dist/tether.yaml "for kubeadm clusters"
build overlays/k3s dist/tether-k3s.yaml "for k3s"
build overlays/rke2 dist/tether-rke2.yaml "for RKE2"
build optional/snapshots dist/tether-snapshots.yaml "VolumeSnapshotClass (needs the snapshot CRDs)"
build optional/monitoring dist/tether-monitoring.yaml "ServiceMonitor (needs the Prometheus Operator's CRDs)"
build uninstall dist/tether-uninstall.yaml "uninstallation for kubeadm and RKE2 nodes (see deploy/uninstall/base)"
build uninstall/k3s dist/tether-uninstall-k3s.yaml "uninstallation for k3s nodes (see deploy/uninstall/base)"
exit $status
