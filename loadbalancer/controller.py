"""The allocator's controller: on the daemon that holds the allocator Lease, every sync runs the
pure allocator over all Services and pools and writes what differs from what the API shows.

`service_writes` and `pool_status` are pure (object as found + decision -> the writes); `Writer`
is the thin edge that sends them. Writes carry the resourceVersion they were computed from, so
a write based on a stale cache fails with 409 and the next sync decides again. Order matters:
the finalizer goes on before an address is shown (a deletion in between must still release it),
and comes off only after the address is cleared.
"""
from __future__ import annotations

import copy
import datetime
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

from kubernetes.client.exceptions import ApiException

from .allocate import NO_CLUSTER, allocate
from .from_api import Invalid, Release, pool_from_api, service_from_api
from .model import CONDITION, FINALIZER, POOL_INVALID, ClusterAddresses, Decision, LBService, Pool, PoolProblem

log = logging.getLogger(__name__)

COMPONENT = "podwire-loadbalancer"


@dataclass(frozen=True)
class Finalizers:
    namespace: str
    name: str
    version: str
    finalizers: tuple[str, ...]


@dataclass(frozen=True)
class Status:
    namespace: str
    name: str
    body: dict  # the whole object with the new status (PUT to the status subresource)


@dataclass(frozen=True)
class Event:
    namespace: str
    name: str
    uid: str
    type: str  # Normal | Warning
    reason: str
    message: str


def now_text() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _our_condition(obj: dict) -> dict | None:
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if isinstance(c, dict) and c.get("type") == CONDITION), None)


def _ingress(obj: dict) -> list:
    return ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []


def _other_conditions(status: dict) -> list:
    return [c for c in status.get("conditions") or [] if not (isinstance(c, dict) and c.get("type") == CONDITION)]


def service_writes(obj: dict, outcome: Decision | Release, now: str) -> list:
    """The writes that make Service `obj` show `outcome`; [] when it already does."""
    meta = obj["metadata"]
    ns, name, version = meta["namespace"], meta["name"], str(meta.get("resourceVersion") or "")
    finalizers = tuple(f for f in meta.get("finalizers") or [] if isinstance(f, str))
    out: list = []
    current = _our_condition(obj)
    if isinstance(outcome, Release):
        if _ingress(obj) or current is not None:
            body = copy.deepcopy(obj)
            status = body.setdefault("status", {})
            status["loadBalancer"] = {}
            status["conditions"] = _other_conditions(status)
            out.append(Status(ns, name, body))
        if FINALIZER in finalizers:
            out.append(Finalizers(ns, name, version, tuple(f for f in finalizers if f != FINALIZER)))
        return out
    d = outcome
    if FINALIZER not in finalizers:
        finalizers += (FINALIZER,)
        out.append(Finalizers(ns, name, version, finalizers))
    ingress = [{"ip": str(a), "ipMode": "VIP"} for a in d.addresses]
    state = "True" if d.ok else "False"
    same_state = current is not None and current.get("status") == state and current.get("reason") == d.reason
    cond = {"type": CONDITION, "status": state, "reason": d.reason, "message": d.message[:1000],
            "lastTransitionTime": current.get("lastTransitionTime") if same_state and current else now,
            "observedGeneration": meta.get("generation") or 0}
    have = [{"ip": i.get("ip"), "ipMode": i.get("ipMode", "VIP")} for i in _ingress(obj) if isinstance(i, dict)]
    # Services carry no metadata.generation: the 0 written is dropped by the API server, so an absent
    # observedGeneration reads as 0 (else every sync rewrote every Service's status)
    if have != ingress or current is None or any(current.get(k) != cond[k] for k in ("status", "reason", "message")) \
            or (current.get("observedGeneration") or 0) != cond["observedGeneration"]:
        body = copy.deepcopy(obj)
        # a PUT to a Service's status writes its metadata too: it must carry the finalizer just added
        body["metadata"]["finalizers"] = list(finalizers)
        status = body.setdefault("status", {})
        status["loadBalancer"] = {"ingress": ingress} if ingress else {}
        status["conditions"] = _other_conditions(status) + [cond]
        out.append(Status(ns, name, body))
    if not same_state:
        out.append(Event(ns, name, str(meta.get("uid") or ""), "Normal" if d.ok else "Warning", d.reason, d.message))
    return out


