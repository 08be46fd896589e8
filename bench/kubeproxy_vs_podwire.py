#!/usr/bin/env python3
"""Benchmark: kube-proxy v1.34 (nftables mode) against podwire's Service proxy, head to head on
the e2e harness, fed the same Services and EndpointSlices by one real API server. Needs root.

    python3 bench/kubeproxy_vs_podwire.py [--sizes 10,1000,10000] [--conns 2000] [--changes 6] [--json]

A cluster `b<pid>` (l2, two registered Nodes, no kubelets). node1 runs kube-proxy (the harness'
built binary, `--proxy-mode=nftables`, its own kubeconfig, hostnameOverride=node1), node2
podwire's daemon (`python3 -m node_daemon --proxy --no-egress`: the proxy, plus routes). Each
node has a server pod and a client pod made by the frozen podwire CNI (dist/podwire/podwire).
The two proxies never run on the same node, and are never started at the same time.

Per size step (the Services grow 10 -> 1k -> 10k, x2 endpoints each, written in bulk through
the API while no proxy runs; the EndpointSlices are written directly, as the controller would):
  * start to first full sync: each proxy is started (its node's ruleset emptied first), one
    after the other, and timed until its client pod connects through a sentinel Service
    written last (so everything before it is in); its sync metrics are read then.
  * one change: a Service's EndpointSlice is switched between a live and a dead port of the
    server pod, alternately for both proxies; timed from the API write until the client sees
    the new behaviour (connects / is refused). Rounds are 1.2 s apart: kube-proxy's default
    minSyncPeriod is 1 s (podwire's floor is 0.1 s), so both start each change from idle.
  * first-connection latency: connect() from the client pod to the ClusterIP and to the pod
    IP, batches interleaved between the two nodes (both proxies idle, running).
Ratios are podwire / kube-proxy, same run. --json adds one JSON object as the last line.

Wall time is mostly the API writes: 10k Services + 10k EndpointSlices took 2.5 min at load 8
and 5 min at load 15 on the shared 2-core machine (the whole default run: 6-8 min).
kube-proxy runs with --v=2, so its log (kept by PODWIRE_E2E_KEEP_LOGS) says what each sync did.
What it showed at 10k: every partial sync first lists the whole table (knftables ListAll =
`nft --json --terse list table ip kube-proxy`, ~5.5 s with 30k chains and nft 1.0.6), and an
endpoint change leaves a stale endpoint chain deleted by one more such sync a second later.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PORT, DEAD_PORT = 8080, 8081
FILLER_NET = int(ipaddress.ip_address("10.250.0.0"))  # the filler Services' (fake) endpoints
# Static ClusterIPs come from the low band the allocator keeps for static picks (/16: first 256)
STATIC = {"target": 100, "change": 110, "sentinel": 120}
PROXIES = ("kube-proxy", "podwire")

SERVER = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(4096)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""

# stdin: one JSON command per line, one JSON answer each.
#   ["conns", [[ip, port], ...], n] -> per target, its connect() seconds (round-robin)
#   ["wait", ip, port, "ok"|"refused", timeout] -> time.time() of the first connect with that outcome
CLIENT = r"""
import itertools, json, socket, struct, sys, time
LINGER0 = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT
ports = itertools.count(int(sys.argv[1]))

def sock():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # a fresh source port each time: an old conntrack entry would keep the old NAT binding
    while True:
        try:
            s.bind(("", 20000 + next(ports) % 40000)); return s
        except OSError:
            pass

def attempt(dst, port, timeout):
    s = sock(); s.settimeout(timeout)
    try:
        s.connect((dst, port)); return "ok"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "other"
    finally:
        s.close()

