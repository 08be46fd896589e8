"""The DaemonSet on real kubelets: full nodes of the e2e harness (containerd + kubelet per node,
e2e/node_runtime.py), podwire's image imported as `kind load image-archive` does, then only
`kubectl apply -f manifests/podwire.yaml`. The nodes must turn Ready (the CNI config the daemon
writes), the init container must have installed the plugin into each node's /opt/cni/bin, and
two pods on different nodes, wired by that plugin, must reach each other.

Skipped while the harness has no full nodes (e2e/node_runtime.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.integration.test_image import frozen_bundles  # noqa: F401

node_runtime = pytest.importorskip("e2e.node_runtime", reason="the e2e harness has no full nodes yet")
e2e_images = pytest.importorskip("e2e.images")

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.slow, pytest.mark.frozen,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = os.path.join(ROOT, "manifests", "podwire.yaml")
IMAGE = "docker.io/podwire/podwire:dev"  # the name the manifests use


@pytest.fixture(scope="module")
def manifest_image(frozen_bundles, tmp_path_factory) -> str:  # noqa: F811
    out = str(tmp_path_factory.mktemp("image") / "podwire-image.tar")
    r = subprocess.run([sys.executable, "packaging/image.py", "--out", out, "--name", IMAGE], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def cluster(manifest_image):
    from e2e import build
    from e2e import cluster as cluster_mod

    build.ensure_built()
    with cluster_mod.Cluster(f"f{os.getpid() % 100000}", "l2", 2, full_nodes=True) as c:
        node_runtime.import_image(c.runtimes, manifest_image)
        yield c


def kubectl(c, *args, check=True, timeout=60):
    r = c.kubectl(*args, check=False, timeout=timeout)
    if check:
        assert r.returncode == 0, f"kubectl {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r


def diagnostics(c) -> str:
    out = [kubectl(c, "get", "nodes", "-o", "wide", check=False).stdout,
           kubectl(c, "-n", "podwire", "get", "pods", "-o", "wide", check=False).stdout]
    for pod in json.loads(kubectl(c, "-n", "podwire", "get", "pods", "-o", "json", check=False).stdout or "{}").get(
            "items", []):
        for container in ("install-cni", "enable-forwarding", "podwire-daemon"):
            out.append(f"== {pod['metadata']['name']} {container}")
            out.append(kubectl(c, "-n", "podwire", "logs", pod["metadata"]["name"], "-c", container,
                               check=False).stdout[-1500:])
    return "\n".join(out)


def test_daemonset_networks_real_nodes(cluster):
    c = cluster
    # as packaging/kind-up.sh does: no kube-proxy, so the daemon gets the API server's real address
    kubectl(c, "create", "namespace", "podwire")
    kubectl(c, "-n", "podwire", "create", "configmap", "podwire-apiserver",
            f"--from-literal=host={c.topology.cp.ip}", "--from-literal=port=6443")
    kubectl(c, "apply", "-f", MANIFEST)
    try:
        kubectl(c, "-n", "podwire", "rollout", "status", "daemonset/podwire", "--timeout=180s", timeout=200)
        kubectl(c, "wait", "--for=condition=Ready", "nodes", "--all", "--timeout=120s", timeout=140)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{diagnostics(c)}") from None

    for rt in c.runtimes.values():
        link = rt.cni_bin_dir / "podwire"
        assert link.is_symlink() and os.readlink(link).startswith("podwire-"), rt.node.name
        conflist = json.loads((rt.cni_conf_dir / "10-podwire.conflist").read_text())
        assert conflist["plugins"][0]["type"] == "podwire"

    # two pods, one per node, through the plugin the init container installed
    names = [n.name for n in c.nodes]
    for i, node in enumerate(names):
        kubectl(c, "run", f"p{i}", "--image", e2e_images.BUSYBOX, "--restart=Never",
                "--overrides", json.dumps({"spec": {"nodeName": node}}), "--command", "--", "sleep", "3600")
    try:
        kubectl(c, "wait", "--for=condition=Ready", "pod/p0", "pod/p1", "--timeout=120s", timeout=140)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{kubectl(c, 'describe', 'pods', check=False).stdout[-4000:]}") from None
    ips = {p["metadata"]["name"]: p["status"]["podIP"]
           for p in json.loads(kubectl(c, "get", "pods", "-o", "json").stdout)["items"]}
    assert all(ip.startswith("10.244.") for ip in ips.values()), ips
    deadline = time.monotonic() + 30
    while True:
        r = kubectl(c, "exec", "p0", "--", "ping", "-c", "1", "-W", "2", ips["p1"], check=False)
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{diagnostics(c)}"
