"""The policy feature's view of the cluster: records from informer events, and snapshots of them.

Events arrive on informer threads as plain API dicts; each is converted once (policy.from_api) into
a frozen record, so a sync never re-parses 150k pods. A bad object is logged once and skipped; a
bad *update* of a policy keeps the last good version of that policy (the API server validates
policies, so a policy we cannot read is our bug or hostile input: dropping it would silently
remove a firewall). `snapshot()` is a policy.model.Cluster built from the records.

Pod addresses reported by the CNI plugin (policy/gate.py) before the API has them (kubelet
writes status.podIPs only after the ADD returns) are held as overrides until the API agrees,
so a pod's policy is in force before its first packet.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

from policy.from_api import Skip, namespace_from_api, pod_from_api, policy_from_api
from policy.model import Cluster, IPAddress, Namespace, NetworkPolicy, Pod
from policy.pod_index import PodIndex
from proxy.from_api import parse_network

log = logging.getLogger("podwire.policy")

OVERRIDE_TTL = 300.0  # seconds a CNI-reported address waits for the API to confirm it


def _slim_containers(value) -> list:
    out = []
    if isinstance(value, list):
        for c in value:
            if isinstance(c, dict):
                keep = {k: c[k] for k in ("name", "ports", "restartPolicy") if k in c}
                out.append(keep)
            else:
                out.append(c)  # kept as is: the converter refuses it with a reason
    return out


def slim_pod(obj: dict) -> dict:
    """The fields of a Pod the policy reads (the informer keeps only these: a Pod's full JSON is
    ~5-20 KB, managedFields alone often half of it). Total: never raises, whatever `obj` is."""
    if not isinstance(obj, dict):
        return obj
    meta, spec, status = obj.get("metadata"), obj.get("spec"), obj.get("status")
    out: dict = {}
    if isinstance(meta, dict):
        out["metadata"] = {k: meta[k] for k in ("name", "namespace", "uid", "labels", "resourceVersion")
                           if k in meta}
    else:
        out["metadata"] = meta
    if isinstance(spec, dict):
        s = {k: spec[k] for k in ("nodeName", "hostNetwork") if k in spec}
        for k in ("containers", "initContainers"):
            if k in spec:
                s[k] = _slim_containers(spec[k])
        out["spec"] = s
    else:
        out["spec"] = spec
    if isinstance(status, dict):
        out["status"] = {k: status[k] for k in ("phase", "podIP", "podIPs") if k in status}
    else:
        out["status"] = status
    return out


def pod_key_only(obj: dict) -> dict:
    """What the Pod informer caches: the Store keeps the records, the informer only needs to tell
    a changed object (resourceVersion) and a deleted one (the key) at a relist. Total."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return {"metadata": {}}
    return {"metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion") if k in meta}}


def _key(obj) -> tuple[str, str] | None:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return None
    ns, name = meta.get("namespace") or "", meta.get("name")
    if not isinstance(name, str) or not isinstance(ns, str):
        return None
    return (ns, name)


