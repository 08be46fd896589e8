"""The daemon against the real Kubernetes API server of the e2e harness (`e2e/`).

A routed cluster of three registered Nodes (node1 and node3 share a subnet, node2 is behind the
router; podCIDRs from the real controller-manager); one `python3 -m node_daemon` per node
namespace, each with its own client certificate bound only to the daemon's ClusterRole
(RBAC_RULES: what the DaemonSet's manifest must grant). Pods are namespaces behind a bridge in
each node, as the CNI plugin would make them.

The cluster is this module's own (a distinct name from e2e's session cluster, which may be up
in the same pytest session) and is torn down after the module.
"""

import ipaddress
import json
import os
import secrets
import subprocess
import time

import pytest

from e2e import cluster as cluster_mod
from e2e.netbed import eventually, nsexec, sh
from tests.integration.daemon_cluster_helpers import (
    core,
    daemon_cluster,
    healthy,
    kill_leftovers,
    ping,
    pod_in,
    start_daemons,
    stop_daemons,
)

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]


@pytest.fixture(scope="module")
def cluster():
    with daemon_cluster(f"d{os.getpid() % 100000}", "routed", 3) as c:
        yield c


def test_daemons_program_the_cluster_from_the_real_api(cluster, tmp_path):
    tag = secrets.token_hex(2)
    n1, n2, n3 = cluster.nodes
    assert n1.plan.subnet == n3.plan.subnet != n2.plan.subnet
    pods, procs = {}, {}
    api = core(cluster)
    try:
        for n in (n1, n2, n3):
            pods[n.name] = pod_in(n, tag)
        procs = start_daemons(cluster, tmp_path)

        def condition_ok(name):
            node = api.read_node(name)
            return any(c.type == "NetworkUnavailable" and c.status == "False" and c.reason == "PodwireRoutesCreated"
                       for c in node.status.conditions or [])

        for n in (n1, n2, n3):
            eventually(lambda: condition_ok(n.name), what=f"{n.name} NetworkUnavailable=False")
            mac = api.read_node(n.name).metadata.annotations.get("podwire.io/vtep-mac")
            assert mac and len(mac) == 17
        routes1 = lambda: sh("ip", "-n", n1.netns, "route", "show", "proto", "212").stdout  # noqa: E731
        # a peer's route appears once its daemon published its VTEP MAC (a watch event away)
        eventually(lambda: f"{n3.pod_cidr} via {n3.ip} dev eth0" in routes1(), what="direct route")
        eventually(lambda: f"{n2.pod_cidr} via {n2.pod_cidr.network_address} dev podwire.vxlan" in routes1(),
                   what="overlay route")
        for a in (n1, n2, n3):
            for b in (n1, n2, n3):
                if a is not b:
                    assert eventually(lambda: ping(pods[a.name][0], pods[b.name][1]),
                                      what=f"pod on {a.name} -> pod on {b.name}")
        conf = json.loads((tmp_path / "node1" / "10-podwire.conflist").read_text())
        assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": str(n1.pod_cidr)}]]
        assert conf["plugins"][0]["mtu"] == 1450  # node1 needs the overlay for node2

        # Node node2 deleted from the API: node1 and node3 drop its route at once (watch event)
        saved = api.read_node(n2.name)
        api.delete_node(n2.name)
        eventually(lambda: str(n2.pod_cidr) not in routes1(), what="route to the deleted node removed")
        # ... and it comes back (re-registered, like a kubelet would): a podCIDR again, routes again
        cluster_mod.register_node(cluster.api_client(), n2)
        new_cidr = ipaddress.ip_network(eventually(lambda: api.read_node(n2.name).spec.pod_cidr, what="podCIDR"))
        eventually(lambda: f"{new_cidr} via" in routes1(), what="route to the re-registered node")
        n2.pod_cidr = new_cidr  # the harness' view, for the next test
        assert saved.metadata.uid != api.read_node(n2.name).metadata.uid

        metrics = sh(*nsexec(n1.netns, "curl", "-s", "127.0.0.1:19465/metrics")).stdout
        assert 'podwire_peers{transport="direct"} 1.0' in metrics
        stop_daemons(procs, tmp_path)
    finally:
        kill_leftovers(procs)
        for ns, _ in pods.values():
            sh("ip", "netns", "del", ns, check=False)


