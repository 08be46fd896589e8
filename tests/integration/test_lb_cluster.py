"""LoadBalancer addresses on the real harness (issue 14, items 1-2): pools, allocation, Leases,
ARP answers, failover.

    l2 cluster: node1 172.30.0.11, node2 172.30.0.12, the outside host 172.30.0.100, one bridge
    pool:       172.30.0.240/29 (usable .241-.246) as a LoadBalancerPool
    pods:       a server on node2 (a1), one on node1 (b1); EndpointSlices written as the
                EndpointSlice controller would (no kubelets here)

Every node runs `python3 -m node_daemon --proxy --loadbalancer` with its own identity and only
the RBAC the manifests grant. The outside host reaches the Service through the address podwire
assigned, by ARP alone (no route on the outside host); the answering node is the Lease holder.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import time

import pytest
import yaml

from e2e import build
from e2e import cluster as cluster_mod
from e2e.netbed import eventually, sh
from tests.integration.daemon_cluster_helpers import (
    PROXY_RBAC_RULES,
    RBAC_RULES,
    ROOT,
    grant_role,
    healthy,
    kill_leftovers,
    start_daemon,
    stop_daemons,
)
from tests.integration.test_proxy_cluster import PORT, Pod, client, slice_body

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

POOL = "172.30.0.240/29"
LEASE_SECONDS = 4
RESULTS: dict[str, float] = {}

# What the load balancer adds to the daemon's ClusterRole (manifests/podwire.yaml grants the same)
LB_RBAC_RULES = [
    {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["services/status"], "verbs": ["update"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["podwire.io"], "resources": ["loadbalancerpools"], "verbs": ["list", "watch"]},
    {"apiGroups": ["podwire.io"], "resources": ["loadbalancerpools/status"], "verbs": ["update"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["servicecidrs"], "verbs": ["list", "watch"]},
]
LEASE_RULES = [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                "verbs": ["get", "list", "watch", "create", "update"]}]


def _apply_crd(api) -> None:
    from kubernetes import client

    with open(os.path.join(ROOT, "manifests", "podwire.yaml")) as f:
        crd = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "CustomResourceDefinition")
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(crd)
    eventually(lambda: any(c.type == "Established" and c.status == "True"
                           for c in (ext.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions
                                     or [])), timeout=30, what="CRD established")


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    from kubernetes import client

    build.ensure_built()
    tmp = tmp_path_factory.mktemp("lb-cluster")
    c = cluster_mod.Cluster(f"l{os.getpid() % 100000}", "l2", 2)
    c.up()
    pods, procs = [], {}
    try:
        api = c.api_client()
        grant_role(c, "podwire-daemon", RBAC_RULES, "podwire:daemons")
        grant_role(c, "podwire-proxy", PROXY_RBAC_RULES, "podwire:daemons")
        grant_role(c, "podwire-lb", LB_RBAC_RULES, "podwire:daemons")
        core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        core.create_namespace({"metadata": {"name": "podwire"}})
        rbac.create_namespaced_role("podwire", {"metadata": {"name": "podwire-leases"}, "rules": LEASE_RULES})
        rbac.create_namespaced_role_binding("podwire", {
            "metadata": {"name": "podwire-leases"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "podwire-leases"},
            "subjects": [{"kind": "Group", "name": "podwire:daemons", "apiGroup": "rbac.authorization.k8s.io"}]})
        _apply_crd(api)
        n1, n2 = c.nodes
        tag = secrets.token_hex(2)
        pods = [Pod(n2, tag, "a1", 21).serve(), Pod(n1, tag, "b1", 22).serve()]
        b = type("Bed", (), {})()
        b.cluster, b.tmp, b.procs, b.pods = c, tmp, procs, pods
        b.core, b.discovery = core, client.DiscoveryV1Api(api)
        b.custom, b.coord = client.CustomObjectsApi(api), client.CoordinationV1Api(api)
        b.outside = c.topology.outside.netns
        b.start = lambda n: procs.__setitem__(n.name, start_daemon(
            c, n, tmp / n.name, tmp / f"{n.name}.log", "--proxy", "--loadbalancer",
            "--loadbalancer-lease-seconds", str(LEASE_SECONDS)))
        for n in c.nodes:
            b.start(n)
        b.custom.create_cluster_custom_object("podwire.io", "v1alpha1", "loadbalancerpools", {
            "apiVersion": "podwire.io/v1alpha1", "kind": "LoadBalancerPool",
            "metadata": {"name": "lan"}, "spec": {"addresses": [POOL]}})
        yield b
        stop_daemons(procs, tmp)
        print("\nload balancer measurements:", json.dumps(RESULTS, indent=1))
        with open(os.path.join(tmp, "measurements.json"), "w") as f:
            json.dump(RESULTS, f)
    finally:
        kill_leftovers(procs)
        for p in pods:
            p.close()
        errors = c.down()
        if errors:
            pytest.fail("cluster teardown: " + "; ".join(errors))


@pytest.fixture
def svcs(bed):
    made: list[str] = []
    tag = secrets.token_hex(2)

    def make(name, pod, *, annotations=None, port=80, **spec):
        name = f"{name}-{tag}"
        body = {"metadata": {"name": name, "annotations": annotations or {}},
                "spec": {"type": "LoadBalancer", "selector": {"app": name},
                         "ports": [{"name": "tcp", "port": port, "targetPort": PORT, "protocol": "TCP"}], **spec}}
        bed.core.create_namespaced_service("default", body)
        made.append(name)
        if pod is not None:
            bed.discovery.create_namespaced_endpoint_slice("default", slice_body(
                name, [{"addresses": [pod.ip], "nodeName": pod.node.name,
                        "conditions": {"ready": True, "serving": True, "terminating": False}}], name=f"{name}-1"))
        return name

    yield make
    for name in made:
        try:
            bed.core.delete_namespaced_service(name, "default")
        except Exception:  # noqa: BLE001 - deleted by the test
            pass
    for name in made:  # gone, finalizer and all
        eventually(lambda n=name: not [s for s in bed.core.list_namespaced_service("default").items
                                       if s.metadata.name == n], timeout=30, what=f"{name} deleted")


def address_of(bed, name, timeout=30.0) -> str:
    def got():
        s = bed.core.read_namespaced_service(name, "default")
        ing = (s.status.load_balancer.ingress or []) if s.status.load_balancer else []
        return ing[0].ip if ing else None
    return eventually(got, timeout=timeout, what=f"{name} gets an address")


def condition(bed, name) -> dict:
    s = bed.core.read_namespaced_service(name, "default")
    return next(({"status": c.status, "reason": c.reason, "message": c.message}
                 for c in s.status.conditions or [] if c.type == "podwire.io/AddressAssigned"), {})


def reach(bed, ip, port=80, timeout=1.0) -> list:
    return client(bed.outside, ip, port, timeout=timeout)


def holder(bed, ip) -> str:
    name = "podwire-lb-" + ip.replace(".", "-")
    return eventually(lambda: bed.coord.read_namespaced_lease(name, "podwire").spec.holder_identity,
                      timeout=30, what=f"a holder for {ip}")


def mac_of(netns, ifname="eth0") -> str:
    return json.loads(sh("ip", "-n", netns, "-j", "link", "show", ifname).stdout)[0]["address"]


def outside_neigh(bed, ip) -> str:
    out = json.loads(sh("ip", "-n", bed.outside, "-j", "neigh", "show", ip).stdout or "[]")
    return out[0].get("lladdr", "") if out else ""


def test_address_assigned_answers_and_unknown_ports_drop(bed, svcs):
    name = svcs("web", bed.pods[0])
    ip = address_of(bed, name)
    assert ip == "172.30.0.241"  # the pool's first usable address (.240 is its network address)
    svc = bed.core.read_namespaced_service(name, "default")
    assert "service.kubernetes.io/load-balancer-cleanup" in svc.metadata.finalizers
    assert condition(bed, name)["status"] == "True"
    events = bed.core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items
    assert any(e.reason == "Assigned" for e in events)
    r = eventually(lambda: (lambda x: x if x[0][0] == "ok" else None)(reach(bed, ip)), timeout=20,
                   what="the outside host reaches the address")
    assert r[0][1].split()[0] == bed.pods[0].ip
    # the answering node is the lease holder, and the outside host learned its MAC by ARP
    node = next(n for n in bed.cluster.nodes if n.name == holder(bed, ip))
    assert outside_neigh(bed, ip) == mac_of(node.netns)
    # a port no Service serves on that address is dropped (a timeout, not a refusal or a loop)
    assert reach(bed, ip, port=81, timeout=1.0)[0][0] == "timeout"
    pool = bed.custom.get_cluster_custom_object("podwire.io", "v1alpha1", "loadbalancerpools", "lan")
    assert eventually(lambda: bed.custom.get_cluster_custom_object(
        "podwire.io", "v1alpha1", "loadbalancerpools", "lan").get("status", {}).get("assigned") == 1,
        timeout=15, what="pool status counts the address") and pool


def test_requested_shared_exhausted_and_released(bed, svcs):
    a = svcs("req", bed.pods[0], annotations={"podwire.io/loadbalancer-ips": "172.30.0.246",
                                              "podwire.io/allow-shared-ip": "k"})
    b = svcs("shr", bed.pods[1], annotations={"podwire.io/loadbalancer-ips": "172.30.0.246",
                                              "podwire.io/allow-shared-ip": "k"}, port=8443)
    assert address_of(bed, a) == address_of(bed, b) == "172.30.0.246"
    assert reach(bed, "172.30.0.246", 80)[0][1].split()[0] == bed.pods[0].ip
    assert reach(bed, "172.30.0.246", 8443)[0][1].split()[0] == bed.pods[1].ip
    # fill the pool: .241-.245 are left (one may be held by another test's Service: fill until refused)
    fill = [svcs(f"f{i}", None) for i in range(6)]
    last = fill[-1]
    eventually(lambda: condition(bed, last).get("reason") == "PoolExhausted", timeout=30,
               what="the 7th Service is refused")
    msg = condition(bed, last)
    assert msg["status"] == "False" and "lan" in msg["message"]
    events = bed.core.list_namespaced_event("default", field_selector=f"involvedObject.name={last}").items
    assert any(e.reason == "PoolExhausted" and e.type == "Warning" for e in events)
    # a deletion gives its address to the waiting Service; the deleted one goes (finalizer removed)
    freed = address_of(bed, fill[0])
    bed.core.delete_namespaced_service(fill[0], "default")
    assert address_of(bed, last) == freed


def _pool(bed, name) -> dict:
    return bed.custom.get_cluster_custom_object("podwire.io", "v1alpha1", "loadbalancerpools", name)


def _pool_condition(bed, name, kind) -> dict:
    return next((c for c in (_pool(bed, name).get("status") or {}).get("conditions") or []
                 if c.get("type") == kind), {})


def test_pools_inside_the_cluster_refused_node_addresses_kept_back(bed, svcs):
    """Bad input: a pool over the Service CIDR is refused (its Ready condition and a Warning Event say why,
    the other pools serve on); a pool holding the nodes' addresses serves without them, and a Service
    asking for a node's address is refused with its reason."""
    import ipaddress

    from kubernetes import client as k8s

    [cidr] = [c for sc in k8s.NetworkingV1Api(bed.core.api_client).list_service_cidr().items for c in sc.spec.cidrs]
    net = ipaddress.ip_network(cidr)
    tag = secrets.token_hex(2)
    inside, nodes = f"inside-{tag}", f"nodes-{tag}"
    node_ips = sorted(str(n.ip) for n in bed.cluster.nodes)
    for name, entry in ((inside, f"{net[200]}-{net[210]}"), (nodes, f"{node_ips[0]}-{node_ips[-1]}")):
        bed.custom.create_cluster_custom_object("podwire.io", "v1alpha1", "loadbalancerpools", {
            "apiVersion": "podwire.io/v1alpha1", "kind": "LoadBalancerPool", "metadata": {"name": name},
            "spec": {"addresses": [entry], "autoAssign": False}})
    try:
        ready = eventually(lambda: (lambda c: c if c.get("reason") == "OverlapsCluster" else None)(
            _pool_condition(bed, inside, "Ready")), timeout=30, what="the pool over the Service CIDR is refused")
        assert ready["status"] == "False" and f"Service CIDR (ServiceCIDR kubernetes) {net}" in ready["message"]
        events = eventually(lambda: [e for e in bed.core.list_namespaced_event(
            "default", field_selector=f"involvedObject.name={inside}").items if e.reason == "OverlapsCluster"],
            timeout=15, what="an Event on the refused pool")
        assert events[0].type == "Warning" and events[0].involved_object.kind == "LoadBalancerPool"
        degraded = eventually(lambda: _pool_condition(bed, nodes, "Degraded") or None, timeout=15,
                              what="the pool with node addresses says so")
        assert degraded["reason"] == "ContainsNodeAddresses"
        assert all(ip in degraded["message"] for ip in node_ips)
        assert _pool_condition(bed, nodes, "Ready")["status"] == "True"
        asks = svcs("node", bed.pods[0], annotations={"podwire.io/loadbalancer-ips": node_ips[0]})
        cond = eventually(lambda: (lambda c: c if c.get("reason") == "AddressOfNode" else None)(
            condition(bed, asks)), timeout=30, what="a Service asking for a node's address is refused")
        assert cond["status"] == "False" and node_ips[0] in cond["message"]
        events = bed.core.list_namespaced_event("default", field_selector=f"involvedObject.name={asks}").items
        assert any(e.reason == "AddressOfNode" and e.type == "Warning" for e in events)
        assert _pool_condition(bed, "lan", "Ready")["status"] == "True"  # the good pool serves on
    finally:
        for name in (inside, nodes):
            bed.custom.delete_cluster_custom_object("podwire.io", "v1alpha1", "loadbalancerpools", name)


