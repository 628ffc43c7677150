# The kubectl (with kustomize built in) that builds and checks deploy/: pinned, installed by
# scripts/setup.sh. Override with TETHER_KUBECTL=/path/to/kubectl.
TETHER_KUBECTL_VERSION=1.37.1
TETHER_KUBECTL=${TETHER_KUBECTL:-/usr/local/lib/tether/kubectl-$TETHER_KUBECTL_VERSION}
export TETHER_KUBECTL TETHER_KUBECTL_VERSION