def test_proxy_hook_serves_a_cluster_ip_across_nodes(cluster, tmp_path):
    """`--proxy`: the daemon feeds the proxy's Proxier from its own watches (proxy_hook)."""
    from kubernetes import client

    tag = secrets.token_hex(2)
    n1, n2, _ = cluster.nodes
    api = core(cluster)
    procs, server = {}, None
    (client_ns, _), (server_ns, server_ip) = pod_in(n1, tag, 20), pod_in(n2, tag, 20)
    try:
        server = subprocess.Popen(nsexec(server_ns, "socat", "TCP-LISTEN:8080,fork,reuseaddr",
                                         "SYSTEM:echo hello-from-$SOCAT_SOCKADDR"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        svc = api.create_namespaced_service("default", {
            "metadata": {"name": f"echo-{tag}"},
            "spec": {"ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
        client.DiscoveryV1Api(cluster.api_client()).create_namespaced_endpoint_slice("default", {
            "metadata": {"name": f"echo-{tag}-1", "labels": {"kubernetes.io/service-name": f"echo-{tag}"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [server_ip], "conditions": {"ready": True}}],
            "ports": [{"port": 8080, "protocol": "TCP", "name": ""}]})
        procs = start_daemons(cluster, tmp_path, "--proxy")
        vip = svc.spec.cluster_ip

        def answer():
            return sh(*nsexec(client_ns, "socat", "-T", "2", "-", f"TCP:{vip}:80,connect-timeout=2"),
                      check=False).stdout.strip()

        try:
            got = eventually(answer, what=f"ClusterIP {vip} from a pod on node1")
        except AssertionError:
            raise AssertionError(sh(*nsexec(n1.netns, "nft", "list", "ruleset")).stdout[-3000:]) from None
        assert got == f"hello-from-{server_ip}"
        stop_daemons(procs, tmp_path)
    finally:
        if server:
            server.kill()
            server.wait()
        kill_leftovers(procs)
        for ns in (client_ns, server_ns):
            sh("ip", "netns", "del", ns, check=False)


def test_api_partition_keeps_the_last_good_state_and_catches_up(cluster, tmp_path):
    """The control plane's link goes down: routes stay, pods keep talking; a Node deleted
    meanwhile is cleaned up once the API is reachable again. (Deletes node3: runs last.)"""
    tag = secrets.token_hex(2)
    n1, n2, n3 = cluster.nodes
    api = core(cluster)
    cp = cluster.control_plane.host.netns
    (p1, _), (_, ip2) = pod_in(n1, tag, 30), pod_in(n2, tag, 30)
    procs = start_daemons(cluster, tmp_path)
    routes1 = lambda: sh("ip", "-n", n1.netns, "route", "show", "proto", "212").stdout  # noqa: E731
    try:
        # routes from the earlier tests are still in the kernel: wait for this daemon's own sync
        eventually(lambda: healthy(n1), what="node1 daemon synced")
        assert str(n3.pod_cidr) in routes1() and str(n2.pod_cidr) in routes1()
        sh("ip", "-n", cp, "link", "set", "eth0", "down")
        try:
            api.delete_node(n3.name)  # through the harness' forwarder: only the nodes are cut off
            time.sleep(12)  # more than a resync interval
            assert str(n3.pod_cidr) in routes1() and ping(p1, ip2)
        finally:
            sh("ip", "-n", cp, "link", "set", "eth0", "up")
        eventually(lambda: str(n3.pod_cidr) not in routes1(), timeout=120, what="catch-up after the partition")
        assert ping(p1, ip2)
        stop_daemons(procs, tmp_path)
    finally:
        kill_leftovers(procs)
        for ns in (p1, f"pwd-{tag}-{n2.name}"):
            sh("ip", "netns", "del", ns, check=False)
