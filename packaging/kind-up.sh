#!/usr/bin/env bash
# Docker users: a kind cluster whose pod network and Service proxy are podwire.
#
#   packaging/kind-up.sh                 build the image with Docker, create the cluster, install podwire
#   PODWIRE_IMAGE_ARCHIVE=dist/podwire-image.tar packaging/kind-up.sh
#                                        use the OCI tarball from packaging/image.py instead of docker build
#   KIND_CLUSTER_NAME=x  PODWIRE_IMAGE=repo/name:tag  KIND=kind  KUBECTL=kubectl   (defaults shown below)
#   KIND_CONFIG=manifests/kind-config-dual.yaml (or -ipv6.yaml)  a dual-stack or IPv6-only cluster
#
# kind-config.yaml turns off kindnet and kube-proxy, so the nodes stay NotReady and Services dead until
# podwire runs. Delete with: kind delete cluster --name "$KIND_CLUSTER_NAME"
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER_NAME:-podwire}
IMAGE=${PODWIRE_IMAGE:-docker.io/podwire/podwire:dev}
KIND=${KIND:-kind}
KUBECTL=${KUBECTL:-kubectl}
CONFIG=${KIND_CONFIG:-manifests/kind-config.yaml}
k() { "$KUBECTL" --context "kind-$CLUSTER" "$@"; }

if [ -n "${PODWIRE_IMAGE_ARCHIVE:-}" ]; then
    [ -f "$PODWIRE_IMAGE_ARCHIVE" ] || { echo "no such image archive: $PODWIRE_IMAGE_ARCHIVE" >&2; exit 1; }
else
    docker build -f packaging/Dockerfile -t "$IMAGE" .
fi

if ! "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    "$KIND" create cluster --name "$CLUSTER" --config "$CONFIG"
fi

# what `kind load` does: import the image into every node's containerd (namespace k8s.io)
if [ -n "${PODWIRE_IMAGE_ARCHIVE:-}" ]; then
    "$KIND" load image-archive --name "$CLUSTER" "$PODWIRE_IMAGE_ARCHIVE"
else
    "$KIND" load docker-image --name "$CLUSTER" "$IMAGE"
fi

# No kube-proxy: the daemon reaches the API server directly, at the control-plane container's name
# (Docker's DNS resolves it on every node; kind's API server certificate carries it). Created before
# the DaemonSet so the first pods already see it.
k create namespace podwire --dry-run=client -o yaml | k apply -f -
k -n podwire create configmap podwire-apiserver --from-literal=host="$CLUSTER-control-plane" \
    --from-literal=port=6443 --dry-run=client -o yaml | k apply -f -
# The daemon's cluster_cidrs (egress masquerade, the proxy's families) are the cluster's pod ranges:
# kubeadm's podSubnet, one range per family ("10.244.0.0/16" or "10.244.0.0/16,fd00:10:244::/56").
subnets=$(k -n kube-system get configmap kubeadm-config -o jsonpath='{.data.ClusterConfiguration}' \
    | sed -n 's/^ *podSubnet: *//p' | tr -d '"' | head -n 1)
if ! [[ "$subnets" =~ ^[0-9A-Fa-f:./,]+$ ]]; then
    echo "kind-up.sh: cannot read the cluster's podSubnet (got '$subnets')" >&2
    exit 1
fi
cidrs="\"${subnets//,/\",\"}\""
sed -e "s|docker.io/podwire/podwire:dev|$IMAGE|g" \
    -e "s|\"cluster_cidrs\": \[[^]]*\]|\"cluster_cidrs\": [$cidrs]|" manifests/podwire.yaml | k apply -f -

k -n podwire rollout status daemonset/podwire --timeout=300s
k wait --for=condition=Ready nodes --all --timeout=300s
k get nodes -o wide
