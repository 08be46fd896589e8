#!/usr/bin/env python3
"""Benchmark: one policy diff sync per change, in process (no root, no cluster), on the objects of
bench/policy_latency.py (20 namespaces, N pods, 1k policies, 60 trials per change kind): the
daemon's own Store -> PolicyAgent.sync path with a runner that only counts the nft text, so the
figures are the sync's Python cost alone: snapshot, compile, render (wall time, and the sync
thread's CPU time, which a busy machine disturbs less). The harness benchmark
(policy_latency.py) adds the API server, the watch and nft; this one shows where a sync's time
goes, at sizes the harness cannot hold (--pods 30000), and the cyclic collector's pauses.

    python3 bench/policy_diffsync.py [--pods 1000] [--trials 60] [--no-freeze] [--profile KIND]

The daemon freezes its long-lived state out of the collector after the first syncs
(node_daemon/gcfreeze.py); so does this benchmark unless --no-freeze.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import ipaddress
import json
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import policy_latency as objs  # noqa: E402  (the same objects as the harness benchmark)

from node_daemon import gcfreeze  # noqa: E402
from policy.agent import PolicyAgent  # noqa: E402
from policy.store import Store, slim_pod  # noqa: E402

NODE = "node1"
KINDS = ("policy created", "label change", "pod created (no address yet)", "pod added (address)")


class CountingRunner:
    def __init__(self) -> None:
        self.bytes = 0

    def apply(self, text: str) -> None:
        self.bytes += len(text)


class GcWatch:
    """Pauses of the cyclic collector per generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.per_gen: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._t = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.per_gen[info["generation"]].append(time.perf_counter() - self._t)

    def close(self) -> None:
        gc.callbacks.remove(self._cb)


def pod(ns: str, name: str, node: str, labels: dict, ip: str | None, uid: str) -> dict:
    body = objs.pod_body(name, node, labels)
    body["metadata"].update(namespace=ns, uid=uid)
    if ip:
        body.update(objs.status_body(ip))
    return slim_pod(body)


def run(n_pods: int, n_policies: int, trials: int, freeze: bool, profile: str | None) -> dict:
    store = Store()
    agent = PolicyAgent(NODE, store, CountingRunner())
    uids = (str(i) for i in range(10**9))
    for k in range(objs.NAMESPACES):
        store.on_namespace({"metadata": {"name": objs.ns_name(k), "labels": {"team": f"t{k % 5}"}}}, False)
    local_ips = (str(ipaddress.IPv4Address("10.244.1.0") + i) for i in range(2, 1 << 16))
    free, idle = [], []
    for k in range(trials):
        ns = objs.ns_name(k)
        ip = next(local_ips)
        store.on_pod(pod(ns, f"f{k}", NODE, {"app": "free", "free": f"f{k}"}, ip, next(uids)), False)
        free.append(ns)
        ip = next(local_ips)
        store.on_pod(pod(ns, f"g{k}", NODE, {"app": "idle"}, ip, next(uids)), False)
        idle.append((ns, f"g{k}", ip))
    for i in range(max(0, n_pods - 2 * trials)):
        store.on_pod(pod(objs.ns_name(i), f"r{i}", f"gone{i % 50}",
                         {"app": f"svc{(i // objs.NAMESPACES) % objs.APPS}"},
                         str(ipaddress.IPv4Address(objs.REMOTE_NET + i)), next(uids)), False)
    for j in range(n_policies):
        ns, app = objs.ns_name(j), f"svc{(j // objs.NAMESPACES) % objs.APPS}"
        body = objs.policy_body(f"allow-{app}", {"app": app}, f"svc{((j // objs.NAMESPACES) + 1) % objs.APPS}",
                                f"t{(j + 1) % 5}")
        body["metadata"].update(namespace=ns, uid=next(uids))
        store.on_policy(body, False)
    t0 = time.perf_counter()
    agent.sync()
    first = time.perf_counter() - t0
    if freeze:
        gcfreeze.settle()
    watch = GcWatch()
    prof = cProfile.Profile() if profile else None
    results: dict[str, list[tuple[float, int, dict]]] = {k: [] for k in KINDS}

    def timed(kind: str, change) -> None:
        change()
        on = prof is not None and profile in kind
        if on:
            prof.enable()
        t, cpu = time.perf_counter(), time.thread_time()
        agent.sync()
        took, cpu = time.perf_counter() - t, time.thread_time() - cpu
        if on:
            prof.disable()
        results[kind].append((took, agent._compiler.recompiled, dict(agent.last_phases), cpu))

    for k in range(trials):
        ns = objs.ns_name(k)

        def create_policy(k=k, ns=ns):
            body = objs.policy_body(f"trial-{k}", {"free": f"f{k}"}, f"svc{(k + 1) % objs.APPS}", f"t{k % 5}")
            body["metadata"].update(namespace=ns, uid=next(uids))
            store.on_policy(body, False)

        timed(KINDS[0], create_policy)
        gns, gname, gip = idle[k]
        timed(KINDS[1], lambda: store.on_pod(pod(gns, gname, NODE, {"app": f"svc{k % objs.APPS}"}, gip, f"g-{k}"),
                                             False))
        uid, ip = next(uids), next(local_ips)
        timed(KINDS[2], lambda: store.on_pod(pod(ns, f"new{k}", NODE, {"app": f"svc{k % objs.APPS}"}, None, uid),
                                             False))
        timed(KINDS[3], lambda: store.on_pod(pod(ns, f"new{k}", NODE, {"app": f"svc{k % objs.APPS}"}, ip, uid),
                                             False))
    watch.close()
    out: dict = {"pods": n_pods, "policies": n_policies, "trials": trials, "freeze": freeze,
                 "first_sync_ms": first * 1e3, "kinds": {}, "gc": {}}
    print(f"{n_pods} pods, {n_policies} policies: first (full) sync {first * 1e3:.0f} ms; diff syncs, ms:")
    for kind, xs in results.items():
        ds = sorted(x[0] for x in xs)
        n = len(ds)
        phases = {p: sum(x[2][p] for x in xs) / n * 1e3 for p in xs[0][2]}
        cpus = sorted(x[3] for x in xs)
        row = {"p50_ms": ds[n // 2] * 1e3, "p99_ms": ds[min(n - 1, int(n * .99))] * 1e3, "max_ms": ds[-1] * 1e3,
               "cpu_p50_ms": cpus[n // 2] * 1e3, "recompiled_mean": sum(x[1] for x in xs) / n,
               "phases_mean_ms": phases}
        out["kinds"][kind] = row
        print(f"  {kind:30s} p50 {row['p50_ms']:6.1f}  p99 {row['p99_ms']:7.1f}  (CPU p50 {row['cpu_p50_ms']:5.1f})  "
              f"pods recompiled "
              f"{row['recompiled_mean']:5.1f}  " + ", ".join(f"{p} {v:.1f}" for p, v in phases.items()))
    for g, pauses in watch.per_gen.items():
        out["gc"][g] = {"count": len(pauses), "total_ms": sum(pauses) * 1e3, "max_ms": max(pauses, default=0) * 1e3}
    print("  cyclic collector: " + ", ".join(
        f"gen{g} {v['count']}x max {v['max_ms']:.0f} ms" for g, v in out["gc"].items()))
    if prof is not None:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--no-freeze", action="store_true", help="leave the collector as Python sets it")
    ap.add_argument("--profile", metavar="KIND", help="cProfile the syncs of change kinds containing KIND")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    a = ap.parse_args()
    out = run(a.pods, a.policies, a.trials, not a.no_freeze, a.profile)
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
