"""The proxy's state holder, driven by the node daemon's watch loop.

The daemon calls on_service / on_slice / on_node with API dicts as they arrive, then
sync() when its rate limiter says so. Events only mark Services dirty; sync() plans
the dirty ones (Planner reuses everything else), applies one transaction per family,
cleans stale UDP conntrack entries, and records metrics and health. A failed sync
leaves everything dirty for the next one, which is then a full sync.
Thread-safe: event handlers may run on informer threads while sync() runs on another;
sync() plans from a snapshot taken under the lock, so events that arrive meanwhile stay
dirty for the next sync instead of being lost.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from proxy import conntrack
from proxy.from_api import Invalid, Skip, is_name, node_from_api, service_from_api, slice_from_api
from proxy.healthz import ProxyHealth, ServiceHealthServers
from proxy.metrics import FAMILY_LABEL, Metrics
from proxy.model import EndpointSlice, NodeInfo, ProxyConfig, Service
from proxy.nft import render_delete
from proxy.plan import FAMILIES, NFT_FAMILY, DesiredState, Planner, health_checks
from proxy.sync import Runner, TableSyncer

log = logging.getLogger("podwire.proxy")


def _key(obj: Any) -> tuple[str, str] | None:
    """(namespace, name), or None when they are not names the API server could have served."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return None
    ns, name = meta.get("namespace") or "", meta.get("name")
    if not (isinstance(name, str) and is_name(name) and (ns == "" or is_name(ns))):
        return None
    return (ns, name)


