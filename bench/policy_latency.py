#!/usr/bin/env python3
"""Benchmark: NetworkPolicy programming latency, from the API write to the element in the node's
kernel table, with 1k pods and 1k policies in the API. Needs root and the e2e harness (a real
API server); makes and removes its own cluster (pwe-pwlat-*).

One node runs `python3 -m node_daemon --policy` (its own identity with the daemon's and the
policy's RBAC, as tests/integration/test_policy_cluster.py starts it). Pods are API objects only
(no kubelet, no containers): created bound to a node, then given status.podIP through the status
subresource as kubelet would. ~100 of them on the daemon's node, the rest on nodes that do not
exist (peers only); 1k policies (per namespace one per app: ingress from the next app on the named
port `http` and from a team's namespaces on 9090). Before the trials no local pod is selected, so
each trial adds one pod address to `inet podwire-policy ingress-isolated4`:

- policy created: a new policy selects one local pod (by a label of its own);
- label change:   a local pod's labels are patched to an app an existing policy selects;
- pod added:      a new local pod of such an app is created, then its status gets the address
                  (the clock starts at the status write: before it the pod has no address to police;
                  from the create is reported too).

The kernel's side is watched with `nft monitor elements` in the node's namespace (event-driven: a
line per element as the transaction commits, read in a thread and timestamped), not by polling.
Trial kinds are interleaved; each waits for its element before the next write.

    python3 bench/policy_latency.py [--trials 60] [--pods 1000] [--policies 1000] [--json]

Target (issue 11): p99 <= 100 ms for each kind. --json adds one JSON object as the last line.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from api_nodes import TOLERATE_SILENT_NODES, create_nodes  # noqa: E402

NAMESPACES = 20
APPS = 50  # per namespace; one policy per (namespace, app) at 1k policies
REMOTE_NET = int(ipaddress.IPv4Address("10.244.128.0"))  # addresses of pods on nodes that do not exist
KINDS = ("policy created", "label change", "pod added")
TABLE_SET = "ingress-isolated4"


def ns_name(k: int) -> str:
    return f"lat{k % NAMESPACES}"


class Monitor:
    """`nft monitor elements` in the node's namespace; every line with the time it was read.

    A netlink listener can lose events when a burst overflows its socket buffer (a full rewrite
    of the table is thousands of element events): a trial not seen on the monitor within 0.1 s
    is also checked with `nft get element` every 0.1 s; one found there whose monitor line does
    not follow within 0.5 s counts with the time of that check (an upper bound), reported apart."""

    def __init__(self, netns: str):
        self.netns = netns
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.errors: list[str] = []
        self.polled = self.received = self.restarts = 0
        self.closing = False
        self.proc = self._start()
        threading.Thread(target=self._read, daemon=True).start()

    def _start(self) -> subprocess.Popen:
        # errors="replace": nft 1.0.6's monitor has printed a stray non-UTF-8 byte (and it segfaults)
        proc = subprocess.Popen(["ip", "netns", "exec", self.netns, "nft", "monitor", "elements"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
        threading.Thread(target=self._read_errors, args=(proc,), daemon=True).start()
        return proc

    def _read(self) -> None:
        """Lines of the monitor; one that exits (seen here: silently, after a few events, on a small
        table) is started again at once."""
        while not self.closing:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.received += 1
                self.lines.put((time.monotonic(), line))
            if self.closing:
                return
            self.errors.append(f"monitor exited ({self.proc.wait()}), restarted")
            self.restarts += 1
            self.proc = self._start()

    def _read_errors(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        self.errors.extend(line.strip() for line in proc.stderr)

    def drain(self) -> None:
        while not self.lines.empty():
            self.lines.get_nowait()

    def present(self, ip: str) -> bool:
        return subprocess.run(["ip", "netns", "exec", self.netns, "nft", "get", "element", "inet", "podwire-policy",
                               TABLE_SET, f"{{ {ip} }}"], capture_output=True).returncode == 0

    def wait_added(self, ip: str, since: float, timeout: float) -> float:
        """Time (monotonic) the element `ip` was added to the isolated set, after `since`."""
        want = re.compile(rf"^add element inet podwire-policy {TABLE_SET} {{ {re.escape(ip)} }}")
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{ip} not added to {TABLE_SET} within {timeout} s (monitor: {self.errors[-3:]})")
            try:
                at, line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.present(ip):
                    found = time.monotonic()
                    try:  # the monitor's line is usually just behind (a loaded machine): its time is exact
                        while True:
                            at, line = self.lines.get(timeout=0.5)
                            if at >= since and want.match(line):
                                return at
                    except queue.Empty:
                        self.polled += 1
                        return found
                continue
            if at >= since and want.match(line):
                return at

    def close(self) -> None:
        self.closing = True
        self.proc.kill()
        self.proc.wait()


def pod_body(name: str, node: str, labels: dict) -> dict:
    return {"metadata": {"name": name, "labels": labels}, "spec": {
        "nodeName": node, "tolerations": TOLERATE_SILENT_NODES, "containers": [{
        "name": "c", "image": "registry.k8s.io/pause:3.10",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]}]}}


def status_body(ip: str) -> dict:
    return {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def policy_body(name: str, selector: dict, app_from: str, team: str) -> dict:
    return {"metadata": {"name": name}, "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"],
                                                 "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"app": app_from}}}], "ports": [{"port": "http"}]},
        {"from": [{"namespaceSelector": {"matchLabels": {"team": team}}, "podSelector": {}}],
         "ports": [{"protocol": "TCP", "port": 9090}]}]}}


class Objects:
    """The API side: 20 namespaces, remote pods, local pods (f: for new policies, g: for relabelling),
    1k policies; then the trials' writes."""

    def __init__(self, api, local_node: str, local_net: ipaddress.IPv4Network):
        from kubernetes import client

        self.api = api
        self.core, self.net = client.CoreV1Api(api), client.NetworkingV1Api(api)
        self.node = local_node
        self.local_ips = (str(local_net.network_address + i) for i in range(2, local_net.num_addresses - 1))

    def setup(self, n_pods: int, n_policies: int, trials: int) -> dict[str, list[tuple[str, str, str]]]:
        for k in range(NAMESPACES):
            self.core.create_namespace({"metadata": {"name": ns_name(k), "labels": {"team": f"t{k % 5}"}}})
        pods: list[tuple[str, str, dict, str, str]] = []  # namespace, name, labels, node, ip
        local: dict[str, list[tuple[str, str, str]]] = {"f": [], "g": []}
        for k in range(trials):  # local pods no policy selects yet
            for kind in ("f", "g"):
                ns, name, ip = ns_name(k), f"{kind}{k}", next(self.local_ips)
                labels = {"app": "free", "free": f"f{k}"} if kind == "f" else {"app": "idle"}
                pods.append((ns, name, labels, self.node, ip))
                local[kind].append((ns, name, ip))
        for i in range(max(0, n_pods - len(pods))):
            ip = str(ipaddress.IPv4Address(REMOTE_NET + i))
            pods.append((ns_name(i), f"r{i}", {"app": f"svc{(i // NAMESPACES) % APPS}"}, f"gone{i % 50}", ip))

        create_nodes(self.api, (p[3] for p in pods if p[3] != self.node))  # else their pods are deleted

        def one_pod(p):
            ns, name, labels, node, ip = p
            self.core.create_namespaced_pod(ns, pod_body(name, node, labels))
            self.core.patch_namespaced_pod_status(name, ns, status_body(ip))

        def one_policy(j):
            ns, app = ns_name(j), f"svc{(j // NAMESPACES) % APPS}"
            self.net.create_namespaced_network_policy(ns, policy_body(
                f"allow-{app}", {"app": app}, f"svc{((j // NAMESPACES) + 1) % APPS}", f"t{(j + 1) % 5}"))

        with ThreadPoolExecutor(6) as ex:
            list(ex.map(one_pod, pods))
            list(ex.map(one_policy, range(n_policies)))
        return local

    def create_policy(self, k: int, ns: str) -> None:
        self.net.create_namespaced_network_policy(ns, policy_body(
            f"trial-{k}", {"free": f"f{k}"}, f"svc{(k + 1) % APPS}", f"t{k % 5}"))

    def relabel(self, k: int, ns: str, name: str) -> None:
        self.core.patch_namespaced_pod(name, ns, {"metadata": {"labels": {"app": f"svc{k % APPS}"}}})

    def add_pod(self, k: int) -> tuple[str, float, float]:
        """(ip, time of the create, time of the status write) for a new local pod of app svc<k>."""
        ns, name, ip = ns_name(k), f"new{k}", next(self.local_ips)
        created = time.monotonic()
        self.core.create_namespaced_pod(ns, pod_body(name, self.node, {"app": f"svc{k % APPS}"}))
        status = time.monotonic()
        self.core.patch_namespaced_pod_status(name, ns, status_body(ip))
        return ip, created, status


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def wait_for_table(netns: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "set", "inet", "podwire-policy", TABLE_SET],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the daemon wrote no policy table")
        time.sleep(0.2)


