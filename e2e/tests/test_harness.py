"""Tests of the e2e harness itself: a real control plane, real namespaces, real CNI calls."""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from e2e import build
from e2e import netns as ns
from e2e.cluster import Cluster, base_dir
from e2e.pods import Pod, reference_bridge
from e2e.topology import Topology, plan

pytestmark = [pytest.mark.cluster, pytest.mark.root]

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
CLUSTER_CIDR = ipaddress.ip_network("10.244.0.0/16")
REPO = Path(__file__).resolve().parents[2]


def test_readyz(cluster):
    assert cluster.control_plane.get("/readyz") == (200, "ok")


def test_kubectl_version_shows_the_pinned_version(cluster):
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == build.KUBERNETES_VERSION
    assert versions["clientVersion"]["gitVersion"] == build.KUBERNETES_VERSION


def test_registered_nodes_get_distinct_pod_cidrs(cluster, kube_api):
    from kubernetes import client

    nodes = {n.metadata.name: n for n in client.CoreV1Api(kube_api).list_node().items}
    assert set(nodes) >= {"node1", "node2"}
    cidrs = [ipaddress.ip_network(nodes[n.name].spec.pod_cidr) for n in cluster.nodes]
    assert len(set(cidrs)) == len(cidrs)
    assert all(c.subnet_of(CLUSTER_CIDR) and c.prefixlen == 24 for c in cidrs)
    for node in cluster.nodes:
        internal = [a.address for a in nodes[node.name].status.addresses if a.type == "InternalIP"]
        assert internal == [str(node.ip)]
        assert node.pod_cidr == ipaddress.ip_network(nodes[node.name].spec.pod_cidr)


def test_service_gets_a_cluster_ip_from_the_range(cluster, kube_api, kube_namespace):
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    svc = core.create_namespaced_service(kube_namespace, {
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    })
    assert ipaddress.ip_address(svc.spec.cluster_ip) in SERVICE_CIDR
    # The `kubernetes` Service: first IP of the range, endpoint = the cp host's underlay address.
    kubernetes = core.read_namespaced_service("kubernetes", "default")
    assert kubernetes.spec.cluster_ip == str(SERVICE_CIDR[1])
    slice_ = client.DiscoveryV1Api(kube_api).read_namespaced_endpoint_slice("kubernetes", "default")
    assert slice_.endpoints[0].addresses == [str(cluster.topology.cp.ip)]


