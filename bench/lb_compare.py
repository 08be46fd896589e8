#!/usr/bin/env python3
"""Benchmark: podwire's LoadBalancer against MetalLB v0.15.2 (L2 mode) on ONE harness cluster. Needs root.

    python3 bench/lb_compare.py [--services N] [--failovers K] [--no-clean-stop] [--json]

The cluster (`mlbb<pid>`, l2, 2 full nodes) is e2e/metallb.py's: podwire installed from its image (its
nftables proxy serves every Service, no kube-proxy), MetalLB from upstream's metallb-native.yaml restricted
to its own class, each with its own 40-address pool on the outside host's subnet; one busybox httpd backend
per node. Only allocation and announcement differ between the two; every client is the outside host, a LAN
neighbour that reaches the addresses by ARP.

What each figure measures (wall clock of one machine; the outside host's poller is one long-lived process):

* create -> address: the Service POST (kubernetes client, from this process) until a watch started at the
  created object's resourceVersion shows status.loadBalancer.ingress[0].ip.
* create -> connect: the same POST until the first TCP connection from the outside host to the address got
  its HTTP answer. The poller starts once the address is seen and opens a NEW connection every 20 ms (each
  with a 1 s timeout), so a SYN lost to a not-yet-announced address does not wait for TCP's retransmit
  backoff; the figure is when the first answer arrived. N Services per implementation, interleaved
  (podwire, MetalLB, MetalLB, podwire, ...), each kept until the end so no address is reused (an outside
  ARP entry left by an earlier owner would answer early). p50 and p99 (nearest rank: with N=20, p99 is the
  maximum).
* failover (cable): a Service whose only endpoint lives on the node that does NOT hold its address; the
  holder's link to the LAN (its veth on the underlay bridge) is set down, then the poller opens a new
  connection every 100 ms (1 s timeout each) until one is answered: seconds from the pull to that answer.
  K times per implementation, interleaved; a new Service each time; after each, the cable comes back and
  MetalLB's speakers are awaited until memberlist has them both again (it splits with the link).
* clean stop: the holder's agent is stopped by deleting its pod (podwire: the daemon gets SIGTERM and
  releases its Leases; MetalLB: the speaker gets SIGTERM and leaves memberlist). The old node's kernel keeps
  forwarding whatever reaches it, so connections never fail here; the figure is from the delete until the
  outside host's ARP entry for the address names the new holder's MAC (its gratuitous ARP arrived; polled
  every 100 ms) and a connection is answered.

Settings: both as shipped. podwire's lease: `loadbalancer_lease_seconds` 6 (node_daemon/config.py default;
manifests/podwire.yaml does not override it), renewed every 2 s. MetalLB: memberlist's DefaultLANConfig
(probe every 1 s, 500 ms probe timeout, suspicion multiplier 4: with two members a silent node is declared
failed ~1-2 s + 4 s after it went quiet), speakers bound to the node address port 7946, the controller's
generated `memberlist` Secret. No other settings were measured.

Writes bench/results/lb_compare-<UTC>.json (raw samples, summaries, ratios podwire/MetalLB, load average).
The machine is shared (2 cores, other engineers' clusters): compare figures of one run, and read its load.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from e2e import metallb  # noqa: E402

IMPLS = metallb.IMPLEMENTATIONS


def nearest_rank(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def summary(values: list[float | None]) -> dict:
    got = [v for v in values if v is not None]
    out: dict = {"n": len(values), "failed": len(values) - len(got)}
    if got:
        out.update(p50=round(statistics.median(got), 3), p99=round(nearest_rank(got, 0.99), 3),
                   max=round(max(got), 3), min=round(min(got), 3))
    return out


def ratio(a: dict, b: dict, key: str) -> float | None:
    return round(a[key] / b[key], 2) if key in a and key in b and b[key] else None


class Bench:
    def __init__(self, sbs: metallb.SideBySide, poller: metallb.Poller):
        self.sbs, self.poller = sbs, poller
        self.samples: dict = {impl: {"create": [], "failover": [], "clean_stop": []} for impl in IMPLS}
        self.load: list[tuple[str, float]] = []

    def note_load(self, phase: str) -> None:
        self.load.append((phase, round(os.getloadavg()[0], 2)))

    def create_to_connect(self, impl: str, name: str) -> dict:
        t0 = time.time()
        created = self.sbs.create(impl, name)
        ip, seen = self.sbs.wait_address(name, resource_version=created.metadata.resource_version)
        got = self.poller.until_answered(ip, deadline=60, every=0.02, timeout=1.0)
        return {"name": name, "address": ip, "address_s": round(seen - t0, 3),
                "connect_s": round(got["ok"] - t0, 3) if got["ok"] else None, "attempts": got["tries"]}

    def run_creates(self, n: int) -> None:
        for i in range(n):
            for impl in (IMPLS if i % 2 == 0 else tuple(reversed(IMPLS))):
                r = self.create_to_connect(impl, f"c{i}-{impl[:2]}")
                self.samples[impl]["create"].append(r)
                print(f"  create {impl:8} {r['address']:15} address {r['address_s']:6.2f}s  connect "
                      f"{r['connect_s'] if r['connect_s'] is not None else 'FAILED':>6}s", flush=True)
            if i % 5 == 4:
                self.note_load(f"creates {i + 1}")

    def run_failovers(self, k: int) -> None:
        for i in range(k):
            for impl in (IMPLS if i % 2 == 0 else tuple(reversed(IMPLS))):
                name = f"f{i}-{impl[:2]}"
                ip, holder, survivor = self.sbs.failover_service(impl, name)
                r = self.sbs.failover(impl, name, ip, holder, survivor, self.poller)
                r["memberlist_rejoined_s"] = self.sbs.settle_after_partition(r.pop("pulled_at"), r.pop("restored_at"))
                self.samples[impl]["failover"].append(r)
                print(f"  failover {impl:8} {ip:15} {holder} unplugged -> answered after {r['seconds']}s via "
                      f"{r['new_holder']} (ARP moved: {r['outside_arp_is_survivor']}; memberlist whole again "
                      f"{r['memberlist_rejoined_s']}s after the cable came back)", flush=True)
                self.sbs.delete(name)
            self.note_load(f"failovers {i + 1}")

    def clean_stop(self, impl: str, name: str) -> dict:
        sbs = self.sbs
        ip, holder, survivor = sbs.failover_service(impl, name)
        ns, selector = (("podwire", "app.kubernetes.io/name=podwire") if impl == "podwire"
                        else (metallb.METALLB_NS, "component=speaker"))
        [pod] = [p.metadata.name for p in sbs.core.list_namespaced_pod(ns, label_selector=selector).items
                 if p.spec.node_name == holder]
        mac = sbs.mac_of(survivor)
        t0 = time.time()
        sbs.core.delete_namespaced_pod(pod, ns)
        moved, new_holder = None, ""
        while time.time() - t0 < 60:
            if sbs.outside_neigh(ip) == mac:
                moved = time.time()
                new_holder = survivor  # by its MAC (MetalLB's Events lag; its recreated speaker takes it back later)
                break
            time.sleep(0.1)
        got = self.poller.until_answered(ip, deadline=30, every=0.1, timeout=1.0)
        done = max(moved or 0.0, got["ok"] or 0.0)
        r = {"address": ip, "old_holder": holder, "seconds": round(done - t0, 2) if moved and got["ok"] else None,
             "arp_moved_s": round(moved - t0, 2) if moved else None,
             "new_holder": new_holder, "answered_by": got.get("body", "")}
        kind = "daemonset/podwire" if impl == "podwire" else "daemonset/speaker"
        sbs.kubectl("-n", ns, "rollout", "status", kind, "--timeout=180s", timeout=200)
        if impl == "metallb":
            r["memberlist_rejoined_s"] = sbs.settle_after_partition(t0, t0)  # the new speaker joined
        sbs.delete(name)
        return r

    def run_clean_stops(self, k: int) -> None:
        for i in range(k):
            for impl in (IMPLS if i % 2 == 0 else tuple(reversed(IMPLS))):
                r = self.clean_stop(impl, f"s{i}-{impl[:2]}")
                self.samples[impl]["clean_stop"].append(r)
                print(f"  clean stop {impl:8} {r['address']:15} {r['old_holder']}'s agent deleted -> ARP moved after "
                      f"{r['arp_moved_s']}s, answered {r['seconds']}s (new holder {r['new_holder']})", flush=True)
        self.note_load("clean stops")

    def results(self) -> dict:
        out: dict = {"summary": {}, "ratios_podwire_over_metallb": {}}
        for impl in IMPLS:
            s = self.samples[impl]
            out["summary"][impl] = {
                "create_to_address_s": summary([r["address_s"] for r in s["create"]]),
                "create_to_connect_s": summary([r["connect_s"] for r in s["create"]]),
                "failover_cable_s": summary([r["seconds"] for r in s["failover"]]),
                "clean_stop_s": summary([r["seconds"] for r in s["clean_stop"]]),
            }
        pw, ml = out["summary"]["podwire"], out["summary"]["metallb"]
        for key in pw:
            out["ratios_podwire_over_metallb"][key] = {q: ratio(pw[key], ml[key], q) for q in ("p50", "p99", "max")}
        out["samples"] = self.samples
        out["load_average_1m"] = self.load
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=20, choices=range(1, 36), metavar="N",
                    help="Services per implementation (1-35: each pool has 40 addresses)")
    ap.add_argument("--failovers", type=int, default=3, choices=range(0, 21), metavar="K")
    ap.add_argument("--clean-stops", type=int, default=1, choices=range(0, 11), metavar="K",
                    help="clean stops of the holder per implementation (default 1; 0 skips)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object at the end")
    ap.add_argument("--podwire-image", type=Path, help="podwire's image tarball made earlier (make image)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("lb_compare: needs root (network namespaces)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    started = time.strftime("%Y%m%dT%H%MZ", time.gmtime())
    load0 = round(os.getloadavg()[0], 2)
    cluster, sbs = metallb.up_with_podwire(f"mlbb{os.getpid() % 1000}", args.podwire_image)
    poller = metallb.Poller(cluster.topology.outside)
    bench = Bench(sbs, poller)
    bench.load.append(("before cluster up", load0))
    bench.note_load("installed")
    res: dict = {}
    error = ""
    try:
        print(f"== create -> address -> connect: {args.services} Services each, interleaved", flush=True)
        bench.run_creates(args.services)
        print(f"== failover, holder's cable pulled: {args.failovers} each", flush=True)
        bench.run_failovers(args.failovers)
        if args.clean_stops:
            print(f"== clean stop of the holder's agent: {args.clean_stops} each", flush=True)
            bench.run_clean_stops(args.clean_stops)
    except Exception as e:  # noqa: BLE001 - the samples so far are still written, with what broke
        error = f"{type(e).__name__}: {e}"[:3000]
        print(f"FAILED: {error}", file=sys.stderr)
    finally:
        res = bench.results()
        poller.close()
        sbs.close()
        errors = cluster.down()
        if errors:
            print("teardown: " + "; ".join(errors), file=sys.stderr)
    res.update({
        "started_utc": started, "wall_s": round(time.monotonic() - t0, 1), "install_timings_s": sbs.timings,
        "settings": {"services": args.services, "failovers": args.failovers, "clean_stops": args.clean_stops,
                     "podwire_lease_seconds": 6, "podwire_renew_seconds": 2,
                     "metallb": "v0.15.2 L2, memberlist DefaultLANConfig, --lb-class " + metallb.METALLB_CLASS,
                     "create_poll_every_s": 0.02, "failover_poll_every_s": 0.1, "attempt_timeout_s": 1.0},
        "machine": {"cores": os.cpu_count()}, "error": error,
        "podwire_image": str(args.podwire_image) if args.podwire_image else "built from this checkout (make image)",
    })
    out = ROOT / "bench" / "results" / f"lb_compare-{started}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({"summary": res["summary"], "ratios": res["ratios_podwire_over_metallb"],
                      "load_average_1m": res["load_average_1m"]}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}; wall time {res['wall_s']:.0f}s")
    if args.json:
        print(json.dumps(res))
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
