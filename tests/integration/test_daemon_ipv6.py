"""Issue 15 item 2: the daemon's acceptance checks over an IPv6 underlay, IPv6-only and dual-stack.

One routed harness cluster of three registered Nodes per family (node1 and node3 share a subnet:
direct routes; node2 is behind the router: VXLAN), the controller-manager's podCIDRs of every
family, one `python3 -m node_daemon` per node namespace with `--cluster-cidr` of every family,
and one pod per node made by the podwire CNI plugin from the conflist its node's daemon wrote.

- `ipv6`: the underlay is IPv6 only, so VXLAN runs over an IPv6 outer header (pod MTU = 1500 - 70);
- `dual`: the VXLAN device's outer family is the Node's primary InternalIP's (IPv4, 1500 - 50) and
  carries both inner families; direct routes go via the peer's InternalIP of the route's family.

Checked per family: pod addresses from the conflist's ranges, routes/FDB/neighbour entries, ping
and TCP both ways over direct routes and VXLAN (the server sees the client pod's address), a 50 MiB
transfer over VXLAN with SHA-256 and full-size segments, DF at the pod MTU, a Node added and deleted,
every daemon restarted without a lost ping, egress masquerade to the outside host. Measured numbers
are printed (`pytest -s`) as `IPV6 ...` lines.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.netbed import eventually, nsexec, sh
from node_daemon.plan import VXLAN_OVERHEAD
from tests.integration import daemon_cluster_helpers as helpers
from tests.integration.cni_harness import daemon_conf
from tests.integration.daemon_cluster_helpers import (
    ROOT,
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
    routes,
    start_daemon,
    start_daemons,
    stop_daemons,
    stop_pingers,
    too_big,
)

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

UNDERLAY_MTU = 1500
# Underlay addresses no node is on-link with (the harness's subnet numbering, a third subnet)
FAR = {4: "172.30.3.{}", 6: "fd00:172:30:3::{}"}
VTEP_MAC = "podwire.io/vtep-mac"


def report(what: str) -> None:
    print(f"IPV6 {what}", file=sys.stderr)


@dataclasses.dataclass
class Pod:
    netns: str
    ips: dict  # IP version -> address (str), from the plugin's result

    def ip(self, version: int) -> str:
        return self.ips[version]


@dataclasses.dataclass
class Running:
    cluster: object
    family: str
    versions: tuple  # the cluster's IP versions, primary first
    procs: dict  # node name -> Popen of its daemon
    dir: Path
    pods: dict  # node name -> Pod
    mtu: int  # the pod MTU the daemons wrote
    tag: str

    def log(self, node) -> str:
        return (self.dir / f"{node.name}.log").read_text()


@pytest.fixture(scope="module", params=["ipv6", "dual"])
def running(request, tmp_path_factory):
    family = request.param
    tmp = tmp_path_factory.mktemp(f"daemon-{family}")
    tag = secrets.token_hex(2)
    plugin = tmp / "podwire"  # the plugin from this checkout, as CNI_PATH would hold it
    plugin.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m cni_plugin\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    with daemon_cluster(f"v6{family[0]}{os.getpid() % 10000}", "routed", 3, ip_family=family) as c:
        versions = c.control_plane.config.versions
        procs, pods, monitors = {}, {}, {}
        try:
            for n in c.nodes:
                # as on a real host: duplicate address detection for the links made from now on (the
                # harness turns it off for its own), and every IPv6 address event recorded
                sh(*nsexec(n.netns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=1"))
                with open(tmp / f"{n.name}.addr-events", "w") as out:
                    monitors[n.name] = subprocess.Popen(["ip", "-n", n.netns, "-6", "monitor", "address"],
                                                        stdout=out, stderr=subprocess.STDOUT)
            procs.update(start_daemons(c, tmp))
            for n in c.nodes:
                for peer in c.nodes:
                    for cidr in peer.pod_cidrs if peer is not n else ():
                        eventually(lambda: f"{cidr} via" in routes(n, cidr.version), timeout=90,
                                   what=f"{n.name}: route to {peer.name}'s {cidr}")
            for m in monitors.values():
                m.terminate()
                m.wait()
            # VXLAN's outer header is of the primary InternalIP's family: IPv6 in ipv6 clusters
            mtu = UNDERLAY_MTU - VXLAN_OVERHEAD[versions[0]]
            for n in c.nodes:
                pods[n.name] = cni_pod(plugin, n, tmp / n.name / "10-podwire.conflist", tag, tmp)
            yield Running(c, family, versions, procs, tmp, pods, mtu, tag)
            stop_daemons(procs, tmp)
        finally:
            for m in monitors.values():
                if m.poll() is None:
                    m.kill()
                    m.wait()
            kill_leftovers(procs)
            del_pods(*(p.netns for p in pods.values()))


def cni_pod(plugin, node, conflist_path: Path, tag: str, tmp: Path) -> Pod:
    """A pod namespace wired by the podwire plugin (ADD, as containerd 2.x calls it) from the
    daemon's conflist, its host paths moved under `tmp`."""
    ns = f"pw6-{tag}-{node.name}"
    sh("ip", "netns", "add", ns)
    conf = daemon_conf(conflist_path, tmp / f"cni-{node.name}", negotiate=True)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": "ADD",
           "CNI_CONTAINERID": f"c{tag}{node.name}", "CNI_NETNS": f"/run/netns/{ns}", "CNI_IFNAME": "eth0",
           "CNI_PATH": str(plugin.parent)}
    proc = subprocess.run(nsexec(node.netns, str(plugin)), input=json.dumps(conf), capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ips = [ipaddress.ip_interface(i["address"]).ip for i in json.loads(proc.stdout)["ips"]]
    return Pod(ns, {ip.version: str(ip) for ip in ips})


# ---- TCP ---------------------------------------------------------------------------------------
def transfer(client_ns, server_ns, server_ip, payload: Path, port=5001) -> tuple[dict, dict]:
    """The helpers' transfer, its byte count and SHA-256 checked; (server's view, client's view)."""
    seen, sent, digest = helpers.transfer(client_ns, server_ns, server_ip, payload, port)
    assert seen["bytes"] == payload.stat().st_size and seen["sha256"] == digest, seen
    return seen, sent


def mss(mtu: int, version: int) -> int:
    return mtu - (20 if version == 4 else 40) - 20 - 12  # IP, TCP, timestamps


def icmp_payload(mtu: int, version: int) -> int:
    return mtu - (20 if version == 4 else 40) - 8  # IP, ICMP header


# ---- the tests ---------------------------------------------------------------------------------
def test_conflist_ranges_and_pod_addresses_of_every_family(running):
    c = running.cluster
    for n in c.nodes:
        assert [cidr.version for cidr in n.pod_cidrs] == list(running.versions)
        conf = json.loads((running.dir / n.name / "10-podwire.conflist").read_text())["plugins"][0]
        assert conf["ipam"]["ranges"] == [[{"subnet": str(cidr)}] for cidr in n.pod_cidrs]
        assert conf["ipam"]["routes"] == [{"dst": "0.0.0.0/0" if v == 4 else "::/0"} for v in running.versions]
        assert conf["mtu"] == running.mtu  # every node has a VXLAN peer (node2, or node1 and node3)
        pod = running.pods[n.name]
        assert sorted(pod.ips) == sorted(running.versions)
        for cidr in n.pod_cidrs:
            assert ipaddress.ip_address(pod.ip(cidr.version)) in cidr
        assert f"mtu {running.mtu}" in sh("ip", "-n", pod.netns, "link", "show", "eth0").stdout


def test_vtep_addresses_are_never_tentative(running):
    """The daemon's IPv6 VTEP address is usable from the moment it exists, with DAD on for new
    links as on a real host (a tentative address is neither source nor destination for 1-2 s)."""
    for n in running.cluster.nodes:
        events = (running.dir / f"{n.name}.addr-events").read_text()
        vtep = next(c for c in n.pod_cidrs if c.version == 6).network_address
        added = [e for e in events.splitlines() if f"inet6 {vtep}/128" in e]
        assert added and not any("tentative" in e for e in added), events
        now = sh("ip", "-n", n.netns, "-6", "addr", "show", "dev", "podwire.vxlan", "scope", "global").stdout
        assert f"inet6 {vtep}/128" in now and "tentative" not in now, now


def test_routes_fdb_and_neighbours_per_peer_and_family(running):
    """Direct via the peer's InternalIP of the route's family on the shared subnet; VXLAN
    towards node2 with the VTEP's permanent neighbour (NDP table for IPv6) and an FDB entry
    to node2's underlay address of the device's (primary) family."""
    n1, n2, n3 = running.cluster.nodes
    outer = running.versions[0]
    details = sh("ip", "-n", n1.netns, "-d", "link", "show", "podwire.vxlan").stdout
    assert f"local {n1.ips[0]} " in details, details  # the device's outer family
    for v in running.versions:
        ip_of = lambda node: next(ip for ip in node.ips if ip.version == v)  # noqa: E731
        cidr_of = lambda node: next(c for c in node.pod_cidrs if c.version == v)  # noqa: E731
        for a, b in ((n1, n3), (n3, n1)):
            assert f"{cidr_of(b)} via {ip_of(b)} dev eth0 " in routes(a, v), routes(a, v)
        for a in (n1, n3):
            line = next(r for r in routes(a, v).splitlines() if r.startswith(f"{cidr_of(n2)} "))
            vtep = cidr_of(n2).network_address
            assert f"via {vtep} dev podwire.vxlan" in line and "onlink" in line, line
            assert f"{vtep} lladdr " in neighbours(a) and "PERMANENT" in neighbours(a), neighbours(a)
        for b in (n1, n3):  # node2 reaches both over VXLAN
            assert f"{cidr_of(b)} via {cidr_of(b).network_address} dev podwire.vxlan" in routes(n2, v)
    for a, b in ((n1, n2), (n2, n1), (n3, n2)):
        b_outer = next(ip for ip in b.ips if ip.version == outer)
        assert f"dst {b_outer} self permanent" in fdb(a), fdb(a)
    assert not any(f"dst {ip} " in fdb(n1) for ip in n3.ips)  # same subnet: no overlay between them


@pytest.mark.parametrize("pair", [("node1", "node3"), ("node1", "node2")], ids=["direct", "vxlan"])
def test_ping_and_tcp_both_ways_per_family_keep_the_pod_address(running, pair, tmp_path):
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(256 << 10))
    for v in running.versions:
        for a, b in (pair, pair[::-1]):
            src, dst = running.pods[a], running.pods[b]
            assert eventually(lambda: ping(src.netns, dst.ip(v)), what=f"IPv{v} ping {a} pod -> {b} pod")
            seen, _ = transfer(src.netns, dst.netns, dst.ip(v), payload)
            assert seen["peer"] == src.ip(v), (v, a, b, seen)  # no masquerade between pods


