"""pytest fixtures for tests against the real Kubernetes harness.

One control plane per pytest session (`cluster`), reused by every test that asks for it.
The binaries are built on first use when missing (tens of minutes cold; nothing when warm),
so `python3 -m pytest` works on a bare machine.

Environment knobs: PODWIRE_E2E_SHAPE (l2 | routed, default l2), PODWIRE_E2E_NODES (3),
PODWIRE_CACHE (build cache, /var/cache/podwire), PODWIRE_E2E_DIR (cluster files, /run/pwe),
PODWIRE_ETCD (an etcd binary to use instead of the built one).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from e2e import build
from e2e import netns as ns
from e2e.cluster import Cluster

E2E_DIR = Path(__file__).parent
REPO = E2E_DIR.parent


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if E2E_DIR in Path(item.fspath).parents and ("root" in item.keywords or "cluster" in item.keywords):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def k8s_bin(request) -> Path:
    """The directory of the built Kubernetes binaries; builds what is missing (visibly)."""
    if build.missing():
        capman = request.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled():
            print("\ne2e: building the missing Kubernetes binaries (cold: several minutes)", flush=True)
            build.ensure_built()
    return build.bin_dir()


@pytest.fixture(scope="session")
def podwire_dist() -> Path:
    """dist/podwire (the frozen CNI plugin), (re)built when the sources are newer (make tracks that)."""
    subprocess.run(["make", "-s", "dist"], cwd=REPO, check=True, capture_output=True)
    assert os.access(REPO / "dist/podwire/podwire", os.X_OK)
    return REPO / "dist/podwire"


@pytest.fixture(scope="session")
def cluster(k8s_bin) -> Cluster:
    """A running cluster: control plane, N nodes registered with podCIDRs, an outside host."""
    shape = os.environ.get("PODWIRE_E2E_SHAPE", "l2")
    nodes = int(os.environ.get("PODWIRE_E2E_NODES", "3"))
    Cluster.sweep_abandoned()  # leftovers of sessions that were killed
    # One name per session (not the CLI's "dev"): sessions of several users, or a session
    # and a CLI cluster, run side by side without touching each other.
    with Cluster(f"t{os.getpid() % 100000}", shape, nodes, bin_dir=k8s_bin, owner=ns.this_process("pytest")) as c:
        yield c


@pytest.fixture(scope="session")
def full_cluster(k8s_bin) -> Cluster:
    """A running cluster of full nodes (e2e/node_runtime.py: containerd + kubelet per node,
    CoreDNS deployed, no kube-proxy). No CNI is installed: the nodes are NotReady until podwire
    is (its DaemonSet, or `node_runtime.install_podwire_cni(cluster, dist)`)."""
    shape = os.environ.get("PODWIRE_E2E_SHAPE", "l2")
    nodes = int(os.environ.get("PODWIRE_E2E_NODES", "3"))
    Cluster.sweep_abandoned()
    with Cluster(f"k{os.getpid() % 100000}", shape, nodes, bin_dir=k8s_bin, owner=ns.this_process("pytest"),
                 full_nodes=True) as c:
        yield c


@pytest.fixture(scope="session")
def kube_api(cluster):
    """A `kubernetes.client.ApiClient` (admin) for the session cluster."""
    api = cluster.api_client()
    yield api
    api.close()


@pytest.fixture
def kube_namespace(kube_api) -> str:
    """A fresh Kubernetes namespace for one test, deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    name = f"pwe-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)
