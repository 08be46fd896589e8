"""Installing podwire onto a full harness cluster the way a user does: load the image, kubectl apply.

Mirrors `kind load image-archive` + `kubectl apply -f manifests/`: the image tarball (packaging/image.py)
goes into every node's containerd, the `podwire-apiserver` ConfigMap tells the daemon where the API
server really is (there is no kube-proxy to make the `kubernetes` Service work first), then the
manifest. Returns once the DaemonSet is rolled out and every node is Ready.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "manifests" / "podwire.yaml"
IMAGE = "docker.io/podwire/podwire:dev"  # the name manifests/podwire.yaml asks for
IMAGE_TAR = ROOT / "dist" / "podwire-image.tar"


class InstallError(RuntimeError):
    pass


def build_image(out: Path = IMAGE_TAR) -> Path:
    """What `make image` does, into `out` (a run of its own may not want to share dist/'s tarball):
    frozen plugin + daemon (make skips what is up to date), then the OCI tarball."""
    for argv in (["make", "-s", "dist", "dist-daemon"],
                 [sys.executable, "packaging/image.py", "--out", str(out), "--name", IMAGE]):
        r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            raise InstallError(f"{' '.join(argv)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return out


def _kubectl(cluster, *args, timeout=120):
    r = cluster.kubectl(*args, check=False, timeout=timeout)
    if r.returncode != 0:
        raise InstallError(f"kubectl {' '.join(args)}:\n{r.stdout}\n{r.stderr}")
    return r


def diagnostics(cluster) -> str:
    out = [cluster.kubectl("get", "nodes", "-o", "wide", check=False).stdout,
           cluster.kubectl("-n", "podwire", "get", "pods", "-o", "wide", check=False).stdout]
    pods = json.loads(cluster.kubectl("-n", "podwire", "get", "pods", "-o", "json", check=False).stdout or "{}")
    for pod in pods.get("items", []):
        for container in ("install-cni", "enable-forwarding", "podwire-daemon"):
            logs = cluster.kubectl("-n", "podwire", "logs", pod["metadata"]["name"], "-c", container, check=False)
            out.append(f"== {pod['metadata']['name']} {container}\n{logs.stdout[-1500:]}")
    return "\n".join(out)


def manifest_for(cluster_cidrs) -> str:
    """manifests/podwire.yaml with its config's `cluster_cidrs` set to the cluster's pod ranges, as a
    user of a cluster with other ranges (IPv6, dual-stack) edits it. The file as it is for the
    default (kind's 10.244.0.0/16). Pure."""
    import yaml

    text = MANIFEST.read_text()
    docs = list(yaml.safe_load_all(text))
    config = next(d for d in docs if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "podwire-config")
    settings = json.loads(config["data"]["config.json"])
    wanted = [str(c) for c in cluster_cidrs]
    if settings["cluster_cidrs"] == wanted:
        return text
    settings["cluster_cidrs"] = wanted
    config["data"]["config.json"] = json.dumps(settings, indent=2)
    return yaml.safe_dump_all(docs, sort_keys=False)


def install(cluster, image_tar: Path | None = None) -> None:
    image_tar = image_tar or build_image()
    cluster.import_image(image_tar)
    _kubectl(cluster, "create", "namespace", "podwire")
    _kubectl(cluster, "-n", "podwire", "create", "configmap", "podwire-apiserver",
             f"--from-literal=host={cluster.topology.cp.ip}", "--from-literal=port=6443")
    r = cluster.kubectl("apply", "-f", "-", check=False, timeout=120,
                        input=manifest_for(cluster.control_plane.config.cluster_cidrs))
    if r.returncode != 0:
        raise InstallError(f"kubectl apply -f manifests/podwire.yaml:\n{r.stdout}\n{r.stderr}")
    try:
        _kubectl(cluster, "-n", "podwire", "rollout", "status", "daemonset/podwire", "--timeout=180s", timeout=200)
        _kubectl(cluster, "wait", "--for=condition=Ready", "nodes", "--all", "--timeout=120s", timeout=140)
    except InstallError as e:
        raise InstallError(f"{e}\n{diagnostics(cluster)}") from None


if __name__ == "__main__":  # python3 -m e2e.podwire_install NAME: install onto a running `e2e.cluster up --full`
    from e2e.cluster import Cluster

    install(Cluster.load(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PODWIRE_CLUSTER", "dev")))
    print("podwire installed")
