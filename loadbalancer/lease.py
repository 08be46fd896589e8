"""Leases (coordination.k8s.io/v1) as locks: one allocator in the cluster, one node per address.

Every daemon watches the Leases of its namespace that carry LEASE_LABEL (one informer) and calls
`hold(name)` from its sync loop. Expiry is judged by the local clock from when a lease's record
last changed (as client-go does), never by comparing our clock with the holder's renewTime, so
clock skew between nodes cannot make two holders. Every write carries the resourceVersion it was
decided on: of two daemons that both see an expired lease, one write wins, the other gets 409.

The holder renews every `renew_every` seconds; if it cannot renew for `duration` seconds it stops
claiming the lease (another node may have taken it over), even though it could not say so in the
API. `release()` on shutdown empties the holder, so a clean stop hands over at once instead of
after `duration`.
"""
from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

LEASE_LABEL = "podwire.io/lease"  # value: what the lease is for ("allocator", "address")


@dataclass
class _Seen:
    holder: str
    version: str  # resourceVersion
    duration: float
    transitions: int
    since: float  # local clock when this record (holder, version) was first seen
    labels: dict


def _micro_time(now: datetime.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leases:
    """The lease side of one daemon: what it observed, what it holds, and the writes to take,
    keep and give back leases. Thread safe (informer thread feeds, sync threads hold)."""

    def __init__(self, api: Any, namespace: str, identity: str, *, duration: float = 6.0,
                 renew_every: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc)):
        self.api, self.namespace, self.identity = api, namespace, identity  # CoordinationV1Api
        self.duration, self.renew_every = duration, renew_every
        self.clock, self.wall = clock, wall
        self._seen: dict[str, _Seen] = {}
        self._renewed: dict[str, float] = {}  # leases we hold -> local time of the last good write
        self._lock = threading.Lock()
        # after a write that could not reach the API server, no write is tried before this time:
        # with many leases, a dead link must not make one sync last (leases x timeout)
        self._quiet_until = -float("inf")
        # one try per write, and short: a holder that cannot renew must notice within `duration`
        self.timeout = (min(1.0, renew_every / 2), max(1.0, renew_every))

    # --- observation (informer callback and our own writes' replies)

    def observe(self, obj: dict, deleted: bool = False) -> None:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            return
        name = meta["name"]
        with self._lock:
            if deleted:
                self._seen.pop(name, None)
                return
            spec = obj.get("spec")
            spec = spec if isinstance(spec, dict) else {}
            labels = meta.get("labels")
            holder, dur = spec.get("holderIdentity"), spec.get("leaseDurationSeconds")
            trans = spec.get("leaseTransitions")
            version = str(meta.get("resourceVersion") or "")
            old = self._seen.get(name)
            if old is not None and old.version == version:
                return
            self._seen[name] = _Seen(
                holder=holder if isinstance(holder, str) else "", version=version,
                duration=float(dur) if isinstance(dur, int) and 0 < dur <= 3600 else self.duration,
                transitions=trans if isinstance(trans, int) else 0,
                since=self.clock(), labels=labels if isinstance(labels, dict) else {})

    def holder(self, name: str) -> str:
        with self._lock:
            seen = self._seen.get(name)
            return seen.holder if seen else ""

    def names(self, purpose: str) -> list[str]:
        with self._lock:
            return [n for n, s in self._seen.items() if s.labels.get(LEASE_LABEL) == purpose]

    def held(self, name: str) -> bool:
        """True while our last successful write is younger than the lease's duration."""
        with self._lock:
            t = self._renewed.get(name)
            return t is not None and self.clock() - t < self.duration

    # --- writes

    def _body(self, name: str, purpose: str, holder: str, transitions: int, acquired: bool,
              version: str = "") -> dict:
        now = _micro_time(self.wall())
        spec: dict = {"holderIdentity": holder or None, "leaseDurationSeconds": int(self.duration),
                      "renewTime": now if holder else None, "leaseTransitions": transitions}
        if acquired:
            spec["acquireTime"] = now
        meta: dict = {"name": name, "namespace": self.namespace, "labels": {LEASE_LABEL: purpose}}
        if version:
            meta["resourceVersion"] = version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def _write(self, name: str, body: dict, create: bool) -> bool:
        """One create or replace; True when it took. A conflict re-reads the lease."""
        try:
            if create:
                reply = self.api.create_namespaced_lease(self.namespace, body, _preload_content=False,
                                                         _request_timeout=self.timeout)
            else:
                reply = self.api.replace_namespaced_lease(name, self.namespace, body, _preload_content=False,
                                                          _request_timeout=self.timeout)
            self.observe(json.loads(reply.data))
            return True
        except ApiException as e:
            if e.status in (409, 404):  # someone else wrote first (or it is gone): look again
                self.refresh(name)
            else:
                log.warning("lease %s/%s: %s %s", self.namespace, name, e.status, e.reason)
            return False
        except Exception as e:  # noqa: BLE001 - an unreachable API server is retried next sync
            log.warning("lease %s/%s: %s: %s", self.namespace, name, type(e).__name__, str(e)[:200])
            self._quiet_until = self.clock() + self.renew_every / 2
            return False

    def refresh(self, name: str) -> None:
        try:
            reply = self.api.read_namespaced_lease(name, self.namespace, _preload_content=False,
                                                   _request_timeout=self.timeout)
            self.observe(json.loads(reply.data))
        except ApiException as e:
            if e.status == 404:
                self.observe({"metadata": {"name": name}}, deleted=True)
        except Exception:  # noqa: BLE001 - next sync again
            pass

    def hold(self, name: str, purpose: str) -> bool:
        """Take, keep or wait for the lease `name`; True while we hold it. Cheap when there is
        nothing to write (the common case for a candidate that is not the holder)."""
        now = self.clock()
        if now < self._quiet_until:
            return self.held(name)
        with self._lock:
            seen = self._seen.get(name)
            renewed = self._renewed.get(name)
        if seen is None:
            ok = self._write(name, self._body(name, purpose, self.identity, 0, True), create=True)
        elif seen.holder == self.identity:
            if renewed is not None and now - renewed < self.renew_every:
                return self.held(name)
            ok = self._write(name, self._body(name, purpose, self.identity, seen.transitions,
                                              renewed is None, seen.version), create=False)
        elif seen.holder and now - seen.since < seen.duration:
            return False  # held by a live node
        else:  # free, or its holder stopped renewing: take it over
            ok = self._write(name, self._body(name, purpose, self.identity, seen.transitions + 1, True,
                                              seen.version), create=False)
        log.debug("lease %s: %s (seen holder %r)", name, "written" if ok else "not written",
                  seen.holder if seen else None)
        with self._lock:
            if ok:
                self._renewed[name] = now
            elif self._seen.get(name) is not None and self._seen[name].holder != self.identity:
                self._renewed.pop(name, None)  # someone else has it now
        return self.held(name)

    def release(self, name: str, purpose: str) -> None:
        """Give the lease up now (empty holder), if we hold it."""
        with self._lock:
            seen = self._seen.get(name)
            self._renewed.pop(name, None)
        if seen is not None and seen.holder == self.identity:
            self._write(name, self._body(name, purpose, "", seen.transitions, False, seen.version), create=False)