print("ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd[0] == "conns":
        _, targets, n = cmd
        out = [[] for _ in targets]
        for _ in range(n):
            for i, (dst, port) in enumerate(targets):
                s = sock(); t0 = time.perf_counter(); s.connect((dst, port))
                out[i].append(time.perf_counter() - t0); s.close()
        print(json.dumps(out), flush=True)
    else:
        _, dst, port, want, timeout = cmd
        end, got = time.monotonic() + timeout, None
        while time.monotonic() < end:
            if attempt(dst, port, 0.2) == want:
                got = time.time(); break
            time.sleep(0.005)  # a failed probe is cheap, but the proxy being timed shares the CPUs
        print(json.dumps(got), flush=True)
"""


def sh(*argv, check=True) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=check, capture_output=True, text=True)


def nsexec(netns: str, *argv) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{netns}", *map(str, argv)]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class Agent:
    """A long-lived Python process in a pod namespace, pinned to CPU 0 with the others (waking a
    server that sleeps on the other CPU doubles connect(); see proxy_latency.py)."""

    def __init__(self, netns: str, code: str, *args: str, stdin=None):
        self.proc = subprocess.Popen(nsexec(netns, "taskset", "-c", "0", sys.executable, "-c", code, *args),
                                     stdin=stdin, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"agent in {netns} did not start")

    def ask(self, *cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def send(self, *cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def answer(self):
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Api:
    """Bulk writes straight through the client's urllib3 pool (no model (de)serialization: the
    Python client's own overhead would otherwise dominate creating 20k objects)."""

    def __init__(self, api_client):
        self.host = api_client.configuration.host
        self.pool = api_client.rest_client.pool_manager

    def call(self, method: str, path: str, body: dict | None = None, ok=(200, 201)) -> dict:
        for attempt in range(5):
            ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
            r = self.pool.request(method, self.host + path, body=json.dumps(body) if body is not None else None,
                                  headers={"Content-Type": ctype, "Accept": "application/json"})
            if r.status in ok:
                return json.loads(r.data)
            if r.status != 429 and r.status < 500:
                raise RuntimeError(f"{method} {path}: {r.status} {r.data[:300]!r}")
            time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"{method} {path}: {r.status}")

    @staticmethod
    def service(name: str, cluster_ip: str | None = None) -> dict:
        spec = {"ports": [{"name": "tcp", "port": 80, "targetPort": PORT, "protocol": "TCP"}]}
        if cluster_ip:
            spec["clusterIP"] = cluster_ip
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}

    @staticmethod
    def slice_(name: str, ips: list[str], port: int = PORT) -> dict:
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
                "ports": [{"name": "tcp", "port": port, "protocol": "TCP"}]}

    def create(self, name: str, ips: list[str], cluster_ip: str | None = None, port: int = PORT) -> None:
        self.call("POST", "/api/v1/namespaces/default/services", self.service(name, cluster_ip))
        self.call("POST", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                  self.slice_(name, ips, port))

    def set_port(self, name: str, port: int) -> None:
        self.call("PATCH", f"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{name}-1",
                  {"ports": [{"name": "tcp", "port": port, "protocol": "TCP"}]})

    def bulk(self, items: list[tuple[str, list[str]]], workers: int = 12) -> None:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(lambda it: self.create(*it), items))


def static_ip(kind: str, k: int) -> str:
    return f"10.96.0.{STATIC[kind] + k}"


class Lane:
    """One node, one proxy: the node, its server and client pods, the proxy process."""

    def __init__(self, label: str, node, plugin, index: int):
        from e2e.pods import Pod

        self.label, self.node, self.index = label, node, index
        self.server_pod, self.client_pod = Pod(node, plugin, "srv"), Pod(node, plugin, "cli")
        self.pods = []
        for p in (self.server_pod, self.client_pod):
            p.__enter__()
            self.pods.append(p)
        self.server_ip = str(self.server_pod.ip)
        self.server = Agent(self.server_pod.netns, SERVER)
        self.client = Agent(self.client_pod.netns, CLIENT, str(20000 * index + os.getpid() % 7919),
                            stdin=subprocess.PIPE)
        self.proc = None

    def close(self) -> None:
        for a in (self.client, self.server):
            a.close()
        for p in self.pods:
            p.__exit__(None, None, None)


def metrics(node) -> dict[str, float]:
    """The sync metrics both proxies export under kube-proxy's names, IPv4 series only
    (kube-proxy also syncs an empty IPv6 table, which would halve a mean)."""
    out = sh(*nsexec(node.netns, "curl", "-s", "-m", "5", "http://127.0.0.1:10249/metrics"), check=False).stdout
    vals: dict[str, float] = {}
    for name in ("sync_proxy_rules_duration_seconds_sum", "sync_proxy_rules_duration_seconds_count",
                 "sync_full_proxy_rules_duration_seconds_count", "sync_partial_proxy_rules_duration_seconds_count",
                 "sync_proxy_rules_last_timestamp_seconds"):
        for m in re.finditer(rf"^kubeproxy_{name}(?:{{([^}}]*)}})? (\S+)$", out, re.M):
            if "ip_family" in (m.group(1) or "") and 'ip_family="IPv4"' not in m.group(1):
                continue
            v = float(m.group(2))
            vals[name] = max(vals.get(name, v), v) if name.endswith("timestamp_seconds") else vals.get(name, 0.0) + v
    return vals


