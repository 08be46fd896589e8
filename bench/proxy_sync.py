#!/usr/bin/env python3
"""Benchmark: plan + render + apply N Services x 2 endpoints into a scratch netns, then
one endpoint change (a partial sync). Needs root; creates and deletes its own netns.

    python3 bench/proxy_sync.py [--sizes 1000,10000,30000] [--json]

Targets: full sync at 10k < 5 s; one change at 30k programmed < 100 ms (plan + diff +
render + nft apply, i.e. what the Proxier does on an event).
--json adds one JSON object (seconds, per size) as the last line.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import subprocess
import sys
import time
import uuid
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from proxy.model import Endpoint, EndpointPort, EndpointSlice, NodeInfo, ProxyConfig, Service, ServicePort  # noqa: E402
from proxy.plan import Planner  # noqa: E402
from proxy.sync import NftRunner, TableSyncer  # noqa: E402

NODE = NodeInfo("node-a")
CONFIG = ProxyConfig(cluster_cidrs=(ipaddress.ip_network("10.128.0.0/10"),))


def objects(n: int):
    base_svc = int(ipaddress.ip_address("172.16.0.0"))
    base_ep = int(ipaddress.ip_address("10.128.0.0"))
    services, slices = [], {}
    for i in range(n):
        ns, name = f"ns{i % 50}", f"svc{i}"
        services.append(Service(ns, name, "NodePort" if i % 10 == 0 else "ClusterIP",
                                (ipaddress.ip_address(base_svc + i),),
                                (ServicePort("http", "TCP", 80, 30000 + i if i % 10 == 0 and i < 2700 else 0),)))
        eps = tuple(Endpoint((ipaddress.ip_address(base_ep + 2 * i + k),), node_name=f"node-{k}")
                    for k in range(2))
        slices[(ns, name)] = [EndpointSlice(ns, f"{name}-x", name, 4, eps, (EndpointPort("http", "TCP", 8080),))]
    return services, slices


def run(size: int, netns: str, shards: int = 1) -> dict:
    """shards > 1 is an experiment, not the proxy's layout: Services spread over that many
    tables (each a full copy of the skeleton), to measure how the kernel's per-table
    validation scales. Its full sync is one transaction per table, not one in all."""
    services, slices = objects(size)
    cfgs = [CONFIG] if shards == 1 else [
        dataclasses.replace(CONFIG, table_name=f"podwire-proxy-s{i}") for i in range(shards)]
    planners = [Planner(4) for _ in cfgs]
    syncers = [TableSyncer(NftRunner(f"/run/netns/{netns}")) for _ in cfgs]
    by_key = {s.key: s for s in services}
    part = [{k: v for k, v in by_key.items() if zlib.crc32(repr(k).encode()) % shards == i} for i in range(shards)]
    t0 = time.perf_counter()
    states = [pl.plan(part[i], slices, NODE, cfgs[i]) for i, pl in enumerate(planners)]
    t1 = time.perf_counter()
    size_b = sum(sy.sync(st).text_bytes for sy, st in zip(syncers, states, strict=True))
    t2 = time.perf_counter()
    tag = f"{size:>6} services" + (f" in {shards} tables" if shards > 1 else "")
    print(f"{tag} full sync: plan {t1 - t0:6.2f}s  render+apply {t2 - t1:6.2f}s  "
          f"total {t2 - t0:6.2f}s  ({size_b / 1e6:.1f} MB of nft text)", flush=True)
    out = {"full_s": t2 - t0, "change_s": []}

    # One change: the middle Service's second endpoint is replaced.
    for round_ in range(3):
        i = size // 2
        ns, name = f"ns{i % 50}", f"svc{i}"
        old = slices[(ns, name)][0]
        new_ep = Endpoint((ipaddress.ip_address(int(ipaddress.ip_address("10.64.0.0")) + round_),), node_name="node-1")
        slices[(ns, name)] = [EndpointSlice(ns, old.name, name, 4, (old.endpoints[0], new_ep), old.ports)]
        sh = zlib.crc32(repr((ns, name)).encode()) % shards
        t0 = time.perf_counter()
        state = planners[sh].plan(part[sh], slices, NODE, cfgs[sh], dirty={(ns, name)})  # as the Proxier does
        t1 = time.perf_counter()
        res = syncers[sh].sync(state)
        t2 = time.perf_counter()
        assert not res.full and res.changed
        print(f"{tag} one change:  plan {(t1 - t0) * 1e3:6.1f}ms  diff+apply "
              f"{(t2 - t1) * 1e3:6.1f}ms  total {(t2 - t0) * 1e3:6.1f}ms  ({res.text_bytes} B)", flush=True)
        out["change_s"].append(t2 - t0)
    out["floor_s"] = floor(tag, syncers[sh].runner, cfgs[sh].table_name)
    return out


def floor(tag: str, runner: NftRunner, table: str) -> float:
    """What any one-rule transaction costs on this table: nft lists every chain first, and
    the kernel re-validates every chain reachable from a base chain when a rule is added.
    The gap between this and the partial sync above is ours (planning, diff, rendering)."""
    best = float("inf")
    for i in range(3):
        name = f"bench-floor-{i}"
        t0 = time.perf_counter()
        runner.apply(f"add chain ip {table} {name}\n"
                     f"add rule ip {table} {name} meta l4proto tcp dnat to 10.0.0.1:80\n")
        best = min(best, time.perf_counter() - t0)
        runner.apply(f"delete chain ip {table} {name}\n")
    print(f"{tag} nft floor (one `add rule`, best of 3): {best * 1e3:6.1f}ms", flush=True)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,30000")
    ap.add_argument("--shards", type=int, default=1, help="experiment: spread Services over N tables")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (creates a network namespace)", file=sys.stderr)
        return 2
    netns = f"pwp-bench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    results = {}
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            results[size] = run(size, netns, args.shards)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