def daemon_metrics(netns: str) -> dict[str, float]:
    from tests.integration.daemon_cluster_helpers import METRICS

    text = subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", f"{METRICS}/metrics"],
                          capture_output=True, text=True).stdout
    out = {}
    for m in re.finditer(r'^podwire_policy_(sync_seconds_(?:sum|count))\{kind="(\w+)"\} ([\d.e+-]+)$', text, re.M):
        out[f"{m.group(1)}_{m.group(2)}"] = float(m.group(3))
    for m in re.finditer(r"^podwire_policy_(compile_seconds_(?:sum|count)) ([\d.e+-]+)$", text, re.M):
        out[m.group(1)] = float(m.group(2))
    for m in re.finditer(r'^podwire_policy_sync_phase_seconds_(sum|count)\{phase="(\w+)"\} ([\d.e+-]+)$', text, re.M):
        out[f"phase_{m.group(2)}_{m.group(1)}"] = float(m.group(3))
    return out


def run(n_pods: int, n_policies: int, trials: int, keep_log: str | None = None) -> dict:
    from tests.integration.daemon_cluster_helpers import daemon_cluster, grant_role, kill_leftovers, start_daemon
    from tests.integration.policy_cluster_helpers import POLICY_RBAC_RULES

    with daemon_cluster("pwlat", "routed", 1) as c, tempfile.TemporaryDirectory(prefix="pwlat-") as tmp:
        grant_role(c, "podwire-policy", POLICY_RBAC_RULES, "podwire:daemons")
        node = c.nodes[0]
        api = c.api_client()
        api.configuration.connection_pool_maxsize = 8
        objs = Objects(api, node.name, node.pod_cidr)
        t0 = time.monotonic()
        local = objs.setup(n_pods, n_policies, trials)
        print(f"API: {n_pods} pods ({2 * trials} on {node.name}), {n_policies} policies written in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        tmp_path = Path(tmp)
        log_path = tmp_path / f"{node.name}.log"
        # the daemon's default resync (start_daemon's 10 s would rewrite the whole table every 100 s)
        daemon = start_daemon(c, node, tmp_path / node.name, log_path, "--policy", "--resync-interval", "30",
                              *(("--log-level", "DEBUG") if keep_log else ()),
                              "--policy-socket", str(tmp_path / node.name / "run" / "policy.sock"))
        monitor = Monitor(node.netns)
        try:
            t0 = time.monotonic()
            wait_for_table(node.netns, 120)
            print(f"daemon started: first policy table after {time.monotonic() - t0:.1f} s", flush=True)
            time.sleep(2)  # let the first syncs settle
            samples: dict[str, list[float]] = {k: [] for k in KINDS}
            from_create: list[float] = []
            for k in range(trials):
                for kind in KINDS:
                    monitor.drain()
                    if kind == "policy created":
                        ns, _, ip = local["f"][k]
                        start = time.monotonic()
                        objs.create_policy(k, ns)
                    elif kind == "label change":
                        ns, name, ip = local["g"][k]
                        start = time.monotonic()
                        objs.relabel(k, ns, name)
                    else:
                        ip, created, start = objs.add_pod(k)
                    done = monitor.wait_added(ip, start, 30)
                    samples[kind].append(done - start)
                    if kind == "pod added":
                        from_create.append(done - created)
                    time.sleep(0.05)  # a gap: each trial is one change, not a batch
            metrics = daemon_metrics(node.netns)
            isolated = subprocess.run(["ip", "netns", "exec", node.netns, "nft", "-j", "list", "set", "inet",
                                       "podwire-policy", TABLE_SET], capture_output=True, text=True).stdout
        except BaseException:
            if log_path.exists():
                print("daemon log (tail):\n" + log_path.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            monitor.close()
            daemon.terminate()
            if keep_log and log_path.exists():
                Path(keep_log).write_text(log_path.read_text())
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_leftovers({node.name: daemon})
    elems = json.loads(isolated)["nftables"][1]["set"].get("elem", [])
    if len(elems) != 3 * trials:
        raise RuntimeError(f"{len(elems)} isolated addresses at the end, {3 * trials} expected")
    out: dict = {"pods": n_pods, "policies": n_policies, "trials": trials, "kinds": {}, "daemon": metrics,
                 "found_by_poll": monitor.polled, "monitor_restarts": monitor.restarts,
                 "monitor_errors": monitor.errors[-5:]}
    print(f"API write -> element in {TABLE_SET} (nft monitor), {trials} trials each, ms:")
    for kind in KINDS:
        xs = samples[kind]
        r = {"p50_ms": pct(xs, .5) * 1e3, "p90_ms": pct(xs, .9) * 1e3, "p99_ms": pct(xs, .99) * 1e3,
             "max_ms": max(xs) * 1e3}
        out["kinds"][kind] = r
        print(f"  {kind:<15} p50 {r['p50_ms']:6.1f}  p90 {r['p90_ms']:6.1f}  p99 {r['p99_ms']:6.1f}  "
              f"max {r['max_ms']:6.1f}   target p99 <= 100 ms: {'met' if r['p99_ms'] <= 100 else 'NOT met'}")
    out["pod_added_from_create"] = {"p50_ms": pct(from_create, .5) * 1e3, "p99_ms": pct(from_create, .99) * 1e3}
    print(f"  pod added, from the create (2 API writes): p50 {out['pod_added_from_create']['p50_ms']:.1f}  "
          f"p99 {out['pod_added_from_create']['p99_ms']:.1f}")
    if monitor.restarts:
        print(f"  nft monitor restarted {monitor.restarts} times (it exited: {monitor.errors[-1:]})")
    if monitor.polled:
        print(f"  {monitor.polled} trials not on nft monitor, timed by their `nft get element` check (upper bounds); "
              f"monitor: {monitor.received} lines, said {monitor.errors[-2:]}")
    for kind in ("diff", "full"):
        n = metrics.get(f"sync_seconds_count_{kind}")
        if n:
            print(f"  daemon's own {kind} syncs: {n:.0f}, mean {metrics[f'sync_seconds_sum_{kind}'] / n * 1e3:.1f} ms")
    phases = [k.split("_")[1] for k in metrics if k.startswith("phase_") and k.endswith("_count")]
    if phases:
        print("  per sync, mean ms: " + ", ".join(
            f"{p} {metrics[f'phase_{p}_sum'] / metrics[f'phase_{p}_count'] * 1e3:.1f}" for p in phases))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=60, help="per kind (>= 50 for a p99 worth the name)")
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--daemon-log", help="run the daemon at DEBUG (a line per sync) and keep its log here")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, the e2e harness)", file=sys.stderr)
        return 2
    if not 1 <= a.trials <= 80:
        print("--trials: 1-80 (three local addresses per trial in the node's /24)", file=sys.stderr)
        return 2
    result = run(a.pods, a.policies, a.trials, a.daemon_log)
    if a.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