class Bench:
    def __init__(self, args):
        self.args = args
        self.cluster = None
        self.lanes: dict[str, Lane] = {}
        self.results: dict = {"sizes": {}}

    # -- set-up ------------------------------------------------------------------------------

    def up(self) -> None:
        from e2e import build
        from e2e.cluster import Cluster
        from e2e.pods import CniPlugin
        from node_daemon import cniconf

        build.ensure_built()
        self.cluster = Cluster(f"b{os.getpid() % 100000}", "l2", 2)
        self.cluster.up()
        self.api = Api(self.cluster.api_client())
        binary = ROOT / "dist" / "podwire" / "podwire"
        if not binary.exists():
            raise RuntimeError("dist/podwire/podwire is missing: run `make dist`")
        for i, (label, node) in enumerate(zip(PROXIES, self.cluster.nodes, strict=True)):
            state = node.dir / "podwire-cni"
            settings = cniconf.CniSettings(log_file=str(node.dir / "logs" / "podwire-cni.log"),
                                           data_dir=str(state / "ipam"))
            conflist = cniconf.conflist((node.pod_cidr,), 1500, settings, state_dir=str(state / "state"))
            plugin = CniPlugin(binary, cniconf.network_config(conflist, cni_version="1.1.0"))
            self.lanes[label] = Lane(label, node, plugin, i + 1)
        for k, lane in enumerate(self.lanes.values()):
            self.api.create(f"target-{k}", [lane.server_ip], static_ip("target", k))
            self.api.create(f"change-{k}", [lane.server_ip], static_ip("change", k), port=DEAD_PORT)
        self.made = 4 + 1  # and the `kubernetes` Service
        self.change_port = DEAD_PORT

    def start_proxy(self, lane: Lane) -> None:
        from e2e.node_runtime import kube_proxy_config

        node, cp = lane.node, self.cluster.control_plane
        sh(*nsexec(node.netns, "nft", "flush", "ruleset"))  # a fresh start (the node netns is ours)
        if lane.label == "kube-proxy":
            conf = kube_proxy_config(types.SimpleNamespace(node=node),
                                     cp.kubeconfig_for(f"kube-proxy-{node.name}", "system:kube-proxy"),
                                     "10.244.0.0/16")
            # masqueradeAll is the harness' choice for reaching the control plane from pods, not
            # kube-proxy's default; podwire masquerades no Service traffic here either
            conf.pop("nftables", None)
            path = node.dir / "kube-proxy.yaml"
            import yaml

            path.write_text(yaml.safe_dump(conf))
            lane.proc = node.spawn("kube-proxy", [self.cluster.bin_dir / "kube-proxy", f"--config={path}", "--v=2"])
        else:
            kc = cp.kubeconfig_for("bench-podwire", "bench-podwire", orgs=("system:masters",))
            lane.proc = node.spawn("podwire", [
                sys.executable, "-m", "node_daemon", "--node-name", node.name, "--kubeconfig", kc,
                "--cni-conf-dir", node.dir / "cni", "--cluster-cidr", "10.244.0.0/16", "--no-egress",
                "--metrics-address", "127.0.0.1:10249", "--proxy", "--proxy-metrics-address", ""],
                env={**os.environ, "PYTHONPATH": str(ROOT)})

    def stop_proxy(self, lane: Lane) -> None:
        if lane.proc is not None:
            lane.proc.stop()
            lane.proc = None

    # -- measurements ------------------------------------------------------------------------

    def first_sync(self, lane: Lane, vip: str) -> dict:
        lane.client.send("wait", vip, 80, "ok", 600)
        t0 = time.time()
        self.start_proxy(lane)
        done = lane.client.answer()
        if done is None:
            raise TimeoutError(f"{lane.label} did not serve {vip} within 600 s")
        # kube-proxy records its metrics after post-sync work, seconds after the rules serve at 10k
        for _ in range(240):
            m = metrics(lane.node)
            n = m.get("sync_proxy_rules_duration_seconds_count", 0)
            if n:
                break
            time.sleep(0.5)
        return {"start_to_served_s": done - t0, "syncs": n,
                "sync_mean_s": m["sync_proxy_rules_duration_seconds_sum"] / n if n else None,
                "start_to_sync_metric_s": m["sync_proxy_rules_last_timestamp_seconds"] - t0 if n else None}

    def one_change(self, k: int, lane: Lane, port: int) -> float:
        want = "ok" if port == PORT else "refused"
        lane.client.send("wait", static_ip("change", k), 80, want, 60)
        time.sleep(0.05)  # the probe loop is running
        t0 = time.time()
        self.api.set_port(f"change-{k}", port)
        done = lane.client.answer()
        if done is None:
            raise TimeoutError(f"{lane.label}: change to port {port} not programmed within 60 s")
        return done - t0

    def latency(self, conns: int) -> dict:
        """p50/p99 per lane and target, and the median over batches of each batch's ClusterIP p50
        over its pod-IP p50: within a batch both targets alternate connection by connection, so
        the bimodal cost of where the softirq runs (10 vs 19 us here) hits both alike."""
        samples = {(lb, t): [] for lb in self.lanes for t in ("clusterip", "pod")}
        per_batch = {lb: [] for lb in self.lanes}
        batch = max(1, conns // 10)
        for lane in self.lanes.values():  # warm-up: ARP, caches
            lane.client.ask("conns", [[static_ip("target", lane.index - 1), 80], [lane.server_ip, PORT]], 50)
        for _ in range(10):
            for k, (lb, lane) in enumerate(self.lanes.items()):
                vip_s, pod_s = lane.client.ask("conns", [[static_ip("target", k), 80], [lane.server_ip, PORT]], batch)
                samples[(lb, "clusterip")] += vip_s
                samples[(lb, "pod")] += pod_s
                per_batch[lb].append(pct(vip_s, .5) / pct(pod_s, .5))
        return {lb: {**{t: {"p50_us": pct(samples[(lb, t)], .5) * 1e6, "p99_us": pct(samples[(lb, t)], .99) * 1e6}
                        for t in ("clusterip", "pod")},
                     "clusterip_over_pod": statistics.median(per_batch[lb])} for lb in self.lanes}

    def step(self, size: int, order: tuple[str, ...]) -> dict:
        fill = [(f"fill{i}", [str(ipaddress.ip_address(FILLER_NET + 2 * i + j)) for j in (0, 1)])
                for i in range(self.made, size - 2)]
        t0 = time.monotonic()
        self.api.bulk(fill)
        self.made = max(self.made, size - 2)
        step_no = len(self.results["sizes"])
        sentinels = {}
        for k, lane in enumerate(self.lanes.values()):  # written last: served => all before it is
            vip = static_ip("sentinel", 2 * step_no + k)
            self.api.create(f"sentinel{step_no}-{k}", [lane.server_ip], vip)
            sentinels[lane.label] = vip
        page = self.api.call("GET", "/api/v1/namespaces/default/services?limit=1")
        total = len(page["items"]) + page["metadata"].get("remainingItemCount", 0)
        out = {"services": total, "api_write_s": time.monotonic() - t0, "first_sync": {}, "change_s": {}}
        print(f"{size:>6} step: {total} Services in the API ({len(fill)} written in {out['api_write_s']:.1f}s)",
              flush=True)
        for lb in order:
            out["first_sync"][lb] = fs = self.first_sync(self.lanes[lb], sentinels[lb])
            mean = f"mean {fs['sync_mean_s']:.2f}s, last done {fs['start_to_sync_metric_s']:.2f}s after start" \
                if fs["syncs"] else "none recorded"
            print(f"   {lb:<10} start -> first full sync served {fs['start_to_served_s']:6.2f}s "
                  f"(sync metrics: {fs['syncs']:.0f} syncs, {mean})", flush=True)
        changes = {lb: [] for lb in self.lanes}
        for _ in range(self.args.changes):
            self.change_port = port = PORT if self.change_port == DEAD_PORT else DEAD_PORT
            for k, (lb, lane) in enumerate(self.lanes.items()):
                time.sleep(1.2)
                changes[lb].append(self.one_change(k, lane, port))
        for lb, xs in changes.items():
            m = metrics(self.lanes[lb].node)  # were the changes' syncs full or partial ones?
            full, part = (m.get(f"sync_{k}_proxy_rules_duration_seconds_count", 0) for k in ("full", "partial"))
            out["change_s"][lb] = {"median": statistics.median(xs), "max": max(xs), "all": xs,
                                   "full_syncs": full, "partial_syncs": part}
            print(f"   {lb:<10} one change -> programmed: median {statistics.median(xs) * 1e3:6.0f}ms "
                  f"max {max(xs) * 1e3:6.0f}ms ({len(xs)} changes; since start {full:.0f} full and "
                  f"{part:.0f} partial syncs)", flush=True)
        out["latency"] = lat = self.latency(self.args.conns)
        for lb, v in lat.items():
            print(f"   {lb:<10} ClusterIP p50 {v['clusterip']['p50_us']:6.1f}us p99 {v['clusterip']['p99_us']:7.1f}us"
                  f" | pod IP p50 {v['pod']['p50_us']:6.1f}us p99 {v['pod']['p99_us']:7.1f}us"
                  f" | ClusterIP/pod IP p50 x{v['clusterip_over_pod']:.3f} (median of batches)", flush=True)
        for lane in self.lanes.values():
            self.stop_proxy(lane)
        return out

    def run(self) -> None:
        sizes = [int(s) for s in self.args.sizes.split(",")]
        for i, size in enumerate(sizes):
            order = PROXIES if i % 2 == 0 else PROXIES[::-1]
            self.results["sizes"][size] = self.step(size, order)
        self.summary(sizes)

    def summary(self, sizes: list[int]) -> None:
        res, ratios = self.results["sizes"], {}
        print("\nratios podwire / kube-proxy (same run; < 1 = podwire faster):")
        for size in sizes:
            r = res[size]
            fs = r["first_sync"]["podwire"]["start_to_served_s"] / r["first_sync"]["kube-proxy"]["start_to_served_s"]
            ch = r["change_s"]["podwire"]["median"] / r["change_s"]["kube-proxy"]["median"]
            lat = r["latency"]["podwire"]["clusterip"]["p50_us"] / r["latency"]["kube-proxy"]["clusterip"]["p50_us"]
            # each lane's ClusterIP over its own pod IP (see latency()): what the lanes' different
            # placements cannot skew
            norm = {lb: r["latency"][lb]["clusterip_over_pod"] for lb in PROXIES}
            rel = norm["podwire"] / norm["kube-proxy"]
            ratios[size] = {"first_sync": fs, "change": ch, "clusterip_p50": lat, "clusterip_over_pod": norm,
                            "clusterip_over_pod_ratio": rel}
            print(f"   {r['services']:>6} Services: start -> first full sync x{fs:.2f}, one change x{ch:.2f}, "
                  f"ClusterIP first-connection p50 x{lat:.3f} (ClusterIP/pod IP p50: podwire x{norm['podwire']:.3f}, "
                  f"kube-proxy x{norm['kube-proxy']:.3f}; ratio x{rel:.3f})")
        if len(sizes) >= 2:
            lo, hi = sizes[0], sizes[-1]
            for lb in PROXIES:
                # the raw p50s of two steps can sit in different modes of the bimodal softirq cost
                # (13 vs 19 us here); ClusterIP/pod IP cannot
                g = res[hi]["latency"][lb]["clusterip_over_pod"] / res[lo]["latency"][lb]["clusterip_over_pod"]
                raw = res[hi]["latency"][lb]["clusterip"]["p50_us"] / res[lo]["latency"][lb]["clusterip"]["p50_us"]
                print(f"   {lb:<10} ClusterIP/pod IP p50, {res[hi]['services']} vs {res[lo]['services']} Services: "
                      f"x{g:.3f} (raw ClusterIP p50 x{raw:.3f})")
                ratios[f"{lb}_growth"] = g
        self.results["ratios"] = ratios

    def close(self) -> None:
        for lane in self.lanes.values():
            try:
                self.stop_proxy(lane)
                lane.close()
            except Exception as e:  # noqa: BLE001 - teardown below removes what is left
                print(f"lane cleanup: {e}", file=sys.stderr)
        if self.cluster is not None:
            errors = self.cluster.down()
            if errors:
                print("teardown errors:", errors, file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,1000,10000", help="total Services per step, growing")
    ap.add_argument("--conns", type=int, default=2000, help="connections per target and proxy")
    ap.add_argument("--changes", type=int, default=6, help="one-change rounds per proxy and step")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's SIGTERM still cleans up
    bench = Bench(args)
    t0 = time.monotonic()
    try:
        bench.up()
        bench.run()
    finally:
        bench.close()
    bench.results["wall_s"] = time.monotonic() - t0
    print(f"wall time {bench.results['wall_s']:.0f}s, load average {os.getloadavg()[0]:.1f}")
    if args.json:
        print(json.dumps(bench.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
