"""NetworkPolicy end to end on the harness: real API server, `python3 -m node_daemon --policy` per
node, pods attached by the real CNI plugin (from source) with the daemon's conflist, real traffic.

    node1: server (app=server, listens 8080 and 8081), other (app=other)      same bridge
    node2: frontend (app=frontend)                                            across nodes

Pods are API objects bound to their node (no kubelet here: the test writes status.podIPs after the
ADD, as kubelet would). The CNI ADD waits on the daemon's policy socket (policy/gate.py), so the
first check runs right after the ADD returns, without polling: the rules must already be in force.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

from e2e.netbed import eventually, nsexec, sh
from tests.integration.daemon_cluster_helpers import core, kill_leftovers, stop_daemons
from tests.integration.policy_cluster_helpers import Pods, connects, policy_cluster, serve, start_policy_daemons

# echoes a line every 50 ms over one TCP connection; prints "echo" once it works and exits 3 when no
# echo arrives for 2 s (the connection was cut)
CHATTER = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
first = True
while True:
    s.sendall(b"x\n")
    try:
        if not s.recv(100):
            sys.exit(3)
    except OSError:
        sys.exit(3)
    if first:
        print("echo", flush=True)
        first = False
    time.sleep(0.05)
"""

pytestmark = [pytest.mark.root, pytest.mark.cluster,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

@pytest.fixture(scope="module")
def cluster():
    with policy_cluster("pol") as c:
        yield c


def test_policy_is_in_force_when_the_add_returns_and_follows_changes(cluster, tmp_path):
    from kubernetes import client

    tag = secrets.token_hex(2)
    n1, n2 = cluster.nodes
    api = core(cluster)
    net = client.NetworkingV1Api(cluster.api_client())
    nsname = f"pw-pol-{tag}"
    api.create_namespace({"metadata": {"name": nsname, "labels": {"team": "a"}}})
    pods = Pods(cluster, tmp_path, tag)
    servers: list = []
    procs = {}
    try:
        net.create_namespaced_network_policy(nsname, {
            "metadata": {"name": "server-from-frontend"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}],
                                  "ports": [{"port": "http", "protocol": "TCP"}]}]}})
        uids = {"server": pods.create(nsname, "server", n1, {"app": "server"}, [("http", 8080)]),
                "other": pods.create(nsname, "other", n1, {"app": "other"}),
                "frontend": pods.create(nsname, "frontend", n2, {"app": "frontend"})}
        procs = start_policy_daemons(cluster, tmp_path)

        server_ns, server_ip, _ = pods.attach(nsname, "server", n1, uids["server"])
        servers = serve(server_ns, 8080, 8081)
        eventually(lambda: sh(*nsexec(server_ns, "ss", "-ltn")).stdout.count("LISTEN") >= 2, what="listening")
        other_ns, _, _ = pods.attach(nsname, "other", n1, uids["other"])
        # no polling: the ADD returned, so the denial must already hold (same node: bridged)
        assert not connects(other_ns, server_ip, 8080), "other -> server:8080 must be denied"
        # ... and the denial is visible: one log line naming both pods and why, and a counter
        eventually(lambda: f"denied ingress tcp {nsname}/other" in (tmp_path / f"{n1.name}.log").read_text(),
                   timeout=5, what="deny log line")
        line = [x for x in (tmp_path / f"{n1.name}.log").read_text().splitlines() if "denied ingress" in x][0]
        assert f"{nsname}/server {server_ip}:8080" in line and "server-from-frontend" in line, line
        assert f'podwire_policy_denied_total{{direction="ingress",namespace="{nsname}"}}' in sh(
            *nsexec(n1.netns, "curl", "-s", "127.0.0.1:19465/metrics")).stdout
        front_ns, _, _ = pods.attach(nsname, "frontend", n2, uids["frontend"])
        # across nodes the server's node learns frontend's IP from the API: allowed soon after
        assert eventually(lambda: connects(front_ns, server_ip, 8080), timeout=10, what="frontend -> server:8080")
        assert not connects(front_ns, server_ip, 8081), "only the named port is allowed"
        # the node itself (kubelet probes) is never policed
        assert sh(*nsexec(n1.netns, "socat", "-T", "1", "-", f"TCP:{server_ip}:8081,connect-timeout=1"),
                  check=False).stdout.strip() == "hi-8081"
        # bridged traffic reaches the table only through the bridge's own switch, set at creation
        assert "nf_call_iptables 1" in sh("ip", "-d", "-n", n1.netns, "link", "show", "podwire0").stdout

        # a label change makes other a frontend: allowed
        api.patch_namespaced_pod("other", nsname, {"metadata": {"labels": {"app": "frontend"}}})
        assert eventually(lambda: connects(other_ns, server_ip, 8080), timeout=5, what="relabelled other")
        # the policy goes: everything is allowed
        net.delete_namespaced_network_policy("server-from-frontend", nsname)
        assert eventually(lambda: connects(front_ns, server_ip, 8081), timeout=5, what="policy deleted")

        # a long-lived connection frontend -> server (an echo, one line every 50 ms) ...
        servers.append(subprocess.Popen(nsexec(server_ns, "socat", "TCP-LISTEN:8082,fork,reuseaddr", "EXEC:cat"),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        eventually(lambda: ":8082" in sh(*nsexec(server_ns, "ss", "-ltn")).stdout, what="echo server")
        chatter = subprocess.Popen(nsexec(front_ns, sys.executable, "-c", CHATTER, server_ip, "8082"),
                                   stdout=subprocess.PIPE, text=True)
        servers.append(chatter)
        assert chatter.stdout.readline().strip() == "echo", "the long-lived connection works"
        # a deny-all: denies new connections at once, and cuts the established one (its conntrack
        # entry is deleted in the same sync; without that, `ct state established` would keep it)
        net.create_namespaced_network_policy(nsname, {
            "metadata": {"name": "deny-all"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
        assert eventually(lambda: not connects(other_ns, server_ip, 8080), timeout=5, what="deny-all")
        assert chatter.wait(timeout=10) == 3, "the established connection was cut"
        metrics = sh(*nsexec(n1.netns, "curl", "-s", "127.0.0.1:19465/metrics")).stdout
        assert 'podwire_policy_isolated_pods{direction="ingress"} 2.0' in metrics, metrics[-2000:]

        # daemon down: a new pod in a namespace holding policies must not start (code 11, undone) ...
        stop_daemons({n1.name: procs.pop(n1.name)}, tmp_path)
        late_uid = pods.create(nsname, "late", n1, {"app": "late"})
        _, ip, out = pods.attach(nsname, "late", n1, late_uid, expect_ok=False)
        assert ip is None and json.loads(out)["code"] == 11, out
        # ... while one in a namespace without policies goes ahead
        free_uid = pods.create("default", f"free-{tag}", n1, {"app": "free"})
        _, ip, _ = pods.attach("default", f"free-{tag}", n1, free_uid)
        assert ip
        stop_daemons(procs, tmp_path)
    finally:
        for p in servers:
            p.kill()
            p.wait()
        kill_leftovers({k: v for k, v in procs.items() if v is not None})
        pods.close()
        api.delete_namespace(nsname)