def pool_status(obj: dict, pool: Pool | None, problems: list[PoolProblem], assigned: int) -> dict:
    """A pool's status as it should read: Ready (or why not), Degraded when it serves but keeps
    some of its addresses back (node addresses), how many addresses are assigned."""
    fatal = next((p for p in problems if p.fatal), None)
    if fatal is not None:
        cond = {"type": "Ready", "status": "False", "reason": fatal.reason, "message": fatal.message[:1000]}
    else:
        cond = {"type": "Ready", "status": "True", "reason": "Serving", "message": ""}
    conditions = [cond]
    degraded = next((p for p in problems if not p.fatal), None)
    if degraded is not None and fatal is None:
        conditions.append({"type": "Degraded", "status": "True", "reason": degraded.reason,
                           "message": degraded.message[:1000]})
    status: dict = {"assigned": assigned, "conditions": conditions}
    if pool is not None:
        status["addresses"] = str(sum(r.size for r in pool.ranges))  # text: an IPv6 /64 overflows int64
    return status


def pool_event(have: dict, want: dict) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event to record when a pool's condition changed, else None:
    a pool that stops serving, serves again, or starts keeping addresses back says so once."""
    def conds(status) -> dict:
        found = status.get("conditions") if isinstance(status, dict) else None
        return {c.get("type"): c for c in found or [] if isinstance(c, dict)}

    old, new = conds(have), conds(want)
    for kind in ("Ready", "Degraded"):
        o, n = old.get(kind) or {}, new.get(kind)
        if n is None or (o.get("status"), o.get("reason"), o.get("message")) == (n["status"], n["reason"],
                                                                                n["message"]):
            continue
        if kind == "Ready" and n["status"] == "True":
            if o:  # it serves again after a problem (a new pool's first status is no news)
                return "Normal", n["reason"], "the pool serves again"
            continue
        return "Warning", n["reason"], n["message"]
    return None


class Allocator:
    """The controller's sync: read the caches, allocate, write the differences. Not thread safe:
    called from one SyncRunner."""

    def __init__(self, services, pools, writer: "Writer", cluster: Callable[[], ClusterAddresses] = lambda: NO_CLUSTER):
        self.services, self.pools, self.writer = services, pools, writer  # informers (.list())
        self.cluster = cluster  # what pools must not hand out (Nodes, ServiceCIDRs), read per sync
        self._refused: dict[str, str] = {}  # object key -> last reason logged (log once per change)
        # Service key -> the object as our last write left it: newer than the cache until the watch
        # delivers it, so a sync in between neither writes the same again nor decides on a stale copy
        self._written: dict[str, dict] = {}

    def _note(self, key: str, why: str) -> None:
        if self._refused.get(key) != why:
            self._refused[key] = why
            log.error("%s (its status is left as it is)", why)

    def _newest(self, obj: dict) -> dict:
        """The cached object, or what our last write made of it when the watch has not caught up
        (resourceVersions are etcd revisions: a larger one is newer)."""
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict):
            return obj
        mine = self._written.get(f"{meta.get('namespace')}/{meta.get('name')}")
        if mine is None:
            return obj
        try:
            if int(mine["metadata"]["resourceVersion"]) > int(meta.get("resourceVersion") or 0) \
                    and mine["metadata"].get("uid") == meta.get("uid"):
                return mine
        except (KeyError, TypeError, ValueError):
            pass
        return obj

    def sync(self) -> None:
        pools: list[Pool] = []
        pool_objs: dict[str, tuple[dict, Pool | None, list[PoolProblem]]] = {}
        for obj in self.pools.list():
            try:
                p = pool_from_api(obj)
                pools.append(p)
                pool_objs[p.name] = (obj, p, [])
            except Invalid as e:
                self._note(f"pool/{e.key}", str(e))
                if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
                    pool_objs[e.key] = (obj, None, [PoolProblem(e.key, POOL_INVALID, e.why)])
        objs: dict[str, dict] = {}
        ours: list[LBService] = []
        releases: dict[str, Release] = {}
        for obj in self.services.list():
            obj = self._newest(obj)
            try:
                s = service_from_api(obj)
            except Invalid as e:
                self._note(f"svc/{e.key}", str(e))
                continue
            if s is None:
                continue
            objs[s.key] = obj
            if isinstance(s, Release):
                releases[s.key] = s
            else:
                ours.append(s)
        decisions, problems = allocate(pools, ours, self.cluster())
        for problem in problems:
            pool_objs[problem.pool][2].append(problem)
        for name, (_, pool, found) in pool_objs.items():
            if pool is not None and not found:
                self._refused.pop(f"pool/{name}", None)
            elif pool is not None:
                self._note(f"pool/{name}", f"LoadBalancerPool {name}: {found[0].message}")
        now = now_text()
        outcomes: list[tuple[str, Decision | Release]] = [*decisions.items(), *releases.items()]
        for key, outcome in outcomes:
            writes = service_writes(objs[key], outcome, now)
            if writes:
                after = self.writer.apply(writes)
                if after is not None:
                    self._written[key] = after
                else:
                    self._written.pop(key, None)  # failed: trust the cache again
        for key in set(self._written) - set(objs):
            del self._written[key]
        used: dict[str, int] = {}
        for d in decisions.values():
            for a in d.addresses:
                owner = next((p.name for p in pools if a in p), None)
                if owner:
                    used[owner] = used.get(owner, 0) + 1
        for name, (obj, pool, reported) in pool_objs.items():
            want = pool_status(obj, pool, reported, used.get(name, 0))
            have = obj.get("status") or {}
            if {k: have.get(k) for k in want} != want and self.writer.pool_status(obj, want):
                event = pool_event(have, want)
                if event is not None:
                    self.writer.event(Event("", name, str(obj["metadata"].get("uid") or ""), *event),
                                      kind="LoadBalancerPool")


class Writer:
    """The edge: sends writes with the `kubernetes` client. apply() returns True when all took."""

    def __init__(self, api: Any, identity: str):
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.identity = identity

    def apply(self, writes: list) -> dict | None:
        """Send the writes in order; the object as the last one left it, or None when one failed
        (the rest are not sent: the next sync decides again)."""
        after: dict | None = None
        for w in writes:
            # each write bumps the object's resourceVersion: the next one must carry the new one
            version = str(after["metadata"]["resourceVersion"]) if after else ""
            try:
                if isinstance(w, Finalizers):
                    reply = self.core.patch_namespaced_service(
                        w.name, w.namespace,
                        {"metadata": {"finalizers": list(w.finalizers), "resourceVersion": version or w.version}},
                        _content_type="application/merge-patch+json", _preload_content=False)
                    after = json.loads(reply.data)
                elif isinstance(w, Status):
                    body = w.body
                    if version:
                        body = {**body, "metadata": {**body["metadata"], "resourceVersion": version}}
                    reply = self.core.replace_namespaced_service_status(w.name, w.namespace, body,
                                                                        _preload_content=False)
                    after = json.loads(reply.data)
                    ing = ", ".join(i["ip"] for i in w.body["status"].get("loadBalancer", {}).get("ingress", []))
                    log.info("Service %s/%s: load balancer address %s", w.namespace, w.name, ing or "none")
                elif isinstance(w, Event):
                    self.event(w)
            except ApiException as e:
                if e.status in (404, 409):  # changed or gone since the cache saw it: next sync
                    log.debug("Service %s/%s: %s, retried next sync", w.namespace, w.name, e.reason)
                else:
                    log.warning("Service %s/%s: write failed: %s %s", w.namespace, w.name, e.status, e.reason)
                return None
            except Exception as e:  # noqa: BLE001 - the API server is unreachable: next sync
                log.warning("Service %s/%s: write failed: %s: %s", w.namespace, w.name, type(e).__name__, e)
                return None
        return after

    def event(self, e: Event, kind: str = "Service") -> None:
        """An Event on a Service, or on a LoadBalancerPool (cluster-scoped: recorded in `default`,
        as kubectl describe looks for it)."""
        what = f"{e.namespace}/{e.name}" if e.namespace else e.name
        (log.info if e.type == "Normal" else log.warning)("%s %s: %s: %s", kind, what, e.reason, e.message)
        now = now_text()
        involved = ({"apiVersion": "v1", "kind": "Service", "namespace": e.namespace, "name": e.name, "uid": e.uid}
                    if kind == "Service" else
                    {"apiVersion": "podwire.io/v1alpha1", "kind": kind, "name": e.name, "uid": e.uid})
        body = {"metadata": {"generateName": f"{e.name}.", "namespace": e.namespace or "default"},
                "involvedObject": involved,
                "reason": e.reason, "message": e.message[:1000], "type": e.type, "count": 1,
                "firstTimestamp": now, "lastTimestamp": now,
                "source": {"component": COMPONENT, "host": self.identity},
                "reportingComponent": "podwire.io/loadbalancer", "reportingInstance": self.identity[:128]}
        try:  # best effort: the condition holds the same; a lost Event is not worth a rewrite
            self.core.create_namespaced_event(e.namespace or "default", body, _preload_content=False)
        except Exception as err:  # noqa: BLE001
            log.warning("%s %s: Event not recorded: %s: %s", kind, what, type(err).__name__, str(err)[:200])

    def pool_status(self, obj: dict, status: dict) -> bool:
        """Writes a pool's status; True when it took."""
        name = obj["metadata"]["name"]
        body = {**obj, "status": status}
        try:
            self.custom.replace_cluster_custom_object_status("podwire.io", "v1alpha1", "loadbalancerpools", name,
                                                             body, _preload_content=False)
            return True
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("LoadBalancerPool %s: status write failed: %s %s", name, e.status, e.reason)
        except Exception as e:  # noqa: BLE001
            log.warning("LoadBalancerPool %s: status write failed: %s: %s", name, type(e).__name__, e)
        return False
