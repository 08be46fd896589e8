"""Root tests: the daemon's sync, with real netlink and nft, in namespaced node topologies.

No API server: each node's Daemon reads Node dicts from a plain in-memory cache (the informer's
interface) and programs its node namespace through IPRoute(netns=...) and `nsenter nft`.
"""

import ipaddress
import os
import subprocess
import time

import pytest

from e2e.netbed import OUTSIDE_IP, Netbed, nsexec, sh
from node_daemon.cniconf import CniSettings
from node_daemon.config import Config
from node_daemon.daemon import Daemon
from node_daemon.egress import NftRunner
from node_daemon.metrics import DaemonMetrics
from node_daemon.netlink import NetlinkDataplane
from node_daemon.plan import Mode
from tests.integration.daemon_cluster_helpers import ping_df, too_big

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

CLUSTER = ipaddress.ip_network("10.244.0.0/16")


class Cache:
    """The informer's read interface over a dict the test edits."""

    def __init__(self):
        self.objs = {}

    def list(self):
        return list(self.objs.values())

    def get(self, key):
        return self.objs.get(key)


class Cluster:
    """A testbed plus one Daemon per node sharing one Node cache, as if all watched one API."""

    def __init__(self, bed: Netbed, tmp_path, mode=Mode.AUTO, egress=False):
        from pyroute2 import IPRoute

        self.bed, self.cache, self.daemons, self.iprs = bed, Cache(), {}, []
        for node in bed.nodes:
            ipr = IPRoute(netns=node.netns)
            self.iprs.append(ipr)
            cfg = Config(node_name=node.name, mode=mode, cluster_cidrs=(CLUSTER,) if egress else (),
                         cni=CniSettings(conf_dir=str(tmp_path / node.name)), min_sync_interval=0)
            d = Daemon(cfg, nodes=self.cache, dataplane=NetlinkDataplane(ipr), metrics=DaemonMetrics(),
                       nft=NftRunner(netns_path=f"/run/netns/{node.netns}"))
            self.daemons[node.name] = d
            # each daemon publishes its VTEP MAC on its Node (what NodeWriter does via the API)
            self.cache.objs[node.name] = node.api_object(mac=d.vtep_mac)

    def sync(self):
        for d in self.daemons.values():
            d.sync()

    def close(self):
        for ipr in self.iprs:
            ipr.close()


@pytest.fixture
def bed():
    b = Netbed()
    try:
        yield b
    finally:
        b.close()


def routes(ns):
    return sh("ip", "-n", ns, "route", "show", "proto", "212").stdout


def all_pods_reach_each_other(bed):
    pods = [p for n in bed.nodes for p in n.pods]
    return all(Netbed.ping(src, dst) for src, src_ip in pods for _, dst in pods if dst != src_ip)


def test_auto_mode_direct_on_l2_vxlan_across_the_router(bed, tmp_path):
    n1, n2, n3 = bed.add_node(subnet=0), bed.add_node(subnet=0), bed.add_node(subnet=1)
    for n in (n1, n2, n3):
        bed.add_pod(n)
    c = Cluster(bed, tmp_path)
    try:
        c.sync()
        r1 = routes(n1.netns)
        assert "10.244.2.0/24 via 192.168.50.2 dev eth0" in r1          # same subnet: direct
        assert "10.244.3.0/24 via 10.244.3.0 dev podwire.vxlan" in r1   # routed: overlay
        assert next(line for line in r1.splitlines() if "10.244.3.0/24" in line).strip().endswith("onlink")
        fdb = sh("bridge", "-n", n1.netns, "fdb", "show", "dev", "podwire.vxlan").stdout
        assert f"dst {n3.ip} self permanent" in fdb and n2.ip not in fdb
        neigh = sh("ip", "-n", n1.netns, "neigh", "show", "dev", "podwire.vxlan").stdout
        assert "10.244.3.0 lladdr" in neigh and "PERMANENT" in neigh
        assert all_pods_reach_each_other(bed)
        # node1 needs the overlay (for node3), so its pods get the VXLAN MTU
        assert '"mtu": 1450' in (tmp_path / "node1" / "10-podwire.conflist").read_text()
        assert c.daemons["node1"].metrics.peers.labels("direct")._value.get() == 1
        assert c.daemons["node1"].metrics.peers.labels("vxlan")._value.get() == 1
    finally:
        c.close()