def _until_reached(bed, ip, limit=60.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if reach(bed, ip, timeout=0.3)[0][0] == "ok":
            return time.monotonic() - t0
    raise AssertionError(f"{ip} not reachable within {limit} s")


def test_holder_unplugged_address_moves_allocator_changes_nothing(bed, svcs):
    """A daemon that dies leaves its node's dataplane working (the kernel still answers for the
    addresses it holds until the lease moves); a node that drops off the network is what
    failover is for: its cable (the veth peer on the underlay bridge) is pulled."""
    name = svcs("fo", None)
    ip = address_of(bed, name)
    was = holder(bed, ip)
    other = next(n for n in bed.cluster.nodes if n.name != was)
    # its endpoint lives on the node that survives (a dead node's pods are another story)
    pod = next(p for p in bed.pods if p.node.name == other.name)
    bed.discovery.create_namespaced_endpoint_slice("default", slice_body(
        name, [{"addresses": [pod.ip], "nodeName": pod.node.name,
                "conditions": {"ready": True, "serving": True, "terminating": False}}], name=f"{name}-1"))
    eventually(lambda: reach(bed, ip)[0][0] == "ok", timeout=20, what="reachable")
    version = bed.core.read_namespaced_service(name, "default").metadata.resource_version
    cable = ["ip", "-n", bed.cluster.topology.plan.underlay_netns, "link", "set", f"v-{was}"]
    sh(*cable, "down")
    try:
        RESULTS["failover_s_holder_unplugged"] = round(took := _until_reached(bed, ip), 2)
        assert took < LEASE_SECONDS + 6, took
        assert holder(bed, ip) == other.name
        assert outside_neigh(bed, ip) == mac_of(other.netns)  # the gratuitous ARP moved it
    finally:
        sh(*cable, "up")
    # back on the link, the old holder knows its claim lapsed: it does not answer again
    time.sleep(LEASE_SECONDS)
    for _ in range(5):
        assert reach(bed, ip)[0][0] == "ok"
    assert holder(bed, ip) == other.name and outside_neigh(bed, ip) == mac_of(other.netns)
    # whoever allocates now changed no address and wrote nothing
    assert bed.core.read_namespaced_service(name, "default").metadata.resource_version == version
    # a clean stop of the holder hands over at once (the lease is released, not left to expire)
    t0 = time.monotonic()
    bed.procs[other.name].send_signal(signal.SIGTERM)
    assert bed.procs[other.name].wait(timeout=20) == 0
    eventually(lambda: bed.coord.read_namespaced_lease("podwire-lb-" + ip.replace(".", "-"), "podwire")
               .spec.holder_identity == was, timeout=LEASE_SECONDS + 5, what="the other node takes over")
    _until_reached(bed, ip)
    RESULTS["failover_s_holder_stopped"] = round(time.monotonic() - t0, 2)
    assert outside_neigh(bed, ip) == mac_of(next(n for n in bed.cluster.nodes if n.name == was).netns)
    bed.start(other)
    eventually(lambda: healthy(other), timeout=60, what=f"{other.name}'s daemon back")


def test_local_policy_class_type_change_and_no_node_ports(bed, svcs):
    n1, n2 = bed.cluster.nodes
    # externalTrafficPolicy Local: the node with the endpoint answers (the other would drop the traffic)
    for pod in bed.pods:
        name = svcs(f"loc{pod.node.name[-1]}", pod, externalTrafficPolicy="Local")
        ip = address_of(bed, name)
        eventually(lambda: holder(bed, ip) == pod.node.name, timeout=20, what=f"{ip} held by {pod.node.name}")
        r = eventually(lambda: (lambda x: x if x[0][0] == "ok" else None)(reach(bed, ip)), timeout=20,
                       what=f"{ip} reachable")
        assert r[0][1].split() == [pod.ip, str(bed.cluster.topology.outside.ip)]  # client address kept
    # no node ports: the address alone serves
    name = svcs("nonp", bed.pods[0], allocateLoadBalancerNodePorts=False)
    ip = address_of(bed, name)
    assert not bed.core.read_namespaced_service(name, "default").spec.ports[0].node_port
    eventually(lambda: reach(bed, ip)[0][0] == "ok", timeout=20, what="reachable without node ports")
    # another implementation's class: left alone
    other = svcs("cls", bed.pods[0], loadBalancerClass="example.com/other")
    time.sleep(3)
    s = bed.core.read_namespaced_service(other, "default")
    assert not (s.status.load_balancer and s.status.load_balancer.ingress) and not s.metadata.finalizers
    # LoadBalancer -> ClusterIP: the address goes, and so do our condition and finalizer
    bed.core.patch_namespaced_service(name, "default", {"spec": {"type": "ClusterIP"}})

    def released():
        s = bed.core.read_namespaced_service(name, "default")
        return (not (s.status.load_balancer and s.status.load_balancer.ingress) and not s.metadata.finalizers
                and not condition(bed, name))
    eventually(released, timeout=20, what="address, condition and finalizer gone")
    assert reach(bed, ip, timeout=1.0)[0][0] != "ok"
