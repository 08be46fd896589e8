#!/usr/bin/env python3
"""Benchmark: first-connection latency through a ClusterIP with few and with many Services
programmed, against connecting straight to the pod IP, in the same run. Needs root; makes
and deletes its own namespaces (pws-*).

    client --eth0-- node0 (10 Services)  --veth-- pod 10.0.2.2:8080
           --eth1-- node1 (10k Services) --veth-- pod 10.1.2.2:8080

One node namespace per size ("lane"), each with the proxy's table holding that many Services
(N x 2 endpoints, programmed as the Proxier does: Planner + TableSyncer, one transaction), one
of them pointing at the lane's pod. One client process connects round-robin, connection by
connection, to every lane's ClusterIP and pod IP, so machine noise (two shared cores here; the
latency is bimodal depending on where the softirq runs) hits every target alike. A sample is
one TCP connect() (SYN -> SYN-ACK: the first packet of a flow is the one that walks the NAT
rules).

    python3 bench/proxy_latency.py [--sizes 10,10000] [--conns 5000]

Target: the ClusterIP's p50 at 10k within 10% of its p50 at 10 (lookup cost constant in N).
kube-proxy is not run here: its Services must come through an API server (see the report).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from proxy.model import Endpoint, EndpointPort, EndpointSlice, NodeInfo, ProxyConfig, Service, ServicePort  # noqa: E402
from proxy.plan import Planner  # noqa: E402
from proxy.sync import NftRunner, TableSyncer  # noqa: E402

NODE = NodeInfo("node-a")
CONFIG = ProxyConfig(cluster_cidrs=(ipaddress.ip_network("10.0.0.0/8"),))
PORT = 8080

SERVER = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(4096)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""

# stdin: one JSON [[dst, port], ...], n per line; stdout: per target, its connect() seconds
CLIENT = r"""
import itertools, json, socket, struct, sys, time
LINGER0 = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT, no port exhaustion
ports = itertools.count(int(sys.argv[1]))
print("ready", flush=True)
for line in sys.stdin:
    targets, n = json.loads(line)
    out = [[] for _ in targets]
    for _ in range(n):
        for i, (dst, port) in enumerate(targets):
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            # a fresh source port every time: reusing the last one would meet its conntrack
            # entry (CLOSE) and measure the kernel tearing that down, not the rule walk
            sport = 20000 + next(ports) % 40000
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("", sport))
            t0 = time.perf_counter(); s.connect((dst, port)); out[i].append(time.perf_counter() - t0)
            s.close()
    print(json.dumps(out), flush=True)
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def nsexec(ns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


def objects(n: int, lane: int, pod: str):
    """n ClusterIP Services x 2 endpoints in 172.(16+lane).0.0/16; the middle one's endpoint
    is the lane's pod. Returns (services, slices by Service, the middle ClusterIP)."""
    base_svc = int(ipaddress.ip_address(f"172.{16 + lane}.0.0"))
    base_ep = int(ipaddress.ip_address("10.128.0.0"))
    services, slices = {}, {}
    target = n // 2
    for i in range(n):
        ns, name = f"ns{i % 50}", f"svc{i}"
        svc = Service(ns, name, "ClusterIP", (ipaddress.ip_address(base_svc + i),),
                      (ServicePort("http", "TCP", 80),))
        if i == target:
            eps = (Endpoint((ipaddress.ip_address(pod),), node_name="node-a"),)
        else:
            eps = tuple(Endpoint((ipaddress.ip_address(base_ep + 2 * i + k),), node_name=f"node-{k}")
                        for k in range(2))
        services[svc.key] = svc
        slices[svc.key] = [EndpointSlice(ns, f"{name}-x", name, 4, eps, (EndpointPort("http", "TCP", PORT),))]
    return services, slices, str(ipaddress.ip_address(base_svc + target))


class Bed:
    def __init__(self, sizes: list[int]):
        self.sfx = uuid.uuid4().hex[:6]
        self.made, self.procs = [], []
        self.client = self._netns("c")
        self.lanes = []  # (size, vip, pod, full sync seconds)
        try:
            for lane, n in enumerate(sizes):
                self.lanes.append(self._lane(lane, n))
            self.client_proc = self._spawn(self.client, CLIENT, str(os.getpid() * 7919), stdin=subprocess.PIPE)
        except BaseException:
            self.close()
            raise

    def _netns(self, suffix: str) -> str:
        ns = f"pws-l{suffix}-{self.sfx}"
        sh("ip", "netns", "add", ns)
        self.made.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def _lane(self, lane: int, n: int):
        node, podns = self._netns(f"n{lane}"), self._netns(f"p{lane}")
        pod = f"10.{lane}.2.2"
        sh("ip", "-n", node, "link", "add", "toc", "type", "veth", "peer", "name", f"eth{lane}",
           "netns", self.client)
        sh("ip", "-n", node, "link", "add", "tos", "type", "veth", "peer", "name", "eth0", "netns", podns)
        for ns, dev, addr in ((node, "toc", f"10.{lane}.1.1/24"), (node, "tos", f"10.{lane}.2.1/24"),
                              (self.client, f"eth{lane}", f"10.{lane}.1.2/24"), (podns, "eth0", f"{pod}/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for dst in (f"172.{16 + lane}.0.0/16", f"10.{lane}.2.0/24"):
            sh("ip", "-n", self.client, "route", "add", dst, "via", f"10.{lane}.1.1")
        sh("ip", "-n", podns, "route", "add", "default", "via", f"10.{lane}.2.1")
        sh(*nsexec(node, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
        self._spawn(podns, SERVER)
        services, slices, vip = objects(n, lane, pod)
        t0 = time.perf_counter()
        TableSyncer(NftRunner(f"/run/netns/{node}")).sync(Planner(4).plan(services, slices, NODE, CONFIG))
        return n, vip, pod, time.perf_counter() - t0

    def _spawn(self, ns: str, code: str, *args: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(nsexec(ns, sys.executable, "-c", code, *args), stdout=subprocess.PIPE, text=True, **kw)
        self.procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        return p

    def connects(self, targets: list[tuple[str, int]], n: int) -> list[list[float]]:
        self.client_proc.stdin.write(json.dumps([targets, n]) + "\n")
        self.client_proc.stdin.flush()
        return json.loads(self.client_proc.stdout.readline())

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,10000")
    ap.add_argument("--conns", type=int, default=5000, help="connections per target")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in a.sizes.split(",")]
    bed = Bed(sizes)
    try:
        targets = [t for _, vip, pod, _ in bed.lanes for t in ((vip, 80), (pod, PORT))]
        bed.connects(targets, 100)  # warm up: ARP, caches, the client's code paths
        got = bed.connects(targets, a.conns)
    finally:
        bed.close()
    p50 = {}
    for k, (n, _, _, took) in enumerate(bed.lanes):
        vip_s, pod_s = got[2 * k], got[2 * k + 1]
        p50[n] = pct(vip_s, .5)
        print(f"{n:>6} services (full sync {took:5.2f}s): "
              f"ClusterIP p50 {pct(vip_s, .5) * 1e6:6.1f}us p99 {pct(vip_s, .99) * 1e6:6.1f}us | "
              f"pod IP p50 {pct(pod_s, .5) * 1e6:6.1f}us p99 {pct(pod_s, .99) * 1e6:6.1f}us", flush=True)
    if len(sizes) >= 2:
        ratio = p50[sizes[-1]] / p50[sizes[0]]
        print(f"ClusterIP p50, {sizes[-1]} vs {sizes[0]} services: x{ratio:.3f}; "
              f"target within 10%: {'met' if ratio <= 1.10 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
