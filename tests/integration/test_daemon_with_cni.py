"""Root test: the daemon's conflist drives the real podwire CNI plugin; its pods talk across nodes.

The CNI config each node's daemon writes is handed, plugin entry by entry as a runtime does, to
`python3 -m cni_plugin` (the lead's plugin, not a frozen build) to attach pod namespaces: the
plugin makes the bridge, veths (with the daemon's pod MTU) and host-local addresses; the
daemon's routes, VXLAN and egress masquerade carry the traffic.
"""

import ipaddress
import json
import os
import stat
import subprocess
import sys

import pytest

from e2e.netbed import OUTSIDE_IP, Netbed, nsexec, sh
from node_daemon.plan import Mode
from tests.integration.cni_harness import daemon_conf
from tests.integration.daemon_cluster_helpers import ping_df, too_big
from tests.integration.test_daemon_dataplane import Cluster

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def plugin(tmp_path):
    """An executable that runs the plugin from this checkout (what CNI_PATH would hold)."""
    path = tmp_path / "podwire"
    path.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m cni_plugin\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def cni_add(plugin, node, conflist_path, pod_ns, cid, tmp_path):
    conflist = json.loads(open(conflist_path).read())
    assert len(conflist["plugins"]) == 1  # podwire does portMappings itself: one plugin
    # as containerd 2.x runs it, with the conflist's host paths redirected to this test's directory
    conf = daemon_conf(conflist_path, tmp_path / node.name, negotiate=True)
    assert conf["cniVersion"] == "1.1.0"
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": "ADD",
           "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod_ns}", "CNI_IFNAME": "eth0",
           "CNI_PATH": os.path.dirname(plugin)}
    proc = subprocess.run(nsexec(node.netns, plugin), input=json.dumps(conf), capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    return result["ips"][0]["address"].split("/")[0], result


def test_plugin_pods_across_nodes_with_the_daemons_conflist(plugin, tmp_path):
    bed = Netbed(pod_bridge=False)
    c = None
    try:
        n1, n2, n3 = bed.add_node(subnet=0), bed.add_node(subnet=1), bed.add_node(subnet=0)
        bed.add_outside()  # the egress check below pings it
        c = Cluster(bed, tmp_path, mode=Mode.AUTO, egress=True)
        c.sync()
        pods = {}
        for n in (n1, n2, n3):
            ns = bed.add_netns(f"{n.name}-pod")
            ip, result = cni_add(plugin, n, c.daemons[n.name].cfg.cni.path, ns, f"cid-{n.name}", tmp_path)
            assert ipaddress.ip_address(ip) in n.pod_cidr
            pods[n.name] = (ns, ip, result)
        # the plugin applied the daemon's MTU: node1 needs the overlay (node2 is routed)
        assert "mtu 1450" in sh("ip", "-n", pods["node1"][0], "link", "show", "eth0").stdout
        for a, (src, _, _) in pods.items():
            for b, (_, dst, _) in pods.items():
                if a != b:
                    assert Netbed.ping(src, dst), f"{a} -> {b}"
        p1, _, _ = pods["node1"]
        ip2 = pods["node2"][1]
        assert ping_df(p1, ip2, 1450 - 28)[0]
        ok, out = ping_df(p1, ip2, 1450 - 28 + 1)
        assert not ok and too_big(out, 1450), out
        # egress: the outside host answers the pod through the node's address
        assert Netbed.ping(p1, OUTSIDE_IP)
        assert {i.get("mtu") for i in pods["node1"][2]["interfaces"] if "sandbox" in i} == {1450}
    finally:
        if c:
            c.close()
        bed.close()
