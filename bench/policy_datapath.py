#!/usr/bin/env python3
"""Benchmark: first-connection cost through an ingress-isolated pod with 1, 100 and 10k policies
on the node, against the same connection with no policy table at all, in the same run. Needs root;
makes and deletes its own namespaces (pwbp-*).

    lane k:  pod a 10.0.1.2 --+-- podwire0 [node k] (10.0.1.1)
             pod b 10.0.1.3 --+   bridge option nf_call_iptables 1, a stand-in proxy nat table

One node namespace per configuration ("lane"): no policy table, then the `inet podwire-policy`
table compiled by policy.compile.compile_node from a synthetic Cluster with N isolating policies
(b's own, allowing a on 7070-8080/tcp, plus N-1 policies each isolating another pod of the node
with a pod or ipBlock peer on a port of its own), exactly what the daemon would load. Every lane
has the same addresses, so one client process switches into each lane's pod a with setns() and
connects a->b:7070, lane after lane, connection by connection: load from elsewhere on the machine
hits every lane alike. b listens on nothing, so a sample is SYN (a new flow: the whole policy
path, bridged through br_netfilter) -> RST (established), all in the kernel. Every lane holds a
stand-in of the proxy's nat table, as a podwire node does, so conntrack runs in all of them and
the baseline differs from the others by the policy table only.

    python3 bench/policy_datapath.py [--sizes 1,100,10000] [--conns 3000] [--rounds 5] [--json]

Target (issue 11): the median at 10k within 10% of the median at 1; the cost over no policy is
reported. --json adds one JSON object as the last line (for bench/run_all.py).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from netkit.nft import apply as nft_apply  # noqa: E402
from policy.compile import compile_node  # noqa: E402
from policy.model import (  # noqa: E402
    INGRESS,
    NAMESPACE_NAME_LABEL,
    IPBlock,
    NamedPort,
    NamedPorts,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    Port,
    Rule,
)
from policy.ruleset import Ruleset, elements, render_full  # noqa: E402
from policy.selector import LabelSelector, Requirement, intern_labels  # noqa: E402

NODE = "bench-node"
GW, PA, PB = "10.0.1.1", "10.0.1.2", "10.0.1.3"
ALLOWED, DENIED = 7070, 9090  # b's policy admits a on 7070-8080/tcp only
FILLER_NAMESPACES = 100  # N-1 filler policies spread so that a namespace holds ~N/100 of them

# argv: JSON list of pod netns paths. stdin: one JSON [dst, port, n] per batch; stdout: per lane,
# the n connect() times in µs. A socket belongs to the netns its thread was in when it was made.
CLIENT = r"""
import ctypes, json, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
fds = [os.open(p, os.O_RDONLY) for p in json.loads(sys.argv[1])]
def enter(fd):
    if libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
print("ready", flush=True)
for line in sys.stdin:
    dst, port, n = json.loads(line)
    out = [[] for _ in fds]
    for _ in range(n):
        for i, fd in enumerate(fds):
            enter(fd)
            s = socket.socket()
            t0 = time.perf_counter_ns()
            try:
                s.connect((dst, port))
            except ConnectionRefusedError:  # b's kernel answered RST: the SYN passed the policy
                out[i].append((time.perf_counter_ns() - t0) / 1000)
            s.close()
    print(json.dumps(out), flush=True)
"""

PROBE = r"""
import socket, sys
s = socket.socket(); s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("open")
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("timeout")
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _sel(**labels: str) -> LabelSelector:
    return LabelSelector(tuple(Requirement(k, "In", frozenset((v,))) for k, v in sorted(labels.items())))


def _addr(base: str, i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ipaddress.IPv4Address(base)) + i)


