#!/usr/bin/env python3
"""Benchmark: NetworkPolicy full sync of 10k pods x 1k policies, and the memory 150k pods cost.

Full sync (needs root for the last stage; each size loads into a fresh netns pwbs-*): synthetic
API objects shaped like real ones (Deployment pods with managedFields, probes, a projected token
volume, named container ports; namespaces with team/env labels; per namespace a default deny,
DNS egress to kube-dns, monitoring on the named `metrics` port, app-to-app allows on named and
numbered ports, endPort ranges, ipBlocks with excepts) as `json.loads` hands them to the
informers, then timed stage by stage: from_api conversion -> Cluster.build -> compile_node for
one node -> render_full -> `nft -f` into a fresh netns. The local pod count is the node's share
(--local 100,1000 = 100 and 10 nodes): 100 is a 100-node cluster, 1000 a node with many pods
(10000, every pod on one node, takes minutes).

Memory (no root): a child process per variant, RSS growth (VmRSS) for --memory-pods pods (150k)
received in LIST pages of 500 (json.loads per page, as node_daemon.informer does) and kept as:
`raw` an informer cache of the full dicts; `slim` the cache of policy.store.slim_pod dicts (what
--policy's informer keeps); `store` the converted records in a policy.store.Store only; `daemon`
slim cache + Store (the daemon with --policy today); `minimal` a cache of name/namespace/
resourceVersion + Store (a candidate). With records, also the RSS while a sync's Cluster snapshot
is alive.

    python3 bench/policy_scale.py [--pods 10000] [--policies 1000] [--local 100,1000]
                                  [--memory-pods 150000] [--no-sync] [--no-memory] [--json]

Targets (issue 11): full sync under 5 s, memory under 500 MB.
--json adds one JSON object as the last line (for bench/run_all.py).
"""
from __future__ import annotations

import argparse
import gc
import ipaddress
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
import zlib
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from netkit.nft import apply as nft_apply  # noqa: E402
from node_daemon.informer import key_of  # noqa: E402
from policy.compile import compile_node  # noqa: E402
from policy.from_api import namespace_from_api, pod_from_api, policy_from_api  # noqa: E402
from policy.model import Cluster  # noqa: E402
from policy.ruleset import TABLE, elements, render_full  # noqa: E402
from policy.store import Store, slim_pod  # noqa: E402

APPS_PER_NAMESPACE = 10
POLICIES_PER_NAMESPACE = 20  # see namespace_policies()
POD_BASE = int(ipaddress.IPv4Address("10.128.0.0"))  # pod i has POD_BASE + i (fits 4M pods)
PAGE = 500  # the informer's LIST page size
TIERS = ("fe", "be", "db")


def _hex(i: int, width: int, salt: int = 0) -> str:
    return f"{(i * 2654435761 + salt * 40503) & ((1 << (4 * width)) - 1):0{width}x}"


