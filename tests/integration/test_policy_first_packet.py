"""Issue 11's first-packet proof: 200 selected pods start under continuous probers; not one packet
the policy denies is delivered, in either direction, while allowed and unselected traffic flows.

    node1: prober (app=prober, sprays UDP :9000 at every address of node1's podCIDR, every 10 ms)
           allowed (app=allowed, sprays UDP :8080, the one port the policy allows from it)
           200 targets (app=target), 20 free pods (app=free, no policy selects them)
    node2: prober2 (the same spray, across nodes), sink (counts what it receives)
    policy "targets": selects app=target; ingress only from app=allowed on UDP 8080; egress nothing.

Counting is the kernel's: each target's namespace has a counter (an nft table inside the pod's own
netns, made before its ADD) of packets from the probers; the sink counts packets from the targets,
which one sender process emits from inside every target's namespace from the moment it exists
(before its interface does). Expected: 0 and 0. The positive controls keep the test able to fail:
every target counts packets from `allowed`, and every free pod counts packets from the prober.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from e2e.netbed import nsexec, sh
from tests.integration.daemon_cluster_helpers import core, kill_leftovers, stop_daemons
from tests.integration.policy_cluster_helpers import Pods, policy_cluster, start_policy_daemons

pytestmark = [pytest.mark.root, pytest.mark.cluster,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

TARGETS, FREE = 200, 20

SPRAY = r"""
import socket, sys, time
prefix, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)
while True:
    for i in range(2, 255):
        try: s.sendto(b"x", (prefix + str(i), port))
        except OSError: pass
    time.sleep(0.01)
"""

# One process sends from inside every namespace listed in a file, as soon as the namespace exists:
# a socket keeps the namespace it was made in, so setns, socket, setns back.
EGRESS = r"""
import ctypes, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
listing, sink, me = sys.argv[1], sys.argv[2], os.open("/proc/self/ns/net", os.O_RDONLY)
socks = {}
while True:
    try: names = open(listing).read().split()
    except OSError: names = []
    for n in names:
        if n not in socks and os.path.exists("/run/netns/" + n):
            fd = os.open("/run/netns/" + n, os.O_RDONLY)
            libc.setns(fd, 0x40000000); os.close(fd)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)
            libc.setns(me, 0x40000000)
            socks[n] = s
    for s in socks.values():
        try: s.sendto(b"y", (sink, 9100))
        except OSError: pass
    time.sleep(0.01)
"""


def counter_table(ns: str, rules: list[str]) -> None:
    body = "\n".join(f"    {r} counter" for r in rules)
    subprocess.run(nsexec(ns, "nft", "-f", "-"), check=True, text=True, input=(
        f"table inet count {{\n  chain input {{\n    type filter hook input priority 0;\n{body}\n  }}\n}}\n"))


def counters(ns: str) -> list[int]:
    out = sh(*nsexec(ns, "nft", "list", "chain", "inet", "count", "input")).stdout
    return [int(line.split("packets ")[1].split()[0]) for line in out.splitlines() if "packets " in line]


@pytest.fixture(scope="module")
def cluster():
    with policy_cluster("pfp") as c:
        yield c


def test_200_selected_pods_never_see_a_denied_packet(cluster, tmp_path):
    from kubernetes import client

    tag = secrets.token_hex(2)
    n1, n2 = cluster.nodes
    api = core(cluster)
    nsname = f"pw-fp-{tag}"
    api.create_namespace({"metadata": {"name": nsname}})
    pods = Pods(cluster, tmp_path, tag)
    procs: dict = {}
    workers: list[subprocess.Popen] = []
    listing = tmp_path / "targets.txt"
    listing.write_text("")
    try:
        client.NetworkingV1Api(cluster.api_client()).create_namespaced_network_policy(nsname, {
            "metadata": {"name": "targets"},
            "spec": {"podSelector": {"matchLabels": {"app": "target"}}, "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "allowed"}}}],
                                  "ports": [{"port": 8080, "protocol": "UDP"}]}]}})
        procs = start_policy_daemons(cluster, tmp_path)
        prefix1 = str(n1.pod_cidr.network_address)[:-1]  # "10.244.0."
        infra = {}
        for name, node, app in (("prober", n1, "prober"), ("allowed", n1, "allowed"),
                                ("prober2", n2, "prober"), ("sink", n2, "sink")):
            uid = pods.create(nsname, name, node, {"app": app})
            infra[name] = pods.attach(nsname, name, node, uid)[:2]
        sink_ns, sink_ip = infra["sink"]
        prober_ips = {pods.ips["prober"], pods.ips["prober2"]}
        counter_table(sink_ns, [f"ip saddr {prefix1}0/24 ip saddr != {{ {pods.ips['allowed']}, "
                                f"{pods.ips['prober']} }} udp dport 9100"])
        workers += [subprocess.Popen(nsexec(infra[p][0], sys.executable, "-c", SPRAY, prefix1, port))
                    for p, port in (("prober", "9000"), ("prober2", "9000"), ("allowed", "8080"))]
        workers.append(subprocess.Popen([sys.executable, "-c", EGRESS, str(listing), sink_ip]))

        def start(i: int, app: str):
            name = f"{app}-{i}"
            uid = pods.create(nsname, name, n1, {"app": app})
            ns = f"pwp-{tag}-{name}"
            sh("ip", "netns", "add", ns)
            pods.netns.append(ns)
            # the pod's own counters exist before its interface: nothing can arrive uncounted
            counter_table(ns, [f"ip saddr {{ {', '.join(sorted(prober_ips))} }} udp dport 9000",
                               f"ip saddr {pods.ips['allowed']} udp dport 8080"])
            if app == "target":
                with open(listing, "a") as f:
                    f.write(ns + "\n")
            pods.attach(nsname, name, n1, uid)
            return ns

        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            targets = list(pool.map(lambda i: start(i, "target"), range(TARGETS)))
            free = list(pool.map(lambda i: start(i, "free"), range(FREE)))
        took = time.monotonic() - started
        time.sleep(2)  # the probers' packets of the last pods' first seconds arrive and are counted
        from_probers = {ns: counters(ns)[0] for ns in targets}
        from_allowed = {ns: counters(ns)[1] for ns in targets}
        leaked = counters(sink_ns)[0]
        print(f"\n{TARGETS} targets + {FREE} free pods started in {took:.1f} s; "
              f"denied delivered: ingress {sum(from_probers.values())}, egress {leaked}; "
              f"allowed delivered to targets: min {min(from_allowed.values())}")
        assert sum(from_probers.values()) == 0, {k: v for k, v in from_probers.items() if v}
        assert leaked == 0
        assert all(from_allowed.values()), "the allowed sender reached every target"
        assert all(counters(ns)[0] for ns in free), "unselected pods hear the probers"
        stop_daemons(procs, tmp_path)
    finally:
        for w in workers:
            w.kill()
            w.wait()
        kill_leftovers(procs)
        pods.close()
        api.delete_namespace(nsname)