def test_direct_only_l2_keeps_full_mtu_on_the_path(bed, tmp_path):
    n1, n2 = bed.add_node(), bed.add_node()
    (p1, _), (_, ip2) = bed.add_pod(n1), bed.add_pod(n2)
    c = Cluster(bed, tmp_path, mode=Mode.DIRECT)
    try:
        c.sync()
        assert "podwire.vxlan" not in sh("ip", "-n", n1.netns, "link").stdout
        assert '"mtu": 1500' in (tmp_path / "node1" / "10-podwire.conflist").read_text()
        assert ping_df(p1, ip2, 1472)[0]
        ok, out = ping_df(p1, ip2, 1473)
        assert not ok and too_big(out, 1500), out  # refused by the pod's own link
    finally:
        c.close()


def test_vxlan_path_mtu_idempotency_drift_restart_and_peer_removal(bed, tmp_path):
    n1, n2 = bed.add_node(subnet=0), bed.add_node(subnet=1)
    # pods get the underlay MTU on purpose: the path, not the pod's own link, must be the limit
    (p1, _), (_, ip2) = bed.add_pod(n1), bed.add_pod(n2)
    c = Cluster(bed, tmp_path)
    try:
        c.sync()
        assert Netbed.ping(p1, ip2)
        # DF ping at the pod MTU (1450 = 1500 - 50) passes; one byte more is refused on the way
        assert ping_df(p1, ip2, 1450 - 28)[0]
        ok, out = ping_df(p1, ip2, 1450 - 28 + 1)
        assert not ok and "Frag needed and DF set (mtu = 1450)" in out, out  # by node1, on the way

        d1, dp1 = c.daemons["node1"], c.daemons["node1"].dataplane
        desired = d1._last_desired
        # reconcile twice = no change
        assert dp1.apply(desired, "podwire.vxlan").empty
        d1.sync()
        assert d1.metrics.drift_repairs._value.get() == 0

        # drift: a deleted route and a deleted neighbour are put back, and counted
        sh("ip", "-n", n1.netns, "route", "del", "10.244.2.0/24")
        sh("ip", "-n", n1.netns, "neigh", "del", "10.244.2.0", "dev", "podwire.vxlan")
        assert not Netbed.ping(p1, ip2)
        d1.sync()
        assert d1.metrics.drift_repairs._value.get() == 2
        assert Netbed.ping(p1, ip2)

        # a restarted daemon (no memory) adopts what is there and removes a stale route it marked
        sh("ip", "-n", n1.netns, "route", "add", "10.244.99.0/24", "via", "192.168.50.254", "proto", "212")
        fresh = Daemon(d1.cfg, nodes=c.cache, dataplane=dp1, metrics=DaemonMetrics(), nft=d1.nft)
        fresh.sync()
        assert "10.244.99.0" not in routes(n1.netns) and "10.244.2.0/24" in routes(n1.netns)
        assert fresh.metrics.dataplane_changes._value.get() == 1

        # node2 deleted: its route, FDB entry and neighbour go
        del c.cache.objs["node2"]
        d1.sync()
        assert routes(n1.netns).strip() == ""
        assert "dst" not in sh("bridge", "-n", n1.netns, "fdb", "show", "dev", "podwire.vxlan").stdout
        assert "lladdr" not in sh("ip", "-n", n1.netns, "neigh", "show", "dev", "podwire.vxlan").stdout
        # the conflist MTU follows: no peer needs the overlay any more
        assert '"mtu": 1500' in (tmp_path / "node1" / "10-podwire.conflist").read_text()
    finally:
        c.close()


