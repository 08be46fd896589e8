"""manifests/podwire.yaml against the real API server of the e2e harness, and the image running as
the DaemonSet would run it, with the DaemonSet's service account and nothing more.

- `kubectl apply --validate=strict` (server-side field validation) and `--dry-run=server`;
  the DaemonSet controller then creates one pod per Node, so the pod template passed admission
  (Pod Security, system-node-critical outside kube-system);
- `kubectl auth can-i` as the service account: what the daemon needs, and not more;
- the image in a private containerd inside node1's network namespace, `ctr run --net-host` as the
  DaemonSet's container: unprivileged with NET_ADMIN and NET_RAW, the in-cluster service account
  files and KUBERNETES_SERVICE_HOST of the podwire-apiserver ConfigMap, the ConfigMap's config.json.
  It must annotate its Node, set NetworkUnavailable=False, write the CNI config and program the
  proxy's table: the least-privilege ClusterRole is enough for the real daemon, frozen.

There are no kubelets here (the harness registers the Nodes), so the DaemonSet's pods never run;
a private cluster (not e2e's session cluster) is made and torn down by this module.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess

import pytest
import yaml

from e2e.netbed import eventually
from tests.integration.test_image import IMAGE, frozen_bundles, image_tar, running_containerd  # noqa: F401

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.slow, pytest.mark.frozen,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = os.path.join(ROOT, "manifests", "podwire.yaml")
SA = "system:serviceaccount:podwire:podwire-daemon"


@pytest.fixture(scope="module")
def cluster():
    from e2e import build
    from e2e import cluster as cluster_mod

    build.ensure_built()  # nothing when warm
    with cluster_mod.Cluster(f"m{os.getpid() % 100000}", "l2", 2) as c:
        yield c


@pytest.fixture(scope="module")
def applied(cluster):
    r = cluster.kubectl("apply", "--validate=strict", "-f", MANIFEST, check=False)
    assert r.returncode == 0, r.stderr
    return cluster


def test_manifests_pass_server_side_validation_and_admission(applied):
    c = applied
    r = c.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", MANIFEST, check=False)
    assert r.returncode == 0, r.stderr
    # a misspelt field is refused by the server, so the two commands above can fail
    bad = MANIFEST_TEXT().replace("hostNetwork: true", "hostNetwrk: true")
    r = c.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=bad, check=False)
    assert r.returncode != 0 and "hostNetwrk" in r.stderr

    def pods():
        out = c.kubectl("-n", "podwire", "get", "pods", "-o", "json").stdout
        return [p for p in json.loads(out)["items"]] if out else []
    got = eventually(lambda: len(pods()) == len(c.nodes) and pods(), timeout=60, what="one DaemonSet pod per Node")
    assert {p["spec"]["priority"] for p in got} == {2000001000}  # system-node-critical was admitted
    assert {p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchFields"][0]["values"][0] for p in got} == {n.name for n in c.nodes}


def MANIFEST_TEXT() -> str:  # noqa: N802
    with open(MANIFEST) as f:
        return f.read()


@pytest.mark.parametrize("verb,resource,allowed", [
    ("list", "nodes", True), ("watch", "nodes", True), ("patch", "nodes", True),
    ("patch", "nodes/status", True), ("list", "services", True), ("watch", "services", True),
    ("list", "endpointslices.discovery.k8s.io", True), ("watch", "endpointslices.discovery.k8s.io", True),
    ("get", "nodes", False), ("delete", "nodes", False), ("update", "nodes", False),
    ("list", "pods", True), ("watch", "pods", True), ("list", "namespaces", True), ("watch", "namespaces", True),
    ("list", "networkpolicies.networking.k8s.io", True), ("watch", "networkpolicies.networking.k8s.io", True),
    ("update", "nodes/status", False), ("get", "secrets", False), ("get", "pods", False),
    ("patch", "pods", False), ("get", "namespaces", False), ("create", "networkpolicies.networking.k8s.io", False),
    # LoadBalancer: the cleanup finalizer, the status, Events, the pools; Leases in its own namespace only
    ("create", "events", True), ("patch", "services", True), ("update", "services/status", True),
    ("patch", "services/status", False), ("delete", "services", False), ("update", "services", False),
    ("list", "loadbalancerpools.podwire.io", True), ("watch", "loadbalancerpools.podwire.io", True),
    ("update", "loadbalancerpools.podwire.io/status", True), ("create", "loadbalancerpools.podwire.io", False),
    ("update", "loadbalancerpools.podwire.io", False),
    ("list", "servicecidrs.networking.k8s.io", True), ("watch", "servicecidrs.networking.k8s.io", True),
    ("create", "servicecidrs.networking.k8s.io", False),
    ("podwire:create", "leases.coordination.k8s.io", True), ("podwire:update", "leases.coordination.k8s.io", True),
    ("podwire:get", "leases.coordination.k8s.io", True), ("podwire:delete", "leases.coordination.k8s.io", False),
    ("kube-system:create", "leases.coordination.k8s.io", False),
    ("kube-system:update", "leases.coordination.k8s.io", False),
])
def test_service_account_may_do_exactly_what_the_daemon_does(applied, verb, resource, allowed):
    namespace, _, verb = verb.rpartition(":")  # "ns:verb": in that namespace only
    argv = ["auth", "can-i", verb] + (["-n", namespace] if namespace else [])
    if "/" in resource:  # `can-i patch nodes/status` would mean the Node named "status"
        resource, sub = resource.split("/")
        argv += [resource, f"--subresource={sub}"]
    else:
        argv += [resource]
    r = applied.kubectl(*argv, f"--as={SA}", check=False)
    assert r.stdout.strip() == ("yes" if allowed else "no"), (verb, resource, r.stdout, r.stderr)


def test_image_runs_as_the_daemonset_would_with_only_the_service_accounts_rights(applied, image_tar, tmp_path):  # noqa: F811
    c = applied
    node = c.node("node1")
    # what the kubelet would give the container: the service account files and the env
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    token = c.kubectl("-n", "podwire", "create", "token", "podwire-daemon", "--duration=1h").stdout.strip()
    (sa_dir / "token").write_text(token)
    (sa_dir / "ca.crt").write_bytes(c.control_plane.pki.path("ca.crt").read_bytes())
    (sa_dir / "namespace").write_text("podwire")
    host, port = str(c.topology.cp.ip), 6443
    c.kubectl("-n", "podwire", "create", "configmap", "podwire-apiserver", f"--from-literal=host={host}",
              f"--from-literal=port={port}")
    objs = {d["kind"]: d for d in yaml.safe_load_all(MANIFEST_TEXT()) if d}
    conf_dir = tmp_path / "podwire-config"
    conf_dir.mkdir()
    (conf_dir / "config.json").write_text(objs["ConfigMap"]["data"]["config.json"])
    cni_dir = tmp_path / "net.d"
    cni_dir.mkdir()
    daemon = next(x for x in objs["DaemonSet"]["spec"]["template"]["spec"]["containers"]
                  if x["name"] == "podwire-daemon")
    caps = [f"CAP_{cap}" for cap in daemon["securityContext"]["capabilities"]["add"]]
    log = tmp_path / "daemon.log"

    with running_containerd(node.netns, tmp_path / "ctrd", image_tar) as ctr:
        opts = ["--net-host", "--log-uri", f"file://{log}",
                "--env", f"NODE_NAME={node.name}", "--env", f"KUBERNETES_SERVICE_HOST={host}",
                "--env", f"KUBERNETES_SERVICE_PORT={port}",
                "--mount", f"type=bind,src={sa_dir},dst=/var/run/secrets/kubernetes.io/serviceaccount,options=rbind:ro",
                "--mount", f"type=bind,src={conf_dir},dst=/etc/podwire,options=rbind:ro",
                "--mount", f"type=bind,src={cni_dir},dst=/etc/cni/net.d,options=rbind:rw"]
        for cap in caps:
            opts += ["--cap-add", cap]
        ctr("run", "-d", "--snapshotter", "native", *opts, IMAGE, "pwm-daemon-" + secrets.token_hex(3),
            *daemon["command"])

        def node_obj():
            return json.loads(c.kubectl("get", "node", node.name, "-o", "json").stdout)

        def logs():
            return log.read_text() if log.exists() else ""

        try:
            eventually(lambda: (node_obj()["metadata"].get("annotations") or {}).get("podwire.io/vtep-mac"),
                       timeout=60, what="the VTEP annotation (patch nodes)")
            eventually(lambda: any(x["type"] == "NetworkUnavailable" and x["status"] == "False"
                                   for x in node_obj()["status"].get("conditions") or []),
                       timeout=60, what="NetworkUnavailable=False (patch nodes/status)")
            conflist = json.loads(eventually(lambda: (cni_dir / "10-podwire.conflist").exists()
                                             and (cni_dir / "10-podwire.conflist").read_text(),
                                             timeout=60, what="conflist"))
            assert conflist["plugins"][0]["ipam"]["ranges"] == [[{"subnet": str(node.pod_cidr)}]]
            # the proxy (services and endpointslices watches) programmed the kubernetes Service
            eventually(lambda: "10.96.0.1" in subprocess.run(
                ["nsenter", f"--net=/run/netns/{node.netns}", "nft", "list", "table", "ip", "podwire-proxy"],
                capture_output=True, text=True).stdout,
                timeout=60, what="the proxy's table with the kubernetes Service")
            health = subprocess.run(["nsenter", f"--net=/run/netns/{node.netns}", "curl", "-s", "-w", " %{http_code}",
                                     "127.0.0.1:9465/healthz"], capture_output=True, text=True).stdout
            assert health.endswith(" 200"), health
        except AssertionError:
            raise AssertionError(logs()[-4000:]) from None
        text = logs()
        assert "Forbidden" not in text and " 403" not in text and "Traceback" not in text, text[-4000:]
