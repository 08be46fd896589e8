#!/usr/bin/env bash
# Installs everything podwire's build and tests need on a bare Debian 12 machine (idempotent, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  make iproute2 nftables iputils-ping conntrack kmod procps psmisc util-linux  # dataplane and namespaces
  containerd runc containernetworking-plugins busybox-static                 # real CNI client, reference plugins
  iperf3 socat netcat-openbsd curl tcpdump ethtool hyperfine strace          # traffic, benchmarks, debugging
  arping ndisc6                                                              # LoadBalancer ARP/NDP responder tests
  openssl etcd-server mmdebstrap gcc libc6-dev                               # e2e harness (gcc: static pause)
)
missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Docker for the kind path (e2e/dockerd.py runs dockerd inside a network namespace of the harness, never as
# the machine's service): a policy-rc.d that denies every start keeps apt from starting it in the root namespace.
if ! dpkg-query -W -f='${Status}' docker.io 2>/dev/null | grep -q "install ok installed"; then
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io
  [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
fi

PYTHON=${PYTHON:-python3}
$PYTHON -m pip install -q --disable-pip-version-check -r requirements-dev.txt

# cnitool: libcni's own command-line client, an independent CNI runtime for the chaining tests.
CACHE=${PODWIRE_CACHE:-/var/cache/podwire}
if [ ! -x "$CACHE/tools/bin/cnitool" ]; then
  mkdir -p "$CACHE/tools/bin"
  GOBIN="$CACHE/tools/bin" GOMODCACHE="$CACHE/gomodcache" GOCACHE="$CACHE/gocache" GOFLAGS=-mod=mod \
    go install github.com/containernetworking/cni/cnitool@v1.3.0
fi

# containerd 2.2 (containerd, ctr, shim): Debian's 1.6.20 vendors a libcni that rejects CNI 1.1.0 results.
CTRD="$CACHE/tools/containerd-v2.2.1/bin"
if [ ! -x "$CTRD/containerd-shim-runc-v2" ]; then
  mkdir -p "$CTRD"
  for cmd in containerd ctr containerd-shim-runc-v2; do
    GOBIN="$CTRD" GOMODCACHE="$CACHE/gomodcache" GOCACHE="$CACHE/gocache" GOFLAGS=-mod=mod CGO_ENABLED=0 \
      go install -tags "no_btrfs no_devmapper no_zfs" \
      -ldflags "-X github.com/containerd/containerd/v2/version.Version=v2.2.1" \
      "github.com/containerd/containerd/v2/cmd/$cmd@v2.2.1"
  done
fi
