"""The harness as faithful as kind's cluster: kubeadm's CoreDNS (its ConfigMap reloaded on edit,
`forward` to the harness's upstream resolver), nodes in zones, and a pod whose dnsConfig names a DNS
server pod (upstream's "configurable pod resolv.conf": the server runs `/coredns` from agnhost).

One l2 3-node cluster of full nodes with podwire installed as a user does; agnhost imported.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from e2e import coredns, images
from e2e.podwire_install import build_image, install

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.slow]

NS = "dnstest"


@pytest.fixture(scope="module")
def c():
    from e2e.cluster import Cluster

    image = build_image()
    agnhost = images.e2e_test_images((images.AGNHOST,))[images.AGNHOST]
    with Cluster(f"dn{os.getpid() % 100000}", "l2", 3, full_nodes=True) as cluster:
        cluster.import_image(agnhost)
        install(cluster, image)
        cluster.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=300s", timeout=320)
        cluster.kubectl("create", "namespace", NS)
        yield cluster


def kubectl(c, *args, **kw) -> str:
    return c.kubectl(*args, **kw).stdout


def agnhost_pod(name: str, node: str, *, command=None, args=None, dns_config=None, volumes=None,
                mounts=None) -> dict:
    container: dict = {"name": "c", "image": images.AGNHOST, "imagePullPolicy": "IfNotPresent"}
    if command:
        container["command"] = command
    container["args"] = args or ["pause"]
    if mounts:
        container["volumeMounts"] = mounts
    spec: dict = {"nodeName": node, "containers": [container], "terminationGracePeriodSeconds": 0}
    if dns_config:
        spec["dnsPolicy"], spec["dnsConfig"] = "None", dns_config
    if volumes:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}, "spec": spec}


def apply(c, *objs: dict) -> None:
    kubectl(c, "apply", "-f", "-", input="\n".join(json.dumps(o) for o in objs))


def wait_ready(c, *names: str) -> None:
    kubectl(c, "-n", NS, "wait", "--for=condition=Ready", *(f"pod/{n}" for n in names), "--timeout=120s",
            timeout=140)


def dig(c, pod: str, *args: str) -> str:
    r = c.kubectl("-n", NS, "exec", pod, "--", "dig", "+time=2", "+tries=1", *args, check=False)
    return r.stdout


def eventually(fn, timeout: float, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        out = fn()
        if out or time.monotonic() > deadline:
            return out
        time.sleep(every)


def test_nodes_carry_zone_and_region_set_by_their_kubelet(c):
    nodes = json.loads(kubectl(c, "get", "nodes", "-o", "json"))["items"]
    zones = {n["metadata"]["name"]: n["metadata"]["labels"].get("topology.kubernetes.io/zone") for n in nodes}
    assert zones == {"node1": "zone-a", "node2": "zone-b", "node3": "zone-c"}
    assert {n["metadata"]["labels"].get("topology.kubernetes.io/region") for n in nodes} == {"region-1"}


def test_cluster_dns_forwards_to_the_harness_upstream(c):
    apply(c, agnhost_pod("client", "node2"))
    wait_ready(c, "client")
    # 8.8.8.8's PTR is not in cluster.local: only `forward . /etc/resolv.conf` can answer it
    assert eventually(lambda: dig(c, "client", "+short", "-x", "8.8.8.8").strip() == "dns.google.", 30)
    assert "status: NXDOMAIN" in dig(c, "client", "no-such-name.example.")
    assert dig(c, "client", "+short", "kubernetes.default.svc.cluster.local").strip() == "10.96.0.1"


def test_an_edit_of_the_coredns_configmap_is_reloaded(c):
    apply(c, agnhost_pod("client", "node2"))
    wait_ready(c, "client")
    edited = coredns.COREFILE.replace("    loadbalance\n", "    loadbalance\n    template IN A reload.test {\n"
                                      "        answer \"{{ .Name }} 60 IN A 192.0.2.77\"\n    }\n")
    assert edited != coredns.COREFILE
    patch = json.dumps({"data": {"Corefile": edited}})
    kubectl(c, "-n", "kube-system", "patch", "configmap", "coredns", "--type=merge", "-p", patch)
    try:
        # kubelet's ConfigMap volume sync (up to ~1 min) + reload's check (30 s, jittered)
        assert eventually(lambda: dig(c, "client", "+short", "reload.test").strip() == "192.0.2.77", 150, 5)
    finally:
        coredns.deploy(c)  # back to kubeadm's Corefile
    assert eventually(lambda: dig(c, "client", "+short", "reload.test").strip() == "", 150, 5)  # restored


@pytest.mark.parametrize("client_node", ["node1", "node2"])
def test_a_pod_whose_dns_config_names_a_server_pod_gets_answers(c, client_node):
    """Upstream's "should support configurable pod resolv.conf": the server is agnhost's /coredns
    with a hosts block, the client's only nameserver is that pod's IP (same node, other node)."""
    corefile = ". {\n    hosts {\n        1.1.1.1 notexistname.resolv.conf.local\n    }\n    log\n}\n"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dns-server", "namespace": NS},
          "data": {"Corefile": corefile}}
    server = agnhost_pod("dns-server", "node1", command=["/coredns"], args=["-conf", "/etc/coredns/Corefile"],
                         volumes=[{"name": "conf", "configMap": {"name": "dns-server"}}],
                         mounts=[{"name": "conf", "mountPath": "/etc/coredns", "readOnly": True}])
    server["spec"]["dnsPolicy"] = "Default"
    apply(c, cm, server)
    wait_ready(c, "dns-server")
    server_ip = json.loads(kubectl(c, "-n", NS, "get", "pod", "dns-server", "-o", "json"))["status"]["podIP"]
    name = f"client-{client_node}"
    apply(c, agnhost_pod(name, client_node, dns_config={
        "nameservers": [server_ip], "searches": ["resolv.conf.local"],
        "options": [{"name": "ndots", "value": "2"}]}))
    wait_ready(c, name)
    assert "ndots:2" in kubectl(c, "-n", NS, "exec", name, "--", "cat", "/etc/resolv.conf")
    assert eventually(lambda: dig(c, name, "+short", "+search", "notexistname").strip() == "1.1.1.1", 30)