def _uid(i: int, salt: int) -> str:
    h = _hex(i, 32, salt)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def layout(n_pods: int) -> tuple[list[str], int]:
    """Namespaces (about 200 pods each, at least 2) and the number of app namespaces."""
    n_ns = max(2, n_pods // 200)
    return [f"team{k % 10}-app{k}" for k in range(n_ns)], n_ns


def pod_dict(i: int, namespace: str, app: str, tier: str, team: str, node: str, node_ip: str) -> dict:
    """A Deployment's pod as the API server lists it (managedFields included: LIST returns them)."""
    rs_hash = _hex(zlib.crc32(f"{namespace}/{app}".encode()), 9)
    name = f"{app}-{rs_hash}-{_hex(i, 5, 7)}"
    ip = str(ipaddress.IPv4Address(POD_BASE + i))
    ts = f"2026-11-{1 + i % 27:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}Z"
    cname, image = app.rsplit("-", 1)[-1], f"registry.example.com/{namespace}/{app}:1.{i % 7}.{i % 3}"
    container_id = _hex(i, 32, 3) + _hex(i, 32, 4)
    labels = {"app": app, "tier": tier, "team": team, "pod-template-hash": rs_hash}
    ports = [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
             {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    probe = {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"}, "timeoutSeconds": 1,
             "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}
    conditions = [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": ts}
                  for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")]
    mf_meta: dict[str, Any] = {"f:generateName": {}, "f:labels": {".": {}, **{f"f:{k}": {} for k in labels}},
               "f:ownerReferences": {".": {}, f'k:{{"uid":"{_uid(i, 2)}"}}': {}}}
    mf_container: dict[str, Any] = {".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {},
                    "f:ports": {".": {}, 'k:{"containerPort":8080,"protocol":"TCP"}': {
                        ".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {}},
                        'k:{"containerPort":9090,"protocol":"TCP"}': {
                        ".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {}}},
                    "f:readinessProbe": {".": {}, "f:httpGet": {".": {}, "f:path": {}, "f:port": {}}},
                    "f:resources": {".": {}, "f:limits": {".": {}, "f:memory": {}},
                                    "f:requests": {".": {}, "f:cpu": {}, "f:memory": {}}},
                    "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}}
    return {
        "metadata": {
            "name": name, "generateName": f"{app}-{rs_hash}-", "namespace": namespace, "uid": _uid(i, 1),
            "resourceVersion": str(100000 + i), "creationTimestamp": ts, "labels": labels,
            "annotations": {"kubectl.kubernetes.io/restartedAt": ts},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{app}-{rs_hash}",
                                 "uid": _uid(i, 2), "controller": True, "blockOwnerDeletion": True}],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": ts,
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": mf_meta, "f:spec": {
                     "f:containers": {f'k:{{"name":"{cname}"}}': mf_container},
                     "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {},
                     "f:securityContext": {}, "f:terminationGracePeriodSeconds": {}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": ts,
                 "fieldsType": "FieldsV1", "subresource": "status", "fieldsV1": {"f:status": {
                     "f:conditions": {f'k:{{"type":"{c["type"]}"}}': {
                         ".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}
                         for c in conditions},
                     "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {}, "f:phase": {}, "f:podIP": {},
                     "f:podIPs": {".": {}, f'k:{{"ip":"{ip}"}}': {".": {}, "f:ip": {}}}, "f:startTime": {}}}}]},
        "spec": {
            "volumes": [{"name": f"kube-api-access-{_hex(i, 5, 5)}", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                    "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}], "defaultMode": 420}}],
            "containers": [{
                "name": cname, "image": image, "ports": ports,
                "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME", "valueFrom": {
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                "volumeMounts": [{"name": f"kube-api-access-{_hex(i, 5, 5)}", "readOnly": True,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "livenessProbe": probe, "readinessProbe": dict(probe),
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default", "nodeName": node,
            "securityContext": {}, "schedulerName": "default-scheduler",
            "tolerations": [{"key": f"node.kubernetes.io/{k}", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 300} for k in ("not-ready", "unreachable")],
            "priority": 0, "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority"},
        "status": {
            "phase": "Running", "conditions": conditions, "hostIP": node_ip, "hostIPs": [{"ip": node_ip}],
            "podIP": ip, "podIPs": [{"ip": ip}], "startTime": ts, "qosClass": "Burstable",
            "containerStatuses": [{
                "name": cname, "state": {"running": {"startedAt": ts}}, "lastState": {}, "ready": True,
                "restartCount": i % 3, "image": image,
                "imageID": f"registry.example.com/{namespace}/{app}@sha256:{_hex(i, 32, 8)}{_hex(i, 32, 9)}",
                "containerID": f"containerd://{container_id}", "started": True}]}}


def pods(n_pods: int, n_nodes: int):
    """(index, pod dict) for every pod: two kube-dns pods in kube-system, the rest in the app namespaces."""
    spaces, _ = layout(n_pods)
    for i in range(n_pods):
        node_k = i % n_nodes
        node, node_ip = f"node{node_k}", f"192.168.{node_k // 250}.{node_k % 250 + 1}"
        if i < 2:
            d = pod_dict(i, "kube-system", "coredns", "be", "platform", node, node_ip)
            d["metadata"]["labels"] = {"k8s-app": "kube-dns", "pod-template-hash": "5d78c9869d"}
            d["spec"]["containers"][0]["ports"] = [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                                   {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}]
        else:
            k = i % len(spaces)  # pods of a namespace spread over the nodes
            ns = spaces[k]
            app = f"{ns}-svc{(i // len(spaces)) % APPS_PER_NAMESPACE}"
            d = pod_dict(i, ns, app, TIERS[(i // len(spaces)) % 3], f"t{k % 10}", node, node_ip)
        yield i, d


def namespace_dicts(spaces: list[str]) -> list[dict]:
    out = [{"metadata": {"name": "kube-system", "labels": {"kubernetes.io/metadata.name": "kube-system"}}},
           {"metadata": {"name": "monitoring", "labels": {"kubernetes.io/metadata.name": "monitoring",
                                                          "purpose": "monitoring"}}}]
    for k, ns in enumerate(spaces):
        out.append({"metadata": {"name": ns, "uid": _uid(k, 11), "resourceVersion": str(50 + k), "labels": {
            "kubernetes.io/metadata.name": ns, "team": f"t{k % 10}", "env": ("prod", "staging")[k % 2]}}})
    return out


def namespace_policies(ns: str, k: int) -> list[dict]:
    """POLICIES_PER_NAMESPACE policies of the kinds real clusters hold (k: the namespace's index)."""
    app = [f"{ns}-svc{j}" for j in range(APPS_PER_NAMESPACE)]
    ps = [
        ("default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        ("allow-dns", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}),
        ("allow-monitoring", {"podSelector": {}, "ingress": [{
            "from": [{"namespaceSelector": {"matchLabels": {"purpose": "monitoring"}}}],
            "ports": [{"port": "metrics"}]}]}),
        ("allow-lb", {"podSelector": {"matchLabels": {"tier": "fe"}}, "ingress": [{
            "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.128.0.0/10"]}},
                     {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.255.0/24"]}}],
            "ports": [{"port": 8080}, {"port": 30000, "endPort": 32767}]}]}),
        ("egress-external", {"podSelector": {"matchLabels": {"tier": "be"}}, "policyTypes": ["Egress"], "egress": [{
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]}}],
            "ports": [{"protocol": "TCP", "port": 443}]}]}),
        ("from-team", {"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]}]},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": f"t{(k + 1) % 10}"}},
                                              "podSelector": {"matchLabels": {"tier": "fe"}}}],
                                    "ports": [{"protocol": "TCP", "port": 8080}]}]}),
    ]
    for j in range(APPS_PER_NAMESPACE):  # each app: ingress from the previous app on the named port
        ps.append((f"allow-{j}", {"podSelector": {"matchLabels": {"app": app[j]}}, "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"app": app[j - 1]}}}], "ports": [{"port": "http"}]}]}))
    for j in range(POLICIES_PER_NAMESPACE - len(ps)):  # and egress to the next on the named port (per peer pod)
        ps.append((f"egress-{j}", {"podSelector": {"matchLabels": {"app": app[j]}}, "policyTypes": ["Egress"],
                                   "egress": [{"to": [{"podSelector": {"matchLabels": {"app": app[j + 1]}}}],
                                               "ports": [{"port": "http"}, {"protocol": "TCP", "port": 9090}]}]}))
    return [{"metadata": {"name": name, "namespace": ns, "uid": _uid(k * 100 + m, 12),
                          "resourceVersion": str(200000 + k * 100 + m)}, "spec": spec}
            for m, (name, spec) in enumerate(ps)]


def policy_dicts(spaces: list[str], n_policies: int) -> list[dict]:
    out = [p for k, ns in enumerate(spaces) for p in namespace_policies(ns, k)]
    if len(out) < n_policies:
        raise ValueError(f"{n_policies} policies need {n_policies // POLICIES_PER_NAMESPACE} namespaces")
    return out[:n_policies]


def as_received(objs: list[dict]) -> list[dict]:
    """The objects as the informer holds them: json.loads of LIST pages (no structure shared with ours)."""
    out: list[dict] = []
    for k in range(0, len(objs), PAGE):
        out += json.loads(json.dumps({"items": objs[k:k + PAGE]}))["items"]
    return out


# ---- full sync ---------------------------------------------------------------------------

def full_sync(n_pods: int, n_policies: int, local: int, netns: str | None, rewrite_max: int = 5000) -> dict:
    n_nodes = max(1, n_pods // local)
    spaces, _ = layout(n_pods)
    raw_pods = as_received([d for _, d in pods(n_pods, n_nodes)])
    raw_ns = as_received(namespace_dicts(spaces))
    raw_pol = as_received(policy_dicts(spaces, n_policies))
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    pod_records = [pod_from_api(d) for d in raw_pods]
    ns_records = [namespace_from_api(d) for d in raw_ns]
    pol_records = [policy_from_api(d) for d in raw_pol]
    t["convert"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cluster = Cluster.build(pod_records, ns_records, pol_records)
    t["build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rs = compile_node(cluster, "node0")
    t["compile"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    text = render_full(rs)
    t["render"] = time.perf_counter() - t0
    if netns is not None:
        t0 = time.perf_counter()
        nft_apply(text, f"/run/netns/{netns}")
        t["nft"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    local_pods = sum(1 for p in pod_records if p.node == "node0")
    n_el = sum(len(v) for v in elements(rs).values())
    print(f"{n_pods} pods x {len(pol_records)} policies, node0 with {local_pods} local pods ({n_nodes} nodes): "
          + "  ".join(f"{k} {v:5.2f}s" for k, v in t.items())
          + f"  | {len(rs.isolated_ingress)}/{len(rs.isolated_egress)} isolated in/out, {len(rs.ingress)}+"
          f"{len(rs.egress)} allows, {n_el} elements, {len(text) / 1e6:.1f} MB of nft text", flush=True)
    out = {"local_pods": local_pods, "nodes": n_nodes, "seconds": t, "elements": n_el, "nft_bytes": len(text)}
    if netns is not None:
        # the daemon's periodic full resync (and its fallback after a refused diff) sends the same text
        # over the loaded table: `flush table` + every element again. The kernel removes interval-set
        # (pipapo) elements one by one, each O(set size), in the commit, without rescheduling (soft
        # lockups, unkillable): 1k elements 0.28 s, 2k 0.88 s, 4k 3.6 s, 8.4k 10 s here. So it is timed
        # only up to --rewrite-max elements; the alternative (`delete table` first, the sets freed
        # whole) always.
        path = f"/run/netns/{netns}"
        if n_el <= rewrite_max:
            t0 = time.perf_counter()
            nft_apply(text, path)
            out["rewrite_flush_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        nft_apply(f"delete table inet {TABLE}\n" + text, path)
        out["rewrite_delete_s"] = time.perf_counter() - t0
        flushed = (f"{out['rewrite_flush_s']:.2f}s" if "rewrite_flush_s" in out
                   else f"not run (> --rewrite-max {rewrite_max} elements)")
        print(f"   full rewrite over the loaded table: as render_full does it (flush table + re-add) {flushed}; "
              f"delete table + re-add {out['rewrite_delete_s']:.2f}s", flush=True)
        out["one_change"] = one_change(raw_pods, raw_ns, raw_pol, netns, rs)
    return out


def one_change(raw_pods: list[dict], raw_ns: list[dict], raw_pol: list[dict], netns: str, loaded,
               changes: int = 5) -> dict:
    """The daemon's own sync path (policy.agent.PolicyAgent over a policy.store.Store, no conntrack
    cleaner, no bridge check) after one event: a local pod's tier label changed, so other policies
    select it. Timed: the event handler, a snapshot with a from-scratch compile_node (what a sync
    cost before the compile was incremental), and the agent's own sync (snapshot, incremental
    compile, per-pod render, nft); what the programming latency costs beyond the API and the watch."""
    from policy.agent import PolicyAgent
    from proxy.sync import NftRunner

    store = Store()
    for d in raw_ns:
        store.on_namespace(d, False)
    for d in raw_pol:
        store.on_policy(d, False)
    for d in raw_pods:
        store.on_pod(slim_pod(d), False)
    agent = PolicyAgent("node0", store, NftRunner(f"/run/netns/{netns}"))
    agent.applied = loaded  # what the kernel holds (loaded above): syncs from here on are diffs
    local = [d for d in raw_pods if d["spec"]["nodeName"] == "node0" and "tier" in d["metadata"]["labels"]]
    event, prepare, whole = [], [], []
    for k in range(changes):
        d = json.loads(json.dumps(slim_pod(local[k])))
        labels = d["metadata"]["labels"]
        labels["tier"] = TIERS[(TIERS.index(labels["tier"]) + 1) % len(TIERS)]
        d["metadata"]["resourceVersion"] = str(900000 + k)
        t0 = time.perf_counter()
        assert store.on_pod(d, False)
        t1 = time.perf_counter()
        _, cluster = store.snapshot()
        compile_node(cluster, "node0")
        t2 = time.perf_counter()
        agent.sync()
        t3 = time.perf_counter()
        event.append(t1 - t0)
        prepare.append(t2 - t1)
        whole.append(t3 - t2)
    med = statistics.median
    print(f"   one change (a local pod's label), {changes} times, median [max]: event {med(event) * 1e3:.1f} ms, "
          f"snapshot + a from-scratch compile_node {med(prepare) * 1e3:.0f} [{max(prepare) * 1e3:.0f}] ms, the "
          f"agent's incremental sync (snapshot, compile, render, nft; the first one fills its caches) "
          f"{med(whole) * 1e3:.0f} [{max(whole) * 1e3:.0f}] ms", flush=True)
    return {"event_s": event, "snapshot_compile_s": prepare, "sync_s": whole}


# ---- memory ------------------------------------------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def minimal(d: dict) -> dict:
    """What the informer itself needs of a cached object (its key, and resourceVersion for the relist
    diff): a candidate for what its cache keeps when the Store holds the records."""
    meta = d.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion") if k in meta}}


# mode -> (informer cache transform or None for no cache, records in a policy.store.Store?)
MEMORY_MODES = {
    "raw": (lambda d: d, False),     # an informer without a transform: the dicts json.loads made
    "slim": (slim_pod, False),       # the informer's cache as --policy keeps it (policy.store.slim_pod)
    "store": (None, True),           # the converted records only (policy.store.Store.pods)
    "daemon": (slim_pod, True),      # what the daemon with --policy keeps today: slim cache + records
    "minimal": (minimal, True),      # a candidate: records + a cache of name/namespace/resourceVersion
}


def memory_child(mode: str, n_pods: int) -> dict:
    """RSS growth for n_pods kept as `mode`, received page by page as the informer receives them."""
    transform, keep_records = MEMORY_MODES[mode]
    n_nodes = max(1, n_pods // 150)
    gen = pods(n_pods, n_nodes)
    store = Store()
    cache: dict[str, dict] = {}
    gc.collect()
    before = _rss_mb()
    json_bytes = 0
    while True:
        page = [d for _, d in itertools.islice(gen, PAGE)]
        if not page:
            break
        text = json.dumps({"kind": "PodList", "items": page})
        json_bytes += len(text)
        del page
        for d in json.loads(text)["items"]:
            if transform is not None:
                cache[key_of(d)] = transform(d)
            if keep_records:
                store.on_pod(slim_pod(d), False)  # the Store gets what the informer hands on
        del text
    gc.collect()
    out = {"mode": mode, "pods": n_pods, "json_mb": json_bytes / 2**20, "rss_mb": _rss_mb() - before}
    assert len(cache) == n_pods or len(store.pods) == n_pods
    if keep_records:
        _, cluster = store.snapshot()  # the sync's Cluster with its indexes, alive while a sync runs
        gc.collect()
        out["rss_with_snapshot_mb"] = _rss_mb() - before
        assert len(cluster.pods) == n_pods
    return out


def memory(n_pods: int) -> dict:
    out = {}
    for mode in MEMORY_MODES:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", mode,
                               "--memory-pods", str(n_pods)], capture_output=True, text=True, timeout=900)
        if proc.returncode:
            raise RuntimeError(f"memory child {mode} failed: {proc.stderr[-2000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        out[mode] = r
        extra = (f", {r['rss_with_snapshot_mb']:.0f} MB during a sync (+ Cluster snapshot)"
                 if "rss_with_snapshot_mb" in r else "")
        print(f"memory, {n_pods} pods kept as {mode:<7}: RSS +{r['rss_mb']:6.0f} MB "
              f"({r['rss_mb'] * 1024 / n_pods:5.2f} KB/pod){extra}  [LIST JSON {r['json_mb']:.0f} MB]", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=10000)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--local", default="100,1000", help="node0's local pods, one full sync each (10000: all on one "
                    "node, minutes)")
    ap.add_argument("--memory-pods", type=int, default=150000)
    ap.add_argument("--rewrite-max", type=int, default=5000,
                    help="time a full rewrite over the loaded table only up to this many elements")
    ap.add_argument("--no-sync", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-child", choices=tuple(MEMORY_MODES), help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    a = ap.parse_args()
    if a.memory_child:
        print(json.dumps(memory_child(a.memory_child, a.memory_pods)))
        return 0
    if not a.no_sync and os.geteuid() != 0:
        print("the full sync needs root (a network namespace); --no-sync measures memory only", file=sys.stderr)
        return 2
    result: dict = {"pods": a.pods, "policies": a.policies, "sync": {}, "memory": {}}
    if not a.no_sync:
        for local in (int(s) for s in a.local.split(",")):
            netns = f"pwbs-{uuid.uuid4().hex[:6]}"
            subprocess.run(["ip", "netns", "add", netns], check=True)
            try:
                result["sync"][str(local)] = full_sync(a.pods, a.policies, local, netns, a.rewrite_max)
            finally:
                subprocess.run(["ip", "netns", "del", netns], check=False)
    if not a.no_memory:
        result["memory"] = memory(a.memory_pods)
        today = result["memory"]["daemon"]
        peak = today["rss_with_snapshot_mb"]
        print(f"memory target < 500 MB for {a.memory_pods} pods (slim cache + records, as --policy keeps them; "
              f"with a sync's snapshot): {'met' if peak < 500 else 'NOT met'} ({peak:.0f} MB)")
    if a.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