def test_nodes_and_pods_across_nodes_per_family(running, tmp_path):
    """Host network -> a pod on another node (the node's traffic leaves its VXLAN device with its
    VTEP address as source, the first address of its podCIDR) and pod -> another node's InternalIP
    (exempt from masquerade: the node sees the pod's address)."""
    n1, n2, n3 = running.cluster.nodes
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(64 << 10))
    for v in running.versions:
        for a, b in ((n1, n2), (n2, n1), (n1, n3)):
            dst = running.pods[b.name].ip(v)
            assert eventually(lambda: ping(a.netns, dst), what=f"IPv{v} {a.name} -> pod on {b.name}")
            if b is not n3:  # over VXLAN
                vtep = next(x for x in a.pod_cidrs if x.version == v).network_address
                assert f" src {vtep} " in sh("ip", "-n", a.netns, "route", "get", dst).stdout
        for a, b in ((n1, n2), (n2, n3)):
            pod = running.pods[a.name]
            node_ip = str(next(ip for ip in b.ips if ip.version == v))
            seen, _ = transfer(pod.netns, b.netns, node_ip, payload, port=5003)
            assert seen["peer"] == pod.ip(v), (v, a.name, b.name, seen)


def test_full_size_transfer_and_path_mtu_over_vxlan(running, tmp_path):
    (p1, p2, p3), mtu = (running.pods[k] for k in ("node1", "node2", "node3")), running.mtu
    size = 50 << 20
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(size))
    for v in running.versions:
        for what, dst in (("VXLAN", p2), ("direct", p3)):
            seen, sent = transfer(p1.netns, dst.netns, dst.ip(v), payload)
            assert seen["peer"] == p1.ip(v)
            assert sent["snd_mss"] == mss(mtu, v) and seen["rcv_mss"] == mss(mtu, v), (sent, seen)
            report(f"{running.family}: IPv{v} {what} transfer, {size} bytes node1 pod -> {dst.netns} in "
                   f"{sent['seconds']:.2f} s ({size * 8 / sent['seconds'] / 1e6:.0f} Mbit/s), MSS {mss(mtu, v)}")
        ok, out = ping_df(p1.netns, p2.ip(v), icmp_payload(mtu, v))
        assert ok, out
        ok, out = ping_df(p1.netns, p2.ip(v), icmp_payload(mtu, v) + 1)
        assert not ok and too_big(out, mtu), out
    # ... and a pod whose link is larger than the path learns the path's MTU from its node
    # (ICMP fragmentation needed, ICMPv6 Packet Too Big)
    big = f"pw6-{running.tag}-big"
    sh("ip", "netns", "add", big)
    try:
        n1 = running.cluster.nodes[0]
        sh("ip", "-n", n1.netns, "link", "add", f"v{running.tag}big", "type", "veth", "peer", "name", "eth0",
           "netns", big)
        sh("ip", "-n", n1.netns, "link", "set", f"v{running.tag}big", "master", "podwire0", "up")
        sh("ip", "-n", big, "link", "set", "eth0", "up")
        for cidr in n1.pod_cidrs:  # MTU 1500, an address the plugin's IPAM does not hand out soon
            nodad = ["nodad"] if cidr.version == 6 else []
            sh("ip", "-n", big, "addr", "add", f"{cidr.network_address + 200}/{cidr.prefixlen}", "dev", "eth0",
               *nodad)
            sh("ip", "-n", big, f"-{cidr.version}", "route", "add", "default", "via", str(cidr.network_address + 1))
        for v in running.versions:
            ok, out = ping_df(big, p2.ip(v), icmp_payload(mtu, v) + 1)
            assert not ok and too_big(out, mtu), out
            ok, out = ping_df(big, p2.ip(v), icmp_payload(mtu, v))
            assert ok, out
    finally:
        del_pods(big)