def synthetic_cluster(n: int) -> tuple[list[Pod], list[Namespace], list[NetworkPolicy]]:
    """b isolated for ingress by its own policy (a may reach 7070-8080/tcp), plus n-1 other pods of
    this node, each isolated by one policy of its own: a peer pod of its namespace (even i) or an
    ipBlock with an except (odd i), on a numbered port, a range or a named port."""
    bench_ns = "bench"
    web = NamedPorts((NamedPort("http", "TCP", 8080), NamedPort("metrics", "TCP", 9100)))
    pods = [Pod(bench_ns, "a", "a", NODE, (ipaddress.IPv4Address(PA),), intern_labels({"app": "client"})),
            Pod(bench_ns, "b", "b", NODE, (ipaddress.IPv4Address(PB),), intern_labels({"app": "server"}), web)]
    spaces = {bench_ns} | {f"f{i % FILLER_NAMESPACES}" for i in range(n - 1)}
    namespaces = [Namespace(s, intern_labels({NAMESPACE_NAME_LABEL: s, "team": f"t{k % 5}"}))
                  for k, s in enumerate(sorted(spaces))]
    policies = [NetworkPolicy(bench_ns, "server", _sel(app="server"), (INGRESS,),
                              (Rule((Peer(pod_selector=_sel(app="client")),), (Port("TCP", ALLOWED, 8080),)),))]
    for i in range(n - 1):
        ns = f"f{i % FILLER_NAMESPACES}"
        pods.append(Pod(ns, f"p{i}", f"u{i}", NODE, (_addr("10.1.0.1", i),), intern_labels({"app": f"f{i}"}), web))
        if i % 2 == 0:  # a pod of the same namespace (the next filler there, which may not exist: no allow then)
            peer = Peer(pod_selector=_sel(app=f"f{i + FILLER_NAMESPACES}"))
        else:
            net = ipaddress.IPv4Network((int(_addr("10.64.0.0", 0)) + (i << 8), 24))
            peer = Peer(ip_block=IPBlock(net, (ipaddress.IPv4Network((int(net.network_address) + 128, 25)),)))
        port = (Port("TCP", 1000 + i % 5000), Port("TCP", 20000, 20000 + i % 100), Port("TCP", "http"))[i % 3]
        policies.append(NetworkPolicy(ns, f"pol{i}", _sel(app=f"f{i}"), (INGRESS,), (Rule((peer,), (port,)),)))
    return pods, namespaces, policies


def compiled(n: int) -> tuple[Ruleset, float]:
    from policy.model import Cluster

    pods, namespaces, policies = synthetic_cluster(n)
    t0 = time.perf_counter()
    rs = compile_node(Cluster.build(pods, namespaces, policies), NODE)
    took = time.perf_counter() - t0
    assert ipaddress.IPv4Address(PB) in rs.isolated_ingress and len(rs.isolated_ingress) == n
    return rs, took