class Proxier:
    def __init__(self, node_name: str, config: ProxyConfig, runners: dict[int, Runner],
                 conntrack_runner: conntrack.ConntrackRunner | None = None,
                 metrics: Metrics | None = None, health: ProxyHealth | None = None,
                 service_health: ServiceHealthServers | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.node = NodeInfo(node_name)
        self.families = tuple(f for f in FAMILIES if f in runners)
        self.syncers = {f: TableSyncer(runners[f]) for f in self.families}
        self.planners = {f: Planner(f) for f in self.families}
        self.conntrack = conntrack_runner
        self.metrics = metrics or Metrics()
        self.health = health or ProxyHealth()
        self.service_health = service_health
        self.clock = clock
        self.services: dict[tuple[str, str], Service] = {}
        self.slices: dict[tuple[str, str], EndpointSlice] = {}
        self.slices_by_svc: dict[tuple[str, str], dict[tuple[str, str], EndpointSlice]] = {}
        self.dirty: set[tuple[str, str]] = set()
        self.all_dirty = True  # until the first successful sync
        self.skipped: dict[tuple[str, str, str], str] = {}  # (kind, ns, name) -> reason
        self.pending_triggers: list[tuple[float, int]] = []  # (slice trigger time, family)
        self.last_states: dict[int, DesiredState] = {}
        self._lock = threading.RLock()  # the object store and dirty marks
        self._sync_lock = threading.Lock()  # one sync at a time

    # ---- events --------------------------------------------------------------------------
    def _queued(self) -> None:
        self.health.queued_update()
        self.metrics.last_queued.set(self.clock())

    def on_service(self, obj: dict, deleted: bool = False) -> None:
        with self._lock:
            self._on_service(obj, deleted)

    def on_slice(self, obj: dict, deleted: bool = False) -> None:
        with self._lock:
            self._on_slice(obj, deleted)

    def on_node(self, obj: dict, deleted: bool = False) -> None:
        with self._lock:
            self._on_node(obj, deleted)

    def _on_service(self, obj: dict, deleted: bool) -> None:
        key = _key(obj)
        if key is None:
            log.warning("Service without a valid metadata.name/namespace ignored")
            return
        svc, said = None, None
        if not deleted:
            try:
                svc = service_from_api(obj)
                said = self.skipped.pop(("Service", *key), None)
            except Skip as e:
                self.skipped[("Service", *key)] = e.reason
                log.log(logging.WARNING if isinstance(e, Invalid) else logging.INFO, "no rules for %s", e)
        if svc is not None and svc.cluster_ips and not {ip.version for ip in svc.cluster_ips} & set(self.families):
            # e.g. an IPv6-only Service on a node whose proxy serves IPv4 (cluster_cidrs): say so, once
            reason = (f"ClusterIPs of IPv{'/IPv'.join(sorted({str(ip.version) for ip in svc.cluster_ips}))} only, "
                      f"and this node's proxy serves {', '.join(FAMILY_LABEL[f] for f in self.families)}")
            if said != reason:
                log.warning("no rules for Service %s/%s: %s", *key, reason)
            self.skipped[("Service", *key)] = reason
        if svc is None:
            if self.services.pop(key, None) is None and key not in self.dirty:
                return
        elif self.services.get(key) == svc:
            return  # a status or annotation change the dataplane does not see
        else:
            self.services[key] = svc
        self.dirty.add(key)
        self._queued()

    def _on_slice(self, obj: dict, deleted: bool) -> None:
        key = _key(obj)
        if key is None:
            log.warning("EndpointSlice without a valid metadata.name/namespace ignored")
            return
        old = self.slices.pop(key, None)
        if old is not None:
            self.slices_by_svc.get(old.service_key, {}).pop(key, None)
            self.dirty.add(old.service_key)
        if not deleted:
            try:
                sl = slice_from_api(obj)
                self.skipped.pop(("EndpointSlice", *key), None)
            except Skip as e:
                self.skipped[("EndpointSlice", *key)] = e.reason
                log.log(logging.WARNING if isinstance(e, Invalid) else logging.INFO, "no rules for %s", e)
                sl = None
            if sl is not None:
                self.slices[key] = sl
                self.slices_by_svc.setdefault(sl.service_key, {})[key] = sl
                self.dirty.add(sl.service_key)
                if sl.trigger_time is not None:
                    self.pending_triggers.append((sl.trigger_time, sl.address_family))
        self._queued()

    def _on_node(self, obj: dict, deleted: bool) -> None:
        try:
            node = node_from_api(obj)
        except Skip as e:
            log.warning("node ignored: %s", e)
            return
        if node.name != self.node.name:
            return
        if deleted:
            self.health.node_eligible = False
            return
        if node != self.node:
            self.node = node  # zone labels change topology for every Service: plan all
            self.all_dirty = True
            self._queued()

    # ---- sync ----------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Delete our tables (proxy disabled or uninstalled); they are all we own."""
        with self._sync_lock, self._lock:
            for fam, syncer in self.syncers.items():
                syncer.runner.apply(render_delete(NFT_FAMILY[fam], self.config.table_name))
                syncer.forget()
            self.all_dirty = True

    def request_full_sync(self) -> None:
        """Make the next sync rewrite whole tables (the daemon's periodic resync: repairs
        anything changed behind our back without ever listing the kernel's tables)."""
        with self._sync_lock, self._lock:
            for syncer in self.syncers.values():
                syncer.applied = None
            self.all_dirty = True
            self._queued()

    def _snapshot(self):
        """Under the lock: what to plan, and the dirty marks taken over by this sync."""
        dirty = None if self.all_dirty else set(self.dirty)
        keys = self.slices_by_svc.keys() if dirty is None else dirty
        slices = {k: [self.slices_by_svc[k][n] for n in sorted(self.slices_by_svc[k])]
                  for k in keys if self.slices_by_svc.get(k)}
        with_hc = [s for s in self.services.values() if s.health_check_node_port and s.external_local]
        hc_slices = [sl for s in with_hc for sl in self.slices_by_svc.get(s.key, {}).values()]
        triggers, self.pending_triggers = self.pending_triggers, []
        self.dirty, self.all_dirty = set(), False
        return dirty, dict(self.services), slices, self.node, triggers, (with_hc, hc_slices)

    def sync(self) -> bool:
        """Program the dataplane; True on success. Never raises for a failed apply."""
        with self._sync_lock:
            with self._lock:
                dirty, services, slices, node, triggers, hc = self._snapshot()
            ok, flushes = True, []
            for fam in self.families:
                start = time.monotonic()
                state = self.planners[fam].plan(services, slices, node, self.config, dirty=dirty)
                # Stale UDP flows are judged against the last state that reached the kernel, not
                # the syncer's (None before a full rewrite): a change that lands in a periodic
                # or recovery full sync still gets its conntrack cleanup.
                old = self.last_states.get(fam)
                try:
                    res = self.syncers[fam].sync(state)
                except Exception as e:  # the next sync will be a full one (TableSyncer forgot)
                    log.error("sync of %s failed: %s", FAMILY_LABEL[fam], e)
                    self.metrics.sync_failures.inc()
                    self.planners[fam] = Planner(fam)  # its incremental history no longer matches
                    ok = False
                    continue
                self.last_states[fam] = state
                flushes += conntrack.stale_flows(old, state)
                if res.changed:
                    self.metrics.observe_sync(fam, time.monotonic() - start, res.full)
            if self.conntrack and flushes:  # after the rules changed, or new flows re-create entries
                for err in self.conntrack.delete(flushes):
                    log.warning("conntrack cleanup: %s", err)
                    self.metrics.conntrack_failures.inc()
            if not ok:
                with self._lock:
                    self.all_dirty = True
                    self.pending_triggers = triggers + self.pending_triggers
                return False
            now = self.clock()
            for t, fam in triggers:
                if fam in self.families:
                    self.metrics.programming.labels(FAMILY_LABEL[fam]).observe(max(0.0, now - t))
            self.metrics.last_sync.set(now)
            self.health.updated()
            with self._lock:
                if self.all_dirty or self.dirty:  # events arrived during this sync
                    self.health.queued_update()
            if self.service_health is not None:
                self.service_health.update(health_checks(hc[0], hc[1], node))
            return True
