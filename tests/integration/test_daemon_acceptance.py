"""Issue 4's acceptance list, against the real Kubernetes API server of the e2e harness.

One routed cluster of three registered Nodes (node1 and node3 share an L2 subnet, node2 is
behind a router; podCIDRs from the real controller-manager), one `python3 -m node_daemon` per
node namespace for the whole module, one pod per node with the MTU its node's daemon wrote
into the CNI config. The tests, in the order they run (the last two disturb the daemons and
the API server, so they come last):

- L2 topology (a two-node `l2` cluster of its own, first, torn down before the routed one
  starts): ping and a TCP connection pod -> pod, the server sees the client pod's IP, routes
  are direct, pods keep the full 1500 MTU; the same between node1 and node3 of the routed
  cluster, which share a subnet (mode auto: direct there, VXLAN only towards node2);
- routed: the same over VXLAN, a 50 MiB TCP transfer with full-size segments (byte count and
  SHA-256 checked), DF ping at the pod MTU passes and one byte more fails with the right error;
- a Node added: its route on every node within 2 s of its podCIDR, or of its VTEP MAC when
  that comes later (measured, asserted); deleted: its route, FDB entry and neighbour gone on
  every node;
- bad Nodes stored through the real API (no InternalIP, a malformed InternalIP, podCIDRs the
  API accepts but that are not a network: host bits set, leading zeros; well-formed podCIDRs
  that are another node's or 0.0.0.0/0) are logged and skipped while a good Node added next
  to them is programmed, and nobody's routes are hijacked;
- every daemon restarted while pods ping each other every 50 ms (direct and VXLAN): no loss;
- kube-apiserver killed: pods keep talking, /healthz stays 200; restarted with the same flags:
  a Node created afterwards is programmed.

Measured numbers are printed (`pytest -s` shows them) as `ACCEPTANCE ...` lines.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path

import pytest

from e2e.netbed import eventually, sh
from tests.integration.daemon_cluster_helpers import (
    Pinger,
    assert_no_loss,
    core,
    daemon_cluster,
    del_pods,
    delete_nodes,
    fdb,
    healthy,
    kill_leftovers,
    metrics,
    neighbours,
    ping,
    ping_df,
    pod_in,
    routes,
    start_daemon,
    start_daemons,
    stop_daemons,
    stop_pingers,
    too_big,
    transfer,
)

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

VTEP_MAC = "podwire.io/vtep-mac"
# An underlay address no node is on-link with: every daemon reaches such a peer over VXLAN, so
# a Node with it gets a route, an FDB entry and a neighbour on every node.
FAR_IP = "172.30.3.{}"


def report(what: str) -> None:
    print(f"ACCEPTANCE {what}", file=sys.stderr)


@pytest.fixture(scope="module")
def cluster():
    with daemon_cluster(f"a{os.getpid() % 100000}", "routed", 3) as c:
        yield c


@dataclasses.dataclass
class Running:
    procs: dict  # node name -> Popen of its daemon (tests may restart them)
    dir: Path  # CNI config dirs and daemon logs
    pods: dict  # node name -> (netns, pod IP)
    mtu: int  # the pod MTU the daemons wrote (the same on every node of this cluster)
    tag: str

    def log(self, node) -> str:
        return (self.dir / f"{node.name}.log").read_text()


@pytest.fixture(scope="module")
def running(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("acceptance")
    tag = secrets.token_hex(2)
    procs, pods = {}, {}
    try:
        procs.update(start_daemons(cluster, tmp))
        for n in cluster.nodes:
            for peer in cluster.nodes:
                if peer is not n:
                    eventually(lambda: f"{peer.pod_cidr} via" in routes(n), timeout=90,
                               what=f"{n.name}: route to {peer.name}")
        mtus = {json.loads((tmp / n.name / "10-podwire.conflist").read_text())["plugins"][0]["mtu"]
                for n in cluster.nodes}
        assert mtus == {1450}, mtus  # every node has a peer behind the router: the VXLAN MTU
        for n in cluster.nodes:  # pods as the CNI plugin makes them: the conflist's MTU
            pods[n.name] = pod_in(n, tag, mtu=1450, prefix="pwa")
        yield Running(procs, tmp, pods, 1450, tag)
        stop_daemons(procs, tmp)
    finally:
        kill_leftovers(procs)
        del_pods(*(ns for ns, _ in pods.values()))


# ---- helpers -------------------------------------------------------------------------------
def node_body(name, ip=None, cidr=None, mac="0a:58:0a:00:00:01", addresses=None):
    """A Node as a kubelet on a far subnet registers it, with the VTEP MAC its daemon publishes."""
    body = {"metadata": {"name": name, "annotations": {VTEP_MAC: mac}},
            "status": {"addresses": addresses if addresses is not None
                       else [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}}
    if cidr:
        body["spec"] = {"podCIDR": cidr, "podCIDRs": [cidr]}
    return body


# ---- the acceptance tests ----------------------------------------------------------------
def test_l2_cluster_pods_ping_and_connect_keeping_their_ip_over_direct_routes(tmp_path):
    """A cluster whose nodes all share one L2 subnet (its own, up for this test only): direct
    routes only, the full underlay MTU for pods, no overlay state at all."""
    tag = secrets.token_hex(2)
    with daemon_cluster(f"a{os.getpid() % 100000}l", "l2", 2) as c:
        n1, n2 = c.nodes
        procs, pods = {}, []
        try:
            procs = start_daemons(c, tmp_path)
            for a, b in ((n1, n2), (n2, n1)):
                eventually(lambda: f"{b.pod_cidr} via {b.ip} dev eth0" in routes(a), timeout=90,
                           what=f"{a.name}: direct route to {b.name}")
            conf = json.loads((tmp_path / "node1" / "10-podwire.conflist").read_text())
            assert conf["plugins"][0]["mtu"] == 1500  # no peer needs the overlay
            for n in (n1, n2):
                pods.append(pod_in(n, tag, mtu=1500, prefix="pwa"))
            (p1, ip1), (p2, ip2) = pods
            for n in (n1, n2):
                assert "podwire.vxlan" not in routes(n) and "dst" not in fdb(n)
            assert eventually(lambda: ping(p1, ip2), what="ping node1 pod -> node2 pod")
            assert ping(p2, ip1)
            payload = tmp_path / "payload"
            payload.write_bytes(os.urandom(1 << 20))
            seen, sent, digest = transfer(p1, p2, ip2, payload)
            assert seen["peer"] == ip1  # no masquerade between pods: the server sees the pod's own IP
            assert seen["bytes"] == 1 << 20 and seen["sha256"] == digest
            assert sent["snd_mss"] == seen["rcv_mss"] == 1500 - 52
            ok, out = ping_df(p1, ip2, 1500 - 28)
            assert ok, out
            ok, out = ping_df(p1, ip2, 1500 - 27)
            assert not ok and too_big(out, 1500), out
            stop_daemons(procs, tmp_path)
        finally:
            kill_leftovers(procs)
            del_pods(*(ns for ns, _ in pods))


def test_same_subnet_pods_in_a_routed_cluster_connect_over_direct_routes(cluster, running, tmp_path):
    """Mode auto in a mixed cluster: node1 and node3 share a subnet, so no overlay between them."""
    n1, _, n3 = cluster.nodes
    assert n1.plan.subnet == n3.plan.subnet
    (p1, ip1), (p3, ip3) = running.pods["node1"], running.pods["node3"]
    # direct routes both ways (via the peer's InternalIP on eth0), nothing towards it on the overlay
    assert f"{n3.pod_cidr} via {n3.ip} dev eth0" in routes(n1)
    assert f"{n1.pod_cidr} via {n1.ip} dev eth0" in routes(n3)
    assert f"dst {n3.ip} " not in fdb(n1) and f"dst {n1.ip} " not in fdb(n3)
    assert eventually(lambda: ping(p1, ip3), what="ping node1 pod -> node3 pod")
    assert ping(p3, ip1)
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(1 << 20))
    seen, sent, digest = transfer(p1, p3, ip3, payload)
    assert seen["peer"] == ip1  # no masquerade between pods: the server sees the pod's own IP
    assert seen["bytes"] == 1 << 20 and seen["sha256"] == digest


def test_routed_pods_over_vxlan_full_size_transfer_and_path_mtu(cluster, running, tmp_path):
    n1, n2, _ = cluster.nodes
    assert n1.plan.subnet != n2.plan.subnet
    (p1, ip1), (p2, ip2) = running.pods["node1"], running.pods["node2"]
    line = next(r for r in routes(n1).splitlines() if r.startswith(f"{n2.pod_cidr} "))
    assert f"via {n2.pod_cidr.network_address} dev podwire.vxlan" in line and line.rstrip().endswith("onlink")
    assert f"dst {n2.ip} self permanent" in fdb(n1)
    assert eventually(lambda: ping(p1, ip2), what="ping node1 pod -> node2 pod")
    assert ping(p2, ip1)

    size = 50 << 20
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(size))
    seen, sent, digest = transfer(p1, p2, ip2, payload)
    assert seen["peer"] == ip1
    assert seen["bytes"] == size and seen["sha256"] == digest
    # full-size segments: MSS = pod MTU - IP - TCP - timestamps, and segments that big arrived
    full = running.mtu - 20 - 20 - 12
    assert sent["snd_mss"] == full and seen["rcv_mss"] == full, (sent, seen)
    report(f"routed transfer: {size} bytes node1 pod -> node2 pod over VXLAN in {sent['seconds']:.2f} s "
           f"({size * 8 / sent['seconds'] / 1e6:.0f} Mbit/s), MSS {full}")

    # DF at the pod MTU passes; one byte more is refused: the pod's own link says so ...
    ok, out = ping_df(p1, ip2, running.mtu - 28)
    assert ok, out
    ok, out = ping_df(p1, ip2, running.mtu - 28 + 1)
    assert not ok and too_big(out, running.mtu), out
    # ... and a pod whose link is larger than the path gets "Frag needed" from its node
    big, _ = pod_in(n1, secrets.token_hex(2), index=40, prefix="pwa")  # MTU 1500
    try:
        ok, out = ping_df(big, ip2, running.mtu - 28 + 1)
        assert not ok and "Frag needed and DF set (mtu = 1450)" in out, out
        ok, out = ping_df(big, ip2, running.mtu - 28)
        assert ok, out
    finally:
        del_pods(big)


def wait_pod_cidr(api, name) -> tuple[ipaddress.IPv4Network, float]:
    """The podCIDR the controller-manager assigns, and a time before it was set: the start of
    the last read that did not show it (so latencies measured from it are upper bounds)."""
    last_without = time.monotonic()
    while time.monotonic() - last_without < 30:
        t = time.monotonic()
        got = api.read_node(name).spec.pod_cidr
        if got:
            return ipaddress.ip_network(got), last_without
        last_without = t
    raise AssertionError(f"no podCIDR for {name}")


def routed_after(cluster, cidr, since, timeout=10.0) -> dict[str, float]:
    """Seconds from `since` until each node has its route to `cidr` (polled)."""
    seen = {}
    while len(seen) < len(cluster.nodes) and time.monotonic() - since < timeout:
        for n in cluster.nodes:
            if n.name not in seen and f"{cidr} via" in routes(n):
                seen[n.name] = time.monotonic() - since
    assert set(seen) == {n.name for n in cluster.nodes}, f"{cidr}: routed only on {seen}"
    return seen


def test_node_added_is_routed_everywhere_within_2s_and_deleted_leaves_nothing(cluster, running):
    """Two Nodes arrive without a podCIDR, as from kubelets; the controller-manager assigns them
    one. `new` carries its VTEP MAC from the start (timed from its podCIDR); `late` gets it only
    afterwards, as when its daemon starts after the kubelet registered (timed from the MAC)."""
    api = core(cluster)
    t = running.tag
    peers = {f"a{t}-new": (FAR_IP.format(7), "0a:58:0a:00:00:07"),
             f"a{t}-late": (FAR_IP.format(6), "0a:58:0a:00:00:06")}
    (new, (new_ip, new_mac)), (late, (late_ip, late_mac)) = peers.items()
    try:
        created = time.monotonic()
        api.create_node(node_body(new, new_ip, mac=new_mac))
        new_cidr, since = wait_pod_cidr(api, new)
        from_cidr = routed_after(cluster, new_cidr, since)
        report(f"node added: route on every node {max(from_cidr.values()):.2f} s after its podCIDR at most "
               f"({', '.join(f'{k} {v:.2f}' for k, v in from_cidr.items())}; "
               f"{time.monotonic() - created:.2f} s from the create call)")

        body = node_body(late, late_ip)
        del body["metadata"]["annotations"]
        api.create_node(body)
        late_cidr, _ = wait_pod_cidr(api, late)
        for n in cluster.nodes:  # seen, and skipped for want of the MAC
            eventually(lambda: re.search(rf"skipped: {late}: {late_cidr}: no valid {VTEP_MAC}", running.log(n)),
                       timeout=10, what=f"{n.name} saw {late} without a MAC")
        since = time.monotonic()
        api.patch_node(late, {"metadata": {"annotations": {VTEP_MAC: late_mac}}})
        from_mac = routed_after(cluster, late_cidr, since)
        report(f"node annotated: route on every node {max(from_mac.values()):.2f} s after the MAC at most")
        assert max(from_cidr.values()) < 2.0 and max(from_mac.values()) < 2.0, (from_cidr, from_mac)

        gone = {}
        for name, cidr in ((new, new_cidr), (late, late_cidr)):
            ip, mac = peers[name]
            vtep = str(cidr.network_address)
            gone[name] = lambda cidr=cidr, ip=ip, vtep=vtep: all(  # noqa: E731
                f"{cidr} " not in routes(n) and f"dst {ip} " not in fdb(n) and f"{vtep} lladdr" not in neighbours(n)
                for n in cluster.nodes)
            for n in cluster.nodes:
                assert f"{cidr} via {vtep} dev podwire.vxlan" in routes(n)
                assert f"{mac} dst {ip} self permanent" in fdb(n), fdb(n)
                assert f"{vtep} lladdr {mac} PERMANENT" in neighbours(n), neighbours(n)
            assert not gone[name]()

        since = time.monotonic()
        api.delete_node(new)
        eventually(gone[new], timeout=10, what="route, FDB entry and neighbour of the deleted node")
        report(f"node deleted: route, FDB entry and neighbour gone on every node after "
               f"{time.monotonic() - since:.2f} s")
        assert not gone[late]()  # the other one stays
        api.delete_node(late)
        eventually(gone[late], timeout=10, what="... of the second deleted node")
    finally:
        delete_nodes(api, *peers)


def test_bad_nodes_from_the_real_api_are_logged_and_skipped(cluster, running):
    """The API server stores all of these (it parses CIDRs sloppily and does not validate
    status.addresses); the daemon must not let one of them stop it."""
    api = core(cluster)
    t = running.tag
    bad = {
        f"a{t}-noip": (node_body(f"a{t}-noip", cidr="10.244.230.0/24",
                                 addresses=[{"type": "Hostname", "address": "x"}]),
                       "no InternalIP in status.addresses"),
        f"a{t}-badip": (node_body(f"a{t}-badip", "not-an-ip", "10.244.231.0/24"), "malformed InternalIP"),
        f"a{t}-hostbits": (node_body(f"a{t}-hostbits", FAR_IP.format(8), "10.244.232.9/24"),
                           "malformed podCIDR '10.244.232.9/24'"),
        f"a{t}-zeros": (node_body(f"a{t}-zeros", FAR_IP.format(9), "010.244.233.0/24"),
                        "malformed podCIDR '010.244.233.0/24'"),
    }
    # well-formed, but claiming address space that is not theirs to claim: node1's podCIDR (the
    # older claim wins) and everything (a route for it would replace the nodes' default route)
    n1 = cluster.nodes[0]
    greedy = {f"a{t}-dup": str(n1.pod_cidr), f"a{t}-all": "0.0.0.0/0"}
    defaults = {n.name: sh("ip", "-n", n.netns, "route", "show", "default").stdout for n in cluster.nodes}
    good = f"a{t}-good"
    try:
        for body, _ in bad.values():
            api.create_node(body)
        for i, (name, cidr) in enumerate(greedy.items()):
            api.create_node(node_body(name, FAR_IP.format(20 + i), cidr, mac=f"0a:58:0a:00:00:2{i}"))
        api.create_node(node_body(good, FAR_IP.format(10), "10.244.234.0/24", mac="0a:58:0a:00:00:0a"))
        for n in cluster.nodes:  # the others keep working: a Node added after them is programmed
            eventually(lambda: "10.244.234.0/24 via" in routes(n), timeout=10, what=f"{n.name}: good node")
        for n in cluster.nodes:
            for name, (_, why) in bad.items():
                assert re.search(rf"WARNING .*invalid: node {name}: .*{re.escape(why)}", running.log(n)), name
            for name, cidr in greedy.items():
                assert re.search(rf"WARNING .*skipped: {name}: {re.escape(cidr)}: .*overlaps", running.log(n)), name
            assert "podwire_nodes_invalid 4.0" in metrics(n)
            assert not re.search(r"10\.244\.23[0-3]\.|default|0\.0\.0\.0/0", routes(n)), routes(n)
            assert not any(FAR_IP.format(20 + i) in routes(n) for i in range(len(greedy))), routes(n)
            assert sh("ip", "-n", n.netns, "route", "show", "default").stdout == defaults[n.name]
            assert healthy(n)
        (p1, ip1), (p2, ip2), (p3, ip3) = (running.pods[k] for k in ("node1", "node2", "node3"))
        assert ping(p1, ip2) and ping(p1, ip3) and ping(p2, ip1) and ping(p3, ip1)
    finally:
        delete_nodes(api, good, *bad, *greedy)
    for n in cluster.nodes:
        eventually(lambda: "podwire_nodes_invalid 0.0" in metrics(n) and "10.244.234.0" not in routes(n),
                   timeout=10, what=f"{n.name}: bad nodes forgotten")


def test_daemon_restart_loses_no_packet(cluster, running):
    """All three daemons stopped and started again while pods ping every 50 ms, directly
    (node1 -> node3) and over VXLAN (node1 -> node2, node3 -> node2)."""
    (p1, _), (p2, ip2), (p3, ip3) = (running.pods[k] for k in ("node1", "node2", "node3"))
    pingers = [Pinger(p1, ip2), Pinger(p1, ip3), Pinger(p3, ip2)]
    try:
        time.sleep(1)
        started = time.monotonic()
        stop_daemons(running.procs, running.dir)
        for n in cluster.nodes:
            running.procs[n.name] = start_daemon(cluster, n, running.dir / n.name, running.dir / f"{n.name}.log")
        for n in cluster.nodes:  # /healthz is 200 after the new process' first full sync
            eventually(lambda: healthy(n), timeout=60, what=f"{n.name} daemon back")
        window = time.monotonic() - started
        time.sleep(1)
    finally:
        results = stop_pingers(pingers)
    report(f"daemon restart: all 3 daemons down and back in {window:.1f} s; pings (sent, received): "
           + ", ".join(f"{k} {s}/{r}" for k, (s, r, _) in results.items()))
    assert_no_loss(results)
    for n in cluster.nodes:  # the new processes adopted what the old ones had programmed
        assert "podwire_dataplane_changes_total 0.0" in metrics(n), metrics(n)


def test_api_server_killed_then_restarted(cluster, running):
    cp = cluster.control_plane
    n1 = cluster.nodes[0]
    (p1, _), (_, ip2), (_, ip3) = (running.pods[k] for k in ("node1", "node2", "node3"))
    name, cidr = f"a{running.tag}-after", "10.244.240.0/24"
    pingers = [Pinger(p1, ip2), Pinger(p1, ip3)]
    api = None
    try:
        time.sleep(0.5)
        cp.stop_apiserver()  # SIGKILL: a crash, not a partition
        assert not cp.readyz()
        down_since = time.monotonic()
        while time.monotonic() - down_since < 12:  # more than a resync interval (10 s)
            for n in cluster.nodes:
                assert healthy(n), f"{n.name} /healthz during the outage"
            time.sleep(1)
        for n in cluster.nodes:
            assert all(f"{peer.pod_cidr} via" in routes(n) for peer in cluster.nodes if peer is not n)
        errors = re.search(r'podwire_api_errors_total\{resource="nodes"\} (\S+)', metrics(n1))
        assert errors and float(errors[1]) > 0  # it noticed the outage, and kept serving

        cp.start_apiserver()  # same flags, same etcd: the cluster's state is all there
        report(f"API server down for {time.monotonic() - down_since:.1f} s")
        api = core(cluster)  # a new client: the old one's pooled connections died with the server
        api.create_node(node_body(name, FAR_IP.format(11), cidr, mac="0a:58:0a:00:00:0b"))
        changed = time.monotonic()
        for n in cluster.nodes:
            eventually(lambda: f"{cidr} via" in routes(n), timeout=90, what=f"{n.name} resumed")
        report(f"API server back: a Node created afterwards routed on every node after "
               f"{time.monotonic() - changed:.1f} s (informer backoff included)")
    finally:
        results = stop_pingers(pingers)
        if not cp.readyz():
            cp.start_apiserver()
        delete_nodes(api or core(cluster), name)
    report("API outage pings (sent, received): " + ", ".join(f"{k} {s}/{r}" for k, (s, r, _) in results.items()))
    assert_no_loss(results)
    for n in cluster.nodes:
        assert healthy(n)
        eventually(lambda: f"{cidr} " not in routes(n), timeout=10, what=f"{n.name}: deletion after the outage")