class Bed:
    """One lane per configuration (None = no policy table); every lane the same addresses."""

    def __init__(self, configs: list[int | None], cpu: int = 0):
        self.sfx = uuid.uuid4().hex[:6]
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.lanes: list[dict] = []
        try:
            for k, n in enumerate(configs):
                self.lanes.append(self._lane(k, n))
            paths = json.dumps([f"/run/netns/{lane['a']}" for lane in self.lanes])
            self.client = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", CLIENT, paths],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.procs.append(self.client)
            assert self.client.stdout is not None and self.client.stdout.readline().strip() == "ready"
        except BaseException:
            self.close()
            raise

    def _netns(self, name: str) -> str:
        ns = f"pwbp-{self.sfx}-{name}"
        sh("ip", "netns", "add", ns)
        self.made.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def _lane(self, k: int, n: int | None) -> dict:
        node, a, b = self._netns(f"n{k}"), self._netns(f"a{k}"), self._netns(f"b{k}")
        sh("ip", "-n", node, "link", "add", "podwire0", "type", "bridge")
        sh("ip", "-n", node, "addr", "add", f"{GW}/24", "dev", "podwire0")
        sh("ip", "-n", node, "link", "set", "podwire0", "up")
        for pod, ns, addr in (("a", a, PA), ("b", b, PB)):
            sh("ip", "-n", node, "link", "add", f"pw{pod}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", node, "link", "set", f"pw{pod}", "master", "podwire0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", GW)
        # namespace-local sysctls of our own namespace; the bridge's own option is what the daemon sets
        sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0")
        sh("ip", "-n", node, "link", "set", "podwire0", "type", "bridge", "nf_call_iptables", "1")
        path = f"/run/netns/{node}"
        nft_apply("add table ip pwbp-standin\n"  # the proxy's nat hook: conntrack runs in every lane
                  "add chain ip pwbp-standin dstnat { type nat hook prerouting priority -100 ; }\n"
                  f"add rule ip pwbp-standin dstnat ip daddr 10.96.0.10 tcp dport 80 dnat to {PB}:8080\n", path)
        lane: dict[str, Any] = {"n": n, "node": node, "a": a, "b": b, "compile_s": None, "sync_s": None,
                                "elements": 0}
        if n is not None:
            rs, lane["compile_s"] = compiled(n)
            lane["elements"] = sum(len(v) for v in elements(rs).values())
            text = render_full(rs)
            t0 = time.perf_counter()
            nft_apply(text, path)
            lane["sync_s"] = time.perf_counter() - t0
        return lane

    def probe(self, lane: dict, port: int, timeout: float) -> str:
        return sh("ip", "netns", "exec", lane["a"], sys.executable, "-c", PROBE, PB, str(port), str(timeout)).strip()

    def connects(self, n: int) -> list[list[float]]:
        assert self.client.stdin is not None and self.client.stdout is not None
        self.client.stdin.write(json.dumps([PB, ALLOWED, n]) + "\n")
        self.client.stdin.flush()
        return json.loads(self.client.stdout.readline())

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for ns in self.made:  # the policy and stand-in tables go with their namespace
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def label(n: int | None) -> str:
    return "none" if n is None else str(n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,100,10000", help="isolating policies (= isolated pods) per lane")
    ap.add_argument("--conns", type=int, default=3000, help="connections per lane per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cpu", type=int, default=0, help="the CPU the client is pinned to")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in a.sizes.split(",")]
    if any(n < 1 for n in sizes):
        print("sizes must be >= 1", file=sys.stderr)
        return 2
    configs: list[int | None] = [None, *sizes]
    bed = Bed(configs, a.cpu)
    try:
        for lane in bed.lanes:  # the policy is really there: a denied port is dropped, the allowed one passes
            want = "refused" if lane["n"] is None else "timeout"
            seen = bed.probe(lane, DENIED, 0.5)
            if seen != want or bed.probe(lane, ALLOWED, 2) != "refused":
                raise RuntimeError(f"lane {label(lane['n'])}: b:{DENIED} gave {seen}, expected {want}")
        bed.connects(200)  # warm up: ARP, conntrack, the client's code paths
        rounds: list[list[list[float]]] = []
        for _ in range(a.rounds):
            got = bed.connects(a.conns)
            if any(len(xs) != a.conns for xs in got):
                raise RuntimeError("a connect was not refused by b (dropped or timed out)")
            rounds.append(got)
    finally:
        bed.close()

    result: dict = {"conns": a.conns, "rounds": a.rounds, "lanes": {}}
    for k, lane in enumerate(bed.lanes):
        every = [x for r in rounds for x in r[k]]
        per_round = [statistics.median(r[k]) for r in rounds]
        result["lanes"][label(lane["n"])] = {
            "p50_us": statistics.median(every), "p90_us": sorted(every)[int(0.9 * len(every))],
            "round_p50_us": per_round, "compile_s": lane["compile_s"], "sync_s": lane["sync_s"],
            "elements": lane["elements"]}
    lanes = result["lanes"]
    base = lanes["none"]["p50_us"]
    print(f"first connect a->b:{ALLOWED} (SYN policed -> RST), {a.rounds} rounds x {a.conns} per lane, "
          "interleaved connection by connection; µs")
    for name, r in lanes.items():
        extra = "" if r["compile_s"] is None else (
            f"  [compile {r['compile_s']:.2f}s, nft -f {r['sync_s']:.2f}s, {r['elements']} elements]")
        print(f"  {name:>6}: p50 {r['p50_us']:6.1f}  p90 {r['p90_us']:6.1f}  x{r['p50_us'] / base:.3f} vs none"
              f"  rounds {' '.join(f'{m:.1f}' for m in r['round_p50_us'])}{extra}", flush=True)
    result["ratio_vs_none"] = {name: r["p50_us"] / base for name, r in lanes.items() if name != "none"}
    lo, hi = label(min(sizes)), label(max(sizes))
    if lo != hi:
        ratio = lanes[hi]["p50_us"] / lanes[lo]["p50_us"]
        per_round = [h / lo_ for h, lo_ in zip(lanes[hi]["round_p50_us"], lanes[lo]["round_p50_us"], strict=True)]
        result["ratio_hi_vs_lo"] = {"sizes": [int(lo), int(hi)], "p50": ratio, "rounds": per_round}
        print(f"p50 {hi} vs {lo} policies: x{ratio:.3f} (rounds {min(per_round):.3f}-{max(per_round):.3f}); "
              f"target within 10%: {'met' if ratio <= 1.10 else 'NOT met'}")
    if a.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