def test_node_added_and_deleted(running):
    """A Node on a far subnet with an InternalIP of every family: the controller-manager gives it a
    podCIDR per family; every node routes each over VXLAN (FDB to its outer address, a neighbour
    per VTEP), and all of it goes when the Node is deleted."""
    c, api, outer = running.cluster, core(running.cluster), running.versions[0]
    name, mac = f"v6{running.tag}-new", "0a:58:0a:00:00:17"
    far = {v: FAR[v].format(17) for v in running.versions}
    body = {"metadata": {"name": name, "annotations": {VTEP_MAC: mac}},
            "status": {"addresses": [*({"type": "InternalIP", "address": far[v]} for v in running.versions),
                                     {"type": "Hostname", "address": name}]}}
    try:
        created = last_without = time.monotonic()
        api.create_node(body)
        cidrs: list = []
        while not cidrs and time.monotonic() - created < 30:
            t = time.monotonic()  # the podCIDRs were set after the start of the last read without them
            cidrs = [ipaddress.ip_network(x) for x in api.read_node(name).spec.pod_cidrs or ()]
            last_without = last_without if cidrs else t
        assert [x.version for x in cidrs] == list(running.versions), cidrs
        want = lambda n: all(f"{x} via {x.network_address} dev podwire.vxlan" in routes(n, x.version)  # noqa: E731
                             for x in cidrs)
        routed: dict = {}
        while len(routed) < len(c.nodes) and time.monotonic() - last_without < 10:
            for n in c.nodes:
                if n.name not in routed and want(n):
                    routed[n.name] = time.monotonic() - last_without
            time.sleep(0.05)  # the daemons share the machine's two cores with this loop's `ip` processes
        assert len(routed) == len(c.nodes), f"routed only on {routed}"
        for n in c.nodes:
            assert f"{mac} dst {far[outer]} self permanent" in fdb(n), fdb(n)
            for x in cidrs:
                assert f"{x.network_address} lladdr {mac} PERMANENT" in neighbours(n), neighbours(n)
        report(f"{running.family}: node added, routes of every family on every node {max(routed.values()):.2f} s "
               f"after its podCIDRs at most ({', '.join(f'{k} {v:.2f}' for k, v in routed.items())})")
        assert max(routed.values()) < 2.0, routed

        since = time.monotonic()
        api.delete_node(name)
        gone = lambda: all(  # noqa: E731
            not any(f"{x} " in routes(n, x.version) or f"{x.network_address} lladdr" in neighbours(n) for x in cidrs)
            and f"dst {far[outer]} " not in fdb(n) for n in c.nodes)
        eventually(gone, timeout=10, what="routes, FDB entry and neighbours of the deleted node")
        report(f"{running.family}: node deleted, everything gone on every node after {time.monotonic() - since:.2f} s")
    finally:
        delete_nodes(api, name)