class Store:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.pods: dict[tuple[str, str], Pod] = {}
        self.namespaces: dict[str, Namespace] = {}
        self.policies: dict[tuple[str, str], NetworkPolicy] = {}
        self.invalid: dict[tuple[str, str, str], str] = {}  # (kind, ns, name) -> reason
        # (ns, name) -> (uid or "", addresses, node, deadline): what the CNI plugin reported
        self.overrides: dict[tuple[str, str], tuple[str, tuple[IPAddress, ...], str, float]] = {}
        self.local: tuple = ()  # this node's pod CIDRs (Ruleset.local), from its Node object
        self.version = 0  # bumped by every change a sync must see
        self._derivations: dict[tuple[str, str], tuple] = {}  # key -> (base record, inputs, derived record)
        self._lock = threading.Lock()
        # the snapshot's pod side, kept incrementally: the keys whose effective record (API record
        # with overrides applied) may have changed since the last snapshot are refreshed in it
        self._index = PodIndex()
        self._touched: set[tuple[str, str]] = set()
        self._overrides_dirty = False
        self._fresh: dict[IPAddress, tuple[str, str]] = {}  # address -> override key holding it
        # address -> the API record listing it (a set when several do: rare, and a set per address
        # would cost ~260 bytes per pod of the cluster)
        self._api_claims: dict[IPAddress, tuple[str, str] | set[tuple[str, str]]] = {}
        self._policy_parts: tuple | None = None  # (sorted policies, per namespace) until policies change
        self._last_by_ns: dict[str, tuple[NetworkPolicy, ...]] = {}

    # ---- events (informer threads) -----------------------------------------------------
    def _convert(self, kind: str, obj, convert):
        key = _key(obj)
        if key is None:
            log.warning("%s without a readable name ignored", kind)
            return None, None
        try:
            record = convert(obj)
        except Skip as e:
            if self.invalid.get((kind, *key)) != e.reason:
                log.warning("%s %s/%s ignored: %s", kind, key[0], key[1], e.reason)
            self.invalid[(kind, *key)] = e.reason
            return key, None
        self.invalid.pop((kind, *key), None)
        return key, record

    def on_pod(self, obj, deleted: bool) -> bool:
        with self._lock:
            key, pod = (_key(obj), None) if deleted else self._convert("Pod", obj, pod_from_api)
            if key is None:
                return False
            if pod is None:  # deleted, or unreadable now: either way it holds no address we trust
                if deleted:
                    self.invalid.pop(("Pod", *key), None)
                if self.overrides.pop(key, None) is not None:
                    self._overrides_dirty = True
                    self._touched.add(key)
                old = self.pods.pop(key, None)
                changed = old is not None
                if old is not None:
                    self._unclaim(key, old)
            else:
                o = self.overrides.get(key)
                if o is not None:
                    other_pod = bool(o[0]) and pod.uid != o[0]  # deleted and re-created meanwhile
                    if other_pod or set(o[1]) <= set(pod.ips):  # ... or the API confirms the CNI
                        del self.overrides[key]
                        self._overrides_dirty = True
                        self._touched.add(key)
                old = self.pods.get(key)
                changed = old != pod
                if changed:  # an equal record stays the same object: the compiler tells changes by identity
                    if old is not None:
                        self._unclaim(key, old)
                    self.pods[key] = pod
                    for ip in pod.ips:
                        cur = self._api_claims.get(ip)
                        if cur is None:
                            self._api_claims[ip] = key
                        elif isinstance(cur, set):
                            cur.add(key)
                        elif cur != key:
                            self._api_claims[ip] = {cur, key}
                    if old is None and key in self.overrides:
                        self._overrides_dirty = True  # an override's pod reached the API: its addresses are fresh
            if changed:
                self.version += 1
                self._touched.add(key)
            return changed

    def _unclaim(self, key, old: Pod) -> None:
        for ip in old.ips:
            keys = self._api_claims.get(ip)
            if keys is None:
                continue
            if isinstance(keys, set):
                keys.discard(key)
                if len(keys) == 1:
                    self._api_claims[ip] = next(iter(keys))
                elif not keys:
                    del self._api_claims[ip]
            elif keys == key:
                del self._api_claims[ip]
        if key in self.overrides:
            self._overrides_dirty = True

    def on_namespace(self, obj, deleted: bool) -> bool:
        with self._lock:
            key, ns = (_key(obj), None) if deleted else self._convert("Namespace", obj, namespace_from_api)
            if key is None:
                return False
            name = key[1]
            if ns is None:
                # a namespace we cannot read keeps its last good labels; a deleted one goes
                changed = deleted and self.namespaces.pop(name, None) is not None
            else:
                changed = self.namespaces.get(name) != ns
                if changed:
                    self.namespaces[name] = ns
            if changed:
                self.version += 1
            return changed

    def on_policy(self, obj, deleted: bool) -> bool:
        with self._lock:
            key, pol = (_key(obj), None) if deleted else self._convert("NetworkPolicy", obj, policy_from_api)
            if key is None:
                return False
            if deleted:
                self.invalid.pop(("NetworkPolicy", *key), None)
                changed = self.policies.pop(key, None) is not None
                if changed:
                    self._policy_parts = None
            elif pol is None:
                if key in self.policies:
                    log.warning("NetworkPolicy %s/%s: keeping its last good version", *key)
                return False
            else:
                changed = self.policies.get(key) != pol
                if changed:
                    self.policies[key] = pol
                    self._policy_parts = None
            if changed:
                self.version += 1
            return changed

    def on_node(self, obj, deleted: bool, node_name: str) -> bool:
        """This node's spec.podCIDRs (other nodes' are not needed: their pods are peers by IP)."""
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict) or meta.get("name") != node_name:
            return False
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        cidrs = []
        raw = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        for value in raw if isinstance(raw, list) and not deleted else []:
            try:
                cidrs.append(parse_network(value))
            except ValueError:
                log.warning("Node %s: bad podCIDR %r ignored", node_name, value)
        with self._lock:
            if tuple(cidrs) == self.local or (deleted and self.local):
                return False  # a deleted Node keeps its last CIDRs: pods still run here
            self.local = tuple(cidrs)
            self.version += 1
            return True

    # ---- the CNI plugin's report (policy/gate.py) ----------------------------------------
    def report(self, namespace: str, name: str, uid: str, ips: tuple[IPAddress, ...], node: str) -> int:
        """Addresses the CNI plugin just gave a pod of this node; returns the store version a sync
        must reach for them to be in force."""
        with self._lock:
            self.overrides[(namespace, name)] = (uid, ips, node, self.clock() + OVERRIDE_TTL)
            self._overrides_dirty = True
            self._touched.add((namespace, name))
            self.version += 1
            return self.version

    def has_policies(self, namespace: str) -> bool:
        with self._lock:
            return any(k[0] == namespace for k in self.policies)

    def policy_namespaces(self) -> list[str]:
        with self._lock:
            return sorted({k[0] for k in self.policies})

    def _derived(self, key, base: Pod | None, inputs, make) -> Pod:
        """A record derived from an API record and an override, the same object from snapshot to
        snapshot while both are (the compiler tells changes by identity)."""
        hit = self._derivations.get(key)
        if hit is not None and hit[0] is base and hit[1] == inputs:
            return hit[2]
        made = make(base)
        self._derivations[key] = (base, inputs, made)
        return made

    def knows_pod(self, namespace: str, name: str) -> bool:
        with self._lock:
            return (namespace, name) in self.pods

    # ---- snapshots (the sync thread) ---------------------------------------------------
    def snapshot(self) -> tuple[int, Cluster]:
        """(version, Cluster) of everything seen so far, overrides applied (`local` is read
        with it: take both under one call of snapshot_all)."""
        version, cluster, _ = self.snapshot_all()
        return version, cluster

    def snapshot_all(self) -> tuple[int, Cluster, tuple]:
        """(version, Cluster, local pod CIDRs), consistent with each other. Incremental: only the
        pods touched since the last snapshot are looked at again (policy/pod_index.py)."""
        with self._lock:
            now = self.clock()
            for key in [k for k, o in self.overrides.items() if o[3] < now]:
                del self.overrides[key]
                self._touched.add(key)
                self._overrides_dirty = True
            if self._overrides_dirty:
                # This node's IPAM just handed these addresses out: another pod the API still shows
                # with one of them is gone (its DEL ran), and must not win the address from the new
                # pod (Cluster.build resolves conflicts by name, which could leave the new pod unpoliced).
                fresh = {ip: key for key, o in self.overrides.items() if key in self.pods for ip in o[1]}
                if fresh != self._fresh:
                    for ip in set(fresh) | set(self._fresh):
                        keys = self._api_claims.get(ip)
                        if isinstance(keys, set):
                            self._touched.update(keys)
                        elif keys is not None:
                            self._touched.add(keys)
                    self._fresh = fresh
                self._touched.update(self.overrides)
                self._overrides_dirty = False
                if not self.overrides:
                    self._derivations.clear()
            for key in self._touched:
                self._index.put(key, self._effective(key))
            self._touched.clear()
            by_ns, by_ip, conflicts = self._index.parts()
            if self._policy_parts is None:
                ordered = tuple(self.policies[k] for k in sorted(self.policies))
                grouped: dict[str, list[NetworkPolicy]] = {}
                for pol in ordered:
                    grouped.setdefault(pol.namespace, []).append(pol)
                before = self._last_by_ns
                per_ns: dict[str, tuple[NetworkPolicy, ...]] = {}
                for ns, v in grouped.items():
                    old = before.get(ns, ())
                    # a namespace whose policies are the same objects keeps its tuple: the compiler
                    # skips its pods by identity (policy.compile.NodeCompiler)
                    same = len(old) == len(v) and all(a is b for a, b in zip(old, v, strict=True))
                    per_ns[ns] = old if same else tuple(v)
                self._last_by_ns = per_ns
                self._policy_parts = (ordered, per_ns)
            policies, policies_by_ns = self._policy_parts
            cluster = Cluster(None, dict(self.namespaces), policies, by_ip, dict(policies_by_ns), conflicts,
                              pods_by_namespace=by_ns, all_pods=dict(self._index.records))
            return self.version, cluster, self.local

    def _effective(self, key: tuple[str, str]) -> Pod | None:
        """The pod at `key` as a snapshot shows it: its API record, with the CNI plugin's report
        applied (or, for another pod, this node's fresh addresses taken away)."""
        shown = self.pods.get(key)
        o = self.overrides.get(key)
        if o is not None:
            uid, ips, node, _ = o
            if shown is None:  # not in the API (the gate admits that only where no policy is)
                return self._derived(key, None, (uid, ips, node), lambda _: Pod(key[0], key[1], uid, node, ips))
            return self._derived(key, shown, (ips, node), lambda p: replace(p, ips=ips, node=p.node or node))
        if shown is None:
            return None
        fresh = self._fresh
        if fresh and any(ip in fresh for ip in shown.ips):
            kept = tuple(ip for ip in shown.ips if ip not in fresh)
            return self._derived(key, shown, kept, lambda p: replace(p, ips=kept))
        return shown
