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

    python3 bench/proxy_latency.py [--sizes 10,10000] [--conns 5000] [--family ipv6]

--family ipv6 (issue 15): the same with IPv6 everywhere (the client, nodes and pods on fd00:L:1::/64 and
fd00:L:2::/64, ClusterIPs in fd00:172:(16+L)::/112, the proxy's ip6 table).

Target: the ClusterIP's p50 at 10k within 10% of its p50 at 10 (lookup cost constant in N).

    python3 bench/proxy_latency.py --cluster [--sizes 10,10000]

The same against kube-proxy (nftables mode, the harness' built binary) on the e2e harness:
node1 runs kube-proxy, node2 podwire's daemon with --proxy, both fed by one API server. The
Services (and their EndpointSlices, written as the controller would) are created through the
API; per node a client pod and a server pod on the node's bridge, and a target Service whose
endpoint is that server pod. Both nodes' clients are measured batch by batch, interleaved.
Also reported: from the last API write of a size step until each proxy serves it.
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
CONFIG = ProxyConfig(cluster_cidrs=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/16")))
PORT = 8080

SERVER = r"""
import socket
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 8080)); s.listen(4096)  # both families (dual-stack socket)
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
            fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
            s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            # a fresh source port every time: reusing the last one would meet its conntrack
            # entry (CLOSE) and measure the kernel tearing that down, not the rule walk
            while True:
                sport = 20000 + next(ports) % 40000
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("", sport))
                    t0 = time.perf_counter(); s.connect((dst, port)); out[i].append(time.perf_counter() - t0)
                    break
                except OSError:  # that port is still taken (e.g. TIME_WAIT of another tool): the next
                    s.close()
                    s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            s.close()
    print(json.dumps(out), flush=True)
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


CPU = "0"  # client and servers share one CPU (see pinned())


def nsexec(ns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


def pinned(ns: str, *argv: str) -> list[str]:
    """A benchmark process pinned to CPU. The measured connect() includes waking the server
    blocked in accept() (the handshake's last ACK is delivered inside the same softirq), which
    costs about twice as much when the server sleeps on the other CPU: unpinned, each lane got
    a placement of its own and the lanes differed by x2 with no proxy involved at all."""
    return nsexec(ns, "taskset", "-c", CPU, *argv)


def lane_addresses(lane: int, family: int) -> dict:
    """The lane's addresses: node side to the client, node side to the pod, the client, the pod, and the
    ClusterIP range, in `family`."""
    if family == 6:
        return {"toc": f"fd00:{lane}:1::1/64", "tos": f"fd00:{lane}:2::1/64", "client": f"fd00:{lane}:1::2/64",
                "pod": f"fd00:{lane}:2::2", "pod_len": 64, "pod_net": f"fd00:{lane}:2::/64",
                "svc_net": f"fd00:172:{16 + lane}::/112", "ep_base": "fd00:128::"}
    return {"toc": f"10.{lane}.1.1/24", "tos": f"10.{lane}.2.1/24", "client": f"10.{lane}.1.2/24",
            "pod": f"10.{lane}.2.2", "pod_len": 24, "pod_net": f"10.{lane}.2.0/24",
            "svc_net": f"172.{16 + lane}.0.0/16", "ep_base": "10.128.0.0"}


def objects(n: int, lane: int, pod: str, family: int = 4):
    """n ClusterIP Services x 2 endpoints in the lane's ClusterIP range; the middle one's endpoint
    is the lane's pod. Returns (services, slices by Service, the middle ClusterIP)."""
    a = lane_addresses(lane, family)
    base_svc = int(ipaddress.ip_network(a["svc_net"]).network_address)
    base_ep = int(ipaddress.ip_address(a["ep_base"]))
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
        slices[svc.key] = [EndpointSlice(ns, f"{name}-x", name, family, eps, (EndpointPort("http", "TCP", PORT),))]
    return services, slices, str(ipaddress.ip_address(base_svc + target))


class Bed:
    def __init__(self, sizes: list[int], family: int = 4):
        self.sfx, self.family = uuid.uuid4().hex[:6], family
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
        a = lane_addresses(lane, self.family)
        pod, nodad = a["pod"], ["nodad"] if self.family == 6 else []
        sh("ip", "-n", node, "link", "add", "toc", "type", "veth", "peer", "name", f"eth{lane}",
           "netns", self.client)
        sh("ip", "-n", node, "link", "add", "tos", "type", "veth", "peer", "name", "eth0", "netns", podns)
        for ns, dev, addr in ((node, "toc", a["toc"]), (node, "tos", a["tos"]),
                              (self.client, f"eth{lane}", a["client"]), (podns, "eth0", f"{pod}/{a['pod_len']}")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev, *nodad)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for dst in (a["svc_net"], a["pod_net"]):
            sh("ip", "-n", self.client, "route", "add", dst, "via", a["toc"].split("/")[0])
        sh("ip", "-n", podns, "route", "add", "default", "via", a["tos"].split("/")[0])
        sh(*nsexec(node, "sysctl", "-qw", "net.ipv4.ip_forward=1" if self.family == 4 else
                   "net.ipv6.conf.all.forwarding=1"))
        self._spawn(podns, SERVER)
        services, slices, vip = objects(n, lane, pod, self.family)
        t0 = time.perf_counter()
        TableSyncer(NftRunner(f"/run/netns/{node}")).sync(Planner(self.family).plan(services, slices, NODE, CONFIG))
        return n, vip, pod, time.perf_counter() - t0

    def _spawn(self, ns: str, code: str, *args: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(pinned(ns, sys.executable, "-c", code, *args), stdout=subprocess.PIPE, text=True, **kw)
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
    ap.add_argument("--cluster", action="store_true", help="kube-proxy vs podwire on the e2e harness")
    ap.add_argument("--family", choices=("ipv4", "ipv6"), default="ipv4", help="the local lanes' family")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.cluster:
        return run_cluster(sizes, a.conns)
    bed = Bed(sizes, 6 if a.family == "ipv6" else 4)
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


# ---- kube-proxy vs podwire on the e2e harness (--cluster) ------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILLER_NET = int(ipaddress.ip_address("10.250.0.0"))  # fake endpoints of the filler Services


class ClusterPod:
    """A pod namespace (pws-*) on the node's bridge `pwb0` (gateway = podCIDR .1)."""

    def __init__(self, node, name: str, index: int):
        cidr = node.pod_cidr
        self.node, self.ip, gw = node, str(cidr.network_address + index), str(cidr.network_address + 1)
        self.netns, host = f"pws-{uuid.uuid4().hex[:6]}-{name}", f"vb{name}"
        sh("ip", "netns", "add", self.netns)
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        if subprocess.run(["ip", "-n", node.netns, "link", "show", "pwb0"], capture_output=True).returncode:
            sh("ip", "-n", node.netns, "link", "add", "pwb0", "type", "bridge")
            sh("ip", "-n", node.netns, "addr", "add", f"{gw}/{cidr.prefixlen}", "dev", "pwb0")
            sh("ip", "-n", node.netns, "link", "set", "pwb0", "up")
        sh("ip", "-n", node.netns, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        sh("ip", "-n", node.netns, "link", "set", host, "master", "pwb0", "up")
        sh("ip", "-n", self.netns, "addr", "add", f"{self.ip}/{cidr.prefixlen}", "dev", "eth0")
        sh("ip", "-n", self.netns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.netns, "route", "add", "default", "via", gw)
        self.procs: list[subprocess.Popen] = []

    def spawn(self, code: str, *args: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(pinned(self.netns, sys.executable, "-c", code, *args), stdout=subprocess.PIPE,
                             text=True, **kw)
        self.procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        return p

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        subprocess.run(["ip", "netns", "del", self.netns], check=False)


def _create_services(api, names_eps: list[tuple[str, list[str], str]], workers: int = 6) -> None:
    """Services + their EndpointSlices (name, endpoint IPs, nodeName), a few writers at once."""
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client

    core, disc = client.CoreV1Api(api), client.DiscoveryV1Api(api)

    def one(item):
        name, ips, node = item
        core.create_namespaced_service("default", {"metadata": {"name": name}, "spec": {
            "ports": [{"name": "tcp", "port": 80, "targetPort": PORT, "protocol": "TCP"}]}})
        disc.create_namespaced_endpoint_slice("default", {
            "metadata": {"name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, **({"nodeName": node} if node else {})}
                          for ip in ips],
            "ports": [{"name": "tcp", "port": PORT, "protocol": "TCP"}]})

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, names_eps))


def _connect_ok(pod: ClusterPod, vip: str) -> bool:
    code = f"import socket; socket.create_connection(({vip!r}, 80), timeout=0.3).close()"
    return subprocess.run(nsexec(pod.netns, sys.executable, "-c", code), capture_output=True).returncode == 0


def _wait(fn, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not fn():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(what)
        time.sleep(0.1)
    return time.monotonic() - t0


def run_cluster(sizes: list[int], conns: int) -> int:
    import yaml

    from e2e import build
    from e2e import cluster as cluster_mod

    build.ensure_built()
    c = cluster_mod.Cluster(f"s{os.getpid() % 100000}", "l2", 2)
    pods: list[ClusterPod] = []
    try:
        c.up()
        from kubernetes import client as k8s

        api = c.api_client()
        api.configuration.connection_pool_maxsize = 8
        n1, n2 = c.nodes
        cp = c.control_plane
        # node1: kube-proxy (nftables), as the e2e full nodes run it, but only for Services
        kp_conf = n1.dir / "kube-proxy.yaml"
        kp_conf.write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "nftables", "hostnameOverride": n1.name, "bindAddress": str(n1.ip),
            "clientConnection": {"kubeconfig": str(cp.kubeconfig_for("pws-kube-proxy", "system:kube-proxy"))},
            "clusterCIDR": "10.244.0.0/16", "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"}}))
        n1.spawn("kube-proxy", [c.bin_dir / "kube-proxy", f"--config={kp_conf}", "--v=1"])
        # node2: podwire's daemon with the proxy (an admin identity: a benchmark, not an RBAC test)
        pw_kc = cp.kubeconfig_for("pws-podwire", "pws-podwire", orgs=("system:masters",))
        n2.spawn("podwire", [sys.executable, "-m", "node_daemon", "--node-name", n2.name, "--kubeconfig", pw_kc,
                             "--cni-conf-dir", n2.dir / "cni", "--cluster-cidr", "10.244.0.0/16",
                             "--metrics-address", "127.0.0.1:19465", "--proxy"],
                 env={**os.environ, "PYTHONPATH": ROOT})
        lanes = {}
        for label, node in (("kube-proxy", n1), ("podwire", n2)):
            server, cl = ClusterPod(node, f"s{node.name[-1]}", 20), ClusterPod(node, f"c{node.name[-1]}", 21)
            pods += [server, cl]
            server.spawn(SERVER)
            lanes[label] = (server, cl, cl.spawn(CLIENT, str(20000 + len(lanes) * 20000), stdin=subprocess.PIPE))
        core = k8s.CoreV1Api(api)
        _create_services(api, [(f"target-{lb}", [lanes[lb][0].ip], lanes[lb][0].node.name) for lb in lanes])
        vips = {lb: core.read_namespaced_service(f"target-{lb}", "default").spec.cluster_ip for lb in lanes}
        made = 2 + 1  # the targets and the `kubernetes` Service
        for n in sizes:
            fill = [(f"fill{i}", [str(ipaddress.ip_address(FILLER_NET + 2 * i + k)) for k in (0, 1)], "")
                    for i in range(made, n)]
            t0 = time.monotonic()
            _create_services(api, fill)
            made = max(made, n)
            # a sentinel per node (its endpoint local: the kube-proxy node has no pod routes), written
            # last: once a proxy serves it, it has everything written before it
            _create_services(api, [(f"sentinel{n}-{lb}", [lanes[lb][0].ip], lanes[lb][0].node.name) for lb in lanes])
            wrote = time.monotonic()
            svips = {lb: core.read_namespaced_service(f"sentinel{n}-{lb}", "default").spec.cluster_ip for lb in lanes}
            ready = {lb: _wait(lambda: _connect_ok(lanes[lb][1], svips[lb]), 600, f"{lb} programs {n}")
                     for lb in lanes}
            print(f"{n:>6} Services: API writes {wrote - t0:6.1f}s; last write -> served: "
                  + ", ".join(f"{lb} {ready[lb]:.2f}s" for lb in lanes), flush=True)
            samples = {(lb, m): [] for lb in lanes for m in ("clusterip", "pod")}
            batch = max(1, conns // 10)
            for _ in range(10):  # interleaved batches, both nodes alike
                for lb, (server, _, proc) in lanes.items():
                    proc.stdin.write(json.dumps([[[vips[lb], 80], [server.ip, PORT]], batch]) + "\n")
                    proc.stdin.flush()
                    vip_s, pod_s = json.loads(proc.stdout.readline())
                    samples[(lb, "clusterip")] += vip_s
                    samples[(lb, "pod")] += pod_s
            for lb in lanes:
                v, p = samples[(lb, "clusterip")], samples[(lb, "pod")]
                print(f"   {lb:<10} ClusterIP p50 {pct(v, .5) * 1e6:6.1f}us p99 {pct(v, .99) * 1e6:7.1f}us | "
                      f"pod IP p50 {pct(p, .5) * 1e6:6.1f}us p99 {pct(p, .99) * 1e6:7.1f}us | "
                      f"ClusterIP - pod p50 {(pct(v, .5) - pct(p, .5)) * 1e6:5.1f}us", flush=True)
    finally:
        for p in pods:
            p.close()
        errors = c.down()
        if errors:
            print("teardown errors:", errors, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