def test_mode_vxlan_on_l2_and_switch_to_direct_removes_the_device(bed, tmp_path):
    n1, n2 = bed.add_node(), bed.add_node()
    (p1, _), (_, ip2) = bed.add_pod(n1), bed.add_pod(n2)
    c = Cluster(bed, tmp_path, mode=Mode.VXLAN)
    try:
        c.sync()
        assert "dev podwire.vxlan" in routes(n1.netns)
        assert ping_df(p1, ip2, 1422)[0]
        ok, out = ping_df(p1, ip2, 1423)
        assert not ok and "Frag needed and DF set (mtu = 1450)" in out, out
        # same kernel state, daemon restarted in mode direct: overlay state replaced by a direct route
        import dataclasses

        d1 = c.daemons["node1"]
        direct = Daemon(dataclasses.replace(d1.cfg, mode=Mode.DIRECT), nodes=c.cache,
                        dataplane=d1.dataplane, metrics=DaemonMetrics())
        direct.sync()
        assert "podwire.vxlan" not in sh("ip", "-n", n1.netns, "link").stdout
        assert "10.244.2.0/24 via 192.168.50.2 dev eth0" in routes(n1.netns)
    finally:
        c.close()


def serve_peer_address(ns, port):
    """A TCP server in `ns` that answers each connection with the client address it sees."""
    return subprocess.Popen(nsexec(ns, "socat", f"TCP-LISTEN:{port},fork,reuseaddr",
                                   "SYSTEM:echo $SOCAT_PEERADDR"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def seen_by(ns_from, ip, port):
    for _ in range(20):
        out = sh(*nsexec(ns_from, "socat", "-T", "2", "-", f"TCP:{ip}:{port},connect-timeout=2"),
                 check=False).stdout.strip()
        if out:
            return out
        time.sleep(0.1)
    return ""


def test_egress_masquerade_to_outside_but_pod_to_pod_and_pod_to_node_keep_source(bed, tmp_path):
    n1, n2 = bed.add_node(), bed.add_node(subnet=1)
    (p1, ip1), (p2, ip2) = bed.add_pod(n1), bed.add_pod(n2)
    outside = bed.add_outside()
    c = Cluster(bed, tmp_path, egress=True)
    servers = [serve_peer_address(outside, 7000), serve_peer_address(p2, 7001),
               serve_peer_address(n2.netns, 7002)]
    try:
        assert not Netbed.ping(p1, OUTSIDE_IP)  # no masquerade yet: the outside cannot answer
        c.sync()
        assert "table ip podwire-egress" in sh(*nsexec(n1.netns, "nft", "list", "tables")).stdout
        assert seen_by(p1, OUTSIDE_IP, 7000) == n1.ip
        assert seen_by(p1, ip2, 7001) == ip1
        assert seen_by(p1, n2.ip, 7002) == ip1
        # a periodic resync re-applies the same ruleset atomically (repairs a deleted table)
        sh(*nsexec(n1.netns, "nft", "delete", "table", "ip", "podwire-egress"))
        c.daemons["node1"]._egress_at = float("-inf")
        c.daemons["node1"].sync()
        assert seen_by(p1, OUTSIDE_IP, 7000) == n1.ip
    finally:
        for s in servers:
            s.kill()
            s.wait()
        c.close()


def test_dual_stack_direct_and_inner_v6_over_the_v4_overlay(tmp_path):
    bed = Netbed(dual_stack=True)
    c = None
    try:
        n1, n2, n3 = bed.add_node(subnet=0), bed.add_node(subnet=0), bed.add_node(subnet=1)
        for n in (n1, n2, n3):
            bed.add_pod(n)
        c = Cluster(bed, tmp_path)
        c.sync()
        r6 = sh("ip", "-n", n1.netns, "-6", "route", "show", "proto", "212").stdout
        assert "fd10:244:2::/64 via fd00:50::2 dev eth0" in r6
        assert "fd10:244:3::/64 via fd10:244:3:: dev podwire.vxlan" in r6
        addrs = sh("ip", "-n", n1.netns, "addr", "show", "dev", "podwire.vxlan").stdout
        assert "10.244.1.0/32" in addrs and "fd10:244:1::/128" in addrs
        pods6 = [p for n in bed.nodes for p in n.pods6]
        assert all(Netbed.ping(src, dst) for src, src_ip in pods6 for _, dst in pods6 if dst != src_ip)
        assert all_pods_reach_each_other(bed)
        # the rendered conflist carries both ranges, IPv4 first as in spec.podCIDRs
        conf = c.daemons["node1"].cfg.cni.path
        assert '"subnet": "fd10:244:1::/64"' in open(conf).read()
        assert c.daemons["node1"].dataplane.apply(c.daemons["node1"]._last_desired, "podwire.vxlan").empty
    finally:
        if c:
            c.close()
        bed.close()