def test_endpointslice_arrives_through_a_python_client_watch(kube_api, kube_namespace):
    from kubernetes import client, watch

    disc = client.DiscoveryV1Api(kube_api)
    rv = disc.list_namespaced_endpoint_slice(kube_namespace).metadata.resource_version
    events: queue.Queue = queue.Queue()
    w = watch.Watch()

    def consume():
        try:
            for ev in w.stream(disc.list_namespaced_endpoint_slice, namespace=kube_namespace,
                               resource_version=rv, timeout_seconds=30, _request_timeout=40):
                events.put(ev)
        except Exception as exc:  # noqa: BLE001 - surfaced through the queue
            events.put(exc)
        events.put(None)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    disc.create_namespaced_endpoint_slice(kube_namespace, {
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.7"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
    try:
        ev = events.get(timeout=20)
        assert not isinstance(ev, Exception), ev
        assert ev is not None, "watch ended without an event"
        assert ev["type"] == "ADDED"
        assert isinstance(ev["object"], client.V1EndpointSlice)
        assert ev["object"].metadata.name == "web-abc"
        assert ev["object"].endpoints[0].addresses == ["10.244.1.7"]
        assert ev["object"].ports[0].port == 8080
    finally:
        w.stop()


def test_nodes_reach_the_api_server_on_the_underlay(cluster):
    url = f"{cluster.control_plane.internal_server}/readyz"
    ca = cluster.control_plane.pki.path("ca.crt")
    for node in cluster.nodes:
        out = node.run(["curl", "-sS", "--max-time", "5", "--cacert", ca, url]).stdout
        assert out == "ok", node.name


def test_root_namespace_gets_no_links_or_routes(cluster):
    links = ns.run(["ip", "-o", "link", "show"]).stdout
    assert not any(name in links for name in (": v-node1", ": br0", ": cni0", ": eth0@")), links
    routes = ns.run(["ip", "route", "show"]).stdout
    assert "172.30." not in routes and "10.244." not in routes, routes


def test_pod_via_reference_bridge_plugin_answers_ping_from_its_node(cluster):
    node = cluster.node("node1")
    plugin = reference_bridge(node)
    with Pod(node, plugin, "ping") as pod:
        ip = pod.ip
        assert ip in node.pod_cidr
        assert node.ping(ip), f"{ip} does not answer {node.name}"
        assert str(ip) in pod.run(["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
        pod.check()
        ipam_file = node.dir / "cni-ipam" / plugin.config["name"] / str(ip)
        assert ipam_file.exists()
    assert not ns.netns_exists(pod.netns)
    assert not ipam_file.exists()  # DEL gave the address back to host-local
    assert not node.ping(ip, timeout=1)


def test_routed_shape_needs_an_overlay_for_pod_traffic(tmp_path):
    """Nodes on different subnets talk through the router, but cannot route pod CIDRs directly."""
    with Topology(plan("pwr", "routed", 2), tmp_path / "topo") as topo:
        node1, node2 = topo.node("node1"), topo.node("node2")
        assert node1.ip not in ipaddress.ip_network(f"{node2.ip}/24", strict=False)
        assert node1.ping(node2.ip) and node2.ping(topo.cp.ip) and topo.outside.ping(node1.ip)
        direct = node2.run(["ip", "route", "add", "10.244.0.0/24", "via", node1.ip], check=False)
        assert direct.returncode != 0  # next hop not on-link: pod traffic needs an overlay
        assert "10.244." not in topo.hosts["cp"].run(["ip", "route"]).stdout
    assert ns.list_netns("pwe-pwr-") == []


@pytest.mark.parametrize("shape", ["l2", "routed"])
@pytest.mark.parametrize("family", ["ipv6", "dual"])
def test_underlay_carries_each_family_of_the_plan(tmp_path, shape, family):
    """Every host reaches every other in each family of the plan: on one bridge, or through the router,
    which forwards IPv6 as well; an ipv6-only underlay has no IPv4 at all."""
    name = f"pwf{shape[0]}{family[0]}"
    with Topology(plan(name, shape, 2, family), tmp_path / "topo") as topo:
        node1, node2, outside = topo.node("node1"), topo.node("node2"), topo.outside
        assert [a.version for a in node1.ips] == ([6] if family == "ipv6" else [4, 6])
        for a, b in ((node1, node2), (node2, topo.cp), (outside, node1), (node1, outside)):
            for ip in b.ips:
                assert a.ping(ip), f"{a.name} -> {b.name} {ip}"
        addrs = node1.run(["ip", "-j", "addr", "show", "dev", "eth0"]).stdout
        v4 = [i for link in json.loads(addrs) for i in link["addr_info"] if i["family"] == "inet"]
        assert bool(v4) == (family == "dual")
        if shape == "routed":
            assert node1.ips[-1] not in ipaddress.ip_network(f"{node2.ips[-1]}/64", strict=False)
    assert ns.list_netns(f"pwe-{name}-") == []


@pytest.mark.parametrize("family", ["ipv6", "dual"])
def test_control_plane_in_each_family(k8s_bin, family):
    """`Cluster(ip_family=...)`: Service and pod ranges of the family (pod /64s for IPv6), Nodes with an
    InternalIP per family, a dual-stack Service with a ClusterIP of each, the `kubernetes` Service of the
    primary family, and the API server answering nodes over IPv6."""
    from kubernetes import client

    with Cluster(f"f{family[0]}{os.getpid() % 10000}", "l2", 2, bin_dir=k8s_bin, ip_family=family,
                 owner=ns.this_process("pytest")) as c:
        versions = [6] if family == "ipv6" else [4, 6]
        for node in c.nodes:
            assert [n.version for n in node.pod_cidrs] == versions
            assert [n.prefixlen for n in node.pod_cidrs] == [24 if v == 4 else 64 for v in versions]
        api = c.api_client()
        try:
            core = client.CoreV1Api(api)
            node = core.read_node("node1")
            assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == \
                [str(ip) for ip in c.node("node1").ips]
            kubernetes = core.read_namespaced_service("kubernetes", "default")
            assert ipaddress.ip_address(kubernetes.spec.cluster_ip).version == versions[0]
            svc = core.create_namespaced_service("default", {
                "metadata": {"name": "both"},
                "spec": {"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}})
            assert [ipaddress.ip_address(ip).version for ip in svc.spec.cluster_ips] == versions
            ranges = {ipaddress.ip_network(cidr) for sc in client.NetworkingV1Api(api).list_service_cidr().items
                      for cidr in sc.spec.cidrs}
            assert ranges == set(c.control_plane.config.service_cidrs)
        finally:
            api.close()
        ca = c.control_plane.pki.path("ca.crt")
        cp6 = next(ip for ip in c.topology.cp.ips if ip.version == 6)
        for node in c.nodes:
            out = node.run(["curl", "-sS", "--max-time", "5", "--cacert", ca, f"https://[{cp6}]:6443/readyz"]).stdout
            assert out == "ok", node.name


def _mounts_mentioning(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if text in line]


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in proc.joinpath("cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_cli_up_status_down_leaves_nothing_behind(k8s_bin):
    """A routed cluster through the CLI (up and down in other processes), a leaked pod."""
    name = f"x{os.getpid() % 100000}"  # not t<pid> (session) nor d<pid> (tests/integration)
    cli = [sys.executable, "-m", "e2e.cluster"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    up = subprocess.run([*cli, "up", "--name", name, "--shape", "routed", "--nodes", "2",
                         "--owner-pid", str(os.getpid())],  # swept by the next session if we die
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        status = subprocess.run([*cli, "status", "--name", name], cwd=REPO, env=env, capture_output=True, text=True)
        assert status.returncode == 0 and json.loads(status.stdout)["readyz"] is True

        cluster = Cluster.load(name)
        node2 = cluster.node("node2")  # on the second subnet: reaches the cp through the router
        ca = cluster.control_plane.pki.path("ca.crt")
        assert node2.run(["curl", "-sS", "--max-time", "5", "--cacert", ca,
                          f"{cluster.control_plane.internal_server}/readyz"]).stdout == "ok"
        leaked = Pod(node2, reference_bridge(node2), "leak")
        leaked.add()  # never deleted: the ledger must still remove its namespace

        netns_before = ns.list_netns(f"pwe-{name}-")
        assert f"pwe-{name}-node2-leak" in netns_before and f"pwe-{name}-router" in netns_before
        procs = [p for p in cluster.control_plane.procs.values()]
        assert all(p.alive() for p in procs)
        port = cluster.control_plane.port
    finally:
        down = subprocess.run([*cli, "down", "--name", name], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr

    assert ns.list_netns(f"pwe-{name}-") == []
    assert not any(p.alive() for p in procs)
    assert _pids_mentioning(str(base_dir() / name)) == []
    assert _mounts_mentioning(f"pwe-{name}-") == []
    assert not (base_dir() / name).exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
