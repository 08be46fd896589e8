#!/usr/bin/env python3
"""Benchmark: the node daemon's memory with --policy against a real API server holding N pods.

Issue 11 asks for "daemon memory with 150k pods in the API (objects only, no containers)".
bench/policy_scale.py models it in one process; this measures the daemon itself: a harness
cluster (its own kube-apiserver and etcd, `pwe-pwmem-*`), N pods written through the API as
Deployments' pods look (policy_scale.pod_dict: labels, named ports, probes, a projected volume;
the API server adds its own managedFields), each then given status.podIP through the status
subresource as kubelet would, spread over 150-pod "nodes" that do not exist, plus the 1k
policies of policy_scale. Then one `python3 -m node_daemon --policy` (with the proxy, as deployed)
starts on a real node of the harness and lists everything (node0's share of the pods is on that
node, the rest on Node objects without kubelets); reported: the time to its first
policy table, its resident memory (VmRSS) after the first sync and a settle, and its peak (VmHWM,
the LIST pages in flight).

    python3 bench/policy_memory.py [--pods 150000] [--json]

Writing 150k pods twice through one API server on 2 cores takes a while (about 300-500 writes/s
here); --pods 20000 is a quick look. Target (issue 11): memory under 500 MB.
"""
from __future__ import annotations

import argparse
import json
import os
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
from policy_scale import layout, namespace_dicts, pods, policy_dicts  # noqa: E402

PODS_PER_NODE = 150
THREADS = 16


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def api_body(d: dict) -> dict:
    """A pod as a client creates it: what the API server assigns itself (uid, resourceVersion,
    managedFields, ownerReferences to a ReplicaSet that does not exist: the garbage collector would
    delete the pod) is left out; status is written after, through its subresource."""
    meta = {k: v for k, v in d["metadata"].items()
            if k in ("name", "namespace", "labels", "annotations", "generateName")}
    return {"metadata": meta, "spec": {**d["spec"], "tolerations": TOLERATE_SILENT_NODES}}


def write_objects(api, n_pods: int, local_node: str) -> float:
    from kubernetes import client

    core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
    spaces, _ = layout(n_pods)
    for d in namespace_dicts(spaces):
        body = {"metadata": {"name": d["metadata"]["name"], "labels": d["metadata"]["labels"]}}
        try:
            core.create_namespace(body)
        except client.ApiException as e:  # kube-system exists: give it the labels the policies select
            if e.status != 409:
                raise
            core.patch_namespace(d["metadata"]["name"], {"metadata": {"labels": d["metadata"]["labels"]}})
    for d in policy_dicts(spaces, min(1000, 20 * len(spaces))):  # 20 per namespace
        net.create_namespaced_network_policy(d["metadata"]["namespace"], {
            "metadata": {"name": d["metadata"]["name"]}, "spec": d["spec"]})
    done = [0]
    lock = threading.Lock()
    t0 = time.monotonic()

    def node_of(generated: str) -> str:  # node0's share is the daemon's node; the rest have no kubelet
        return local_node if generated == "node0" else generated.replace("node", "silent")

    def one(item):
        _, d = item
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        d["spec"]["nodeName"] = node_of(d["spec"]["nodeName"])
        # _preload_content=False: the reply is not turned into model objects (the client's CPU,
        # on a 2-core machine, is what limits the write rate)
        for call in (lambda: core.create_namespaced_pod(ns, api_body(d), _preload_content=False),
                     lambda: core.patch_namespaced_pod_status(name, ns, {"status": d["status"]},
                                                              _preload_content=False)):
            r = call()
            r.read()  # drained, so the connection goes back to the pool
            r.release_conn()
        with lock:
            done[0] += 1
            if done[0] % 10000 == 0:
                el = time.monotonic() - t0
                print(f"  {done[0]} pods written in {el:.0f} s ({2 * done[0] / el:.0f} writes/s)", flush=True)

    n_nodes = max(1, n_pods // PODS_PER_NODE)
    create_nodes(api, (f"silent{k}" for k in range(1, n_nodes)))  # else their pods are deleted (pod GC)
    with ThreadPoolExecutor(THREADS) as ex:
        for _ in ex.map(one, pods(n_pods, n_nodes), chunksize=64):
            pass
    return time.monotonic() - t0


def run(n_pods: int) -> dict:
    from tests.integration.daemon_cluster_helpers import daemon_cluster, grant_role, kill_leftovers, start_daemon
    from tests.integration.policy_cluster_helpers import POLICY_RBAC_RULES

    with daemon_cluster("pwmem", "routed", 1) as c, tempfile.TemporaryDirectory(prefix="pwmem-") as tmp:
        grant_role(c, "podwire-policy", POLICY_RBAC_RULES, "podwire:daemons")
        node = c.nodes[0]
        api = c.api_client()
        api.configuration.connection_pool_maxsize = THREADS
        took = write_objects(api, n_pods, node.name)
        print(f"API: {n_pods} pods (+ status) and their policies written in {took:.0f} s", flush=True)
        tmp_path = Path(tmp)
        log_path = tmp_path / f"{node.name}.log"
        t0 = time.monotonic()
        daemon = start_daemon(c, node, tmp_path / node.name, log_path, "--policy", "--proxy",
                              "--resync-interval", "30",
                              "--policy-socket", str(tmp_path / node.name / "run" / "policy.sock"))
        try:
            first = None
            deadline = t0 + 900
            while first is None:
                if daemon.poll() is not None:
                    raise RuntimeError("daemon exited:\n" + log_path.read_text()[-3000:])
                if time.monotonic() > deadline:
                    raise TimeoutError("no policy table within 900 s")
                if subprocess.run(["ip", "netns", "exec", node.netns, "nft", "list", "table", "inet",
                                   "podwire-policy"], capture_output=True).returncode == 0:
                    first = time.monotonic() - t0
                time.sleep(0.5)
            after_first = _status(daemon.pid)
            time.sleep(30)  # a resync and the informers' steady state
            settled = _status(daemon.pid)
            log_tail = log_path.read_text()[-1500:]
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_leftovers({node.name: daemon})
    out = {"pods": n_pods, "write_s": took, "first_table_s": first, "rss_after_first_sync_mb": after_first["VmRSS"],
           "rss_settled_mb": settled["VmRSS"], "peak_mb": settled["VmHWM"]}
    print(f"daemon (--policy --proxy) with {n_pods} pods and their policies in the API: first policy table after "
          f"{first:.1f} s; RSS {after_first['VmRSS']} MB after it, {settled['VmRSS']} MB 30 s later, peak (VmHWM) "
          f"{settled['VmHWM']} MB  (target < 500 MB)", flush=True)
    print("daemon log (tail):\n" + log_tail)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=150000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, the e2e harness)", file=sys.stderr)
        return 2
    result = run(a.pods)
    if a.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