def test_egress_masquerade_to_the_outside_host(running, tmp_path):
    """Pod -> a host outside the cluster leaves with the node's address of that family."""
    c = running.cluster
    n1, outside = c.nodes[0], c.topology.outside
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(4096))
    for v in running.versions:
        dst = str(next(ip for ip in outside.ips if ip.version == v))
        seen, _ = transfer(running.pods["node1"].netns, outside.netns, dst, payload, port=5002)
        assert seen["peer"] == str(next(ip for ip in n1.ips if ip.version == v)), (v, seen)
    table = sh("ip", "netns", "exec", n1.netns, "nft", "list", "table", "ip6", "podwire-egress").stdout
    assert "fd00:10:244::/56" in table, table


def test_daemon_restart_loses_no_packet(running):
    """Every daemon stopped and started again while pods ping every 50 ms, per family, directly
    (node1 -> node3) and over VXLAN (node1 -> node2, node3 -> node2)."""
    c = running.cluster
    p1, p2, p3 = (running.pods[k] for k in ("node1", "node2", "node3"))
    pingers = [Pinger(src.netns, dst.ip(v)) for v in running.versions for src, dst in ((p1, p2), (p1, p3), (p3, p2))]
    try:
        time.sleep(1)
        started = time.monotonic()
        stop_daemons(running.procs, running.dir)
        for n in c.nodes:
            running.procs[n.name] = start_daemon(c, n, running.dir / n.name, running.dir / f"{n.name}.log")
        for n in c.nodes:
            eventually(lambda: healthy(n), timeout=60, what=f"{n.name} daemon back")
        window = time.monotonic() - started
        time.sleep(1)
    finally:
        results = stop_pingers(pingers)
    report(f"{running.family}: daemon restart, all 3 down and back in {window:.1f} s; pings (sent, received): "
           + ", ".join(f"{k} {s}/{r}" for k, (s, r, _) in results.items()))
    assert_no_loss(results)
    for n in c.nodes:
        assert "podwire_dataplane_changes_total 0.0" in metrics(n), metrics(n)
        assert not re.search(r"ERROR|Traceback", running.log(n)), running.log(n)
