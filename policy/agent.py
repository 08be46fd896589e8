"""One policy sync: store snapshot -> this node's Ruleset (pure) -> one nft transaction -> cleanup.

The first sync (and the first after a failure or a periodic full resync) writes the whole table;
later ones send only the element diff, made per changed pod (policy.ruleset.render_changes).
After the kernel accepted it:
conntrack entries of flows the change denies are deleted (policy/conntrack.py), the namespaces
holding policies are published for the CNI plugin's fallback (policy/gate.py), and anyone waiting
for a store version (a CNI ADD) is released. Collaborators come in through the constructor.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable, Protocol

from node_daemon.cniconf import write_if_changed
from policy.compile import MAX_ALLOWS_PER_POD, NodeCompiler
from policy.model import Cluster
from policy.ruleset import DIRECTIONS, ElementCache, LogConfig, Ruleset, elements, render_changes, render_full
from policy.store import Store

log = logging.getLogger("podwire.policy")


class Runner(Protocol):
    def apply(self, text: str) -> None: ...


class ConntrackWorker:
    """Runs the conntrack cleanup off the sync path (it lists and judges existing flows, tens of ms,
    and would delay the next sync, i.e. the next change's enforcement). Cleanups requested while one
    runs coalesce into one from the oldest `old` to the newest `new`: a flow is cut if the newest
    ruleset denies it and the pod it involves lost an allow since the last cleanup."""

    def __init__(self, cleaner: Callable[[Ruleset | None, Ruleset], int], metrics=None):
        self.cleaner, self.metrics = cleaner, metrics
        self._cond = threading.Condition()
        self._pending: tuple[Ruleset | None, Ruleset] | None = None
        self._busy = self._closed = False
        self.deleted = 0
        threading.Thread(target=self._run, name="policy-conntrack", daemon=True).start()

    def __call__(self, old: Ruleset | None, new: Ruleset) -> int:
        with self._cond:
            self._pending = (old if self._pending is None else self._pending[0], new)
            self._cond.notify_all()
        return 0  # counted when done (podwire_policy_conntrack_deleted_total)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                (old, new), self._pending = self._pending, None  # type: ignore[misc]
                self._busy = True
            try:
                n = self.cleaner(old, new)
            except Exception as e:  # noqa: BLE001 - never kill the worker; the rules are in
                log.warning("conntrack cleanup failed: %s", e)
                n = 0
            with self._cond:
                self._busy = False
                self.deleted += n
                self._cond.notify_all()
            if n:
                log.info("policy conntrack cleanup: %d entries of flows the change denies deleted", n)
                if self.metrics is not None:
                    self.metrics.conntrack_deleted.inc(n)

    def idle(self, timeout: float) -> bool:
        """Wait until nothing is pending or running (tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class PolicyAgent:
    def __init__(self, node_name: str, store: Store, runner: Runner, *, log_config: LogConfig = LogConfig(),  # noqa: B008
                 bridge: Callable[[], None] | None = None,
                 conntrack: Callable[[Ruleset | None, Ruleset], int] | None = None,
                 namespaces_file: str | None = None, metrics=None, clock=time.monotonic):
        self.node_name, self.store, self.runner = node_name, store, runner
        self.log_config, self.bridge, self.conntrack = log_config, bridge, conntrack
        self.namespaces_file, self.metrics, self.clock = namespaces_file, metrics, clock
        self.applied: Ruleset | None = None  # what the kernel holds; None = unknown, write it whole
        self.cluster: Cluster | None = None  # the snapshot the kernel's rules came from
        self.committed = -1  # the store version in force
        self._published: str | None = None
        self._overflows: frozenset = frozenset()
        self._cond = threading.Condition()
        self._sync_lock = threading.Lock()
        # incremental: a sync recompiles and re-renders only the local pods an event touched
        self._compiler = NodeCompiler(node_name)
        self.last_phases: dict[str, float] = {}  # seconds per phase of the last sync (metrics, logs)
        self._element_cache = ElementCache()

    def request_full_sync(self) -> None:
        with self._sync_lock:
            self.applied = None

    def sync(self) -> None:
        """Raises when the kernel refused the ruleset (the runner retries with backoff)."""
        with self._sync_lock:
            clock = self.clock
            t0 = clock()
            version, cluster, local = self.store.snapshot_all()
            t1 = clock()
            overflows: list = []
            rs = self._compiler.compile(cluster, self.log_config, local, overflows)
            self._report_overflows(overflows)
            t2 = clock()
            if self.bridge is not None:
                self.bridge()  # before the first pod's rules count on it (same-node traffic)
            old = self.applied
            text = render_changes(old, rs, self._element_cache) if old is not None else None
            t3 = clock()
            full = self._apply(rs, text)
            self.applied = rs
            t4 = clock()
            # in force: release the waiters (a CNI ADD) before the conntrack cleanup, which concerns
            # flows that exist already, never a new pod's
            with self._cond:
                self.committed, self.cluster = version, cluster
                self._cond.notify_all()
            deleted = 0
            if self.conntrack is not None:
                try:
                    deleted = self.conntrack(old, rs)
                except Exception as e:  # noqa: BLE001 - the rules are in; stale flows are logged
                    log.warning("conntrack cleanup failed: %s", e)
            t5 = clock()
            self._publish()
            done = clock()
            self.last_phases = {"snapshot": t1 - t0, "compile": t2 - t1, "render": t3 - t2, "nft": t4 - t3,
                                "conntrack": t5 - t4, "publish": done - t5}
            if self.metrics is not None:
                self.metrics.observe_sync(rs, full, t2 - t0, done - t0, deleted, self.last_phases)
            if not (full or deleted):
                log.debug("policy diff sync (store version %d): %d pods recompiled, %.0f ms (%s)", version,
                          self._compiler.recompiled, (done - t0) * 1000,
                          ", ".join(f"{k} {v * 1000:.0f}" for k, v in self.last_phases.items()))
            else:
                log.info("policy %s sync: %d/%d pods isolated for ingress/egress, %d/%d allows, "
                         "%d conntrack entries deleted, %.0f ms (%s)", "full" if full else "diff",
                         len(rs.isolated_ingress), len(rs.isolated_egress), rs.allow_count("ingress"),
                         rs.allow_count("egress"),
                         deleted, (done - t0) * 1000,
                         ", ".join(f"{k} {v * 1000:.0f}" for k, v in self.last_phases.items()))

    def _report_overflows(self, overflows: list) -> None:
        """Log pods over the allow budget when that set changes (not every sync)."""
        now = frozenset(overflows)
        for o in sorted(now - self._overflows):
            log.error("pod %s: its %s policies %s need more than %d allow entries on this node; it stays "
                      "isolated for %s with no allow until they are made smaller", o.pod, o.direction,
                      list(o.policies), MAX_ALLOWS_PER_POD, o.direction)
        for o in sorted(self._overflows - now):
            log.info("pod %s: %s allows fit the budget again", o.pod, o.direction)
        self._overflows = now

    def _apply(self, rs: Ruleset, text: str | None) -> bool:
        """Send `text` (the change to rs; None: none could be made); True when it was a full rewrite."""
        if text == "":
            return False
        if text is not None:
            try:
                self.runner.apply(text)
                return False
            except Exception as e:  # noqa: BLE001 - e.g. the table was changed behind our back
                log.warning("policy diff refused (%s); rewriting the table", str(e).splitlines()[0] if str(e) else e)
        elements(rs, self._element_cache)  # memoised on rs for render_full, through the cache
        try:
            self.runner.apply(render_full(rs))
        except Exception:
            self.applied = None
            raise
        return True

    def _publish(self) -> None:
        """The namespaces holding policies, for the CNI plugin when the daemon does not answer."""
        if not self.namespaces_file:
            return
        text = json.dumps(self.store.policy_namespaces()) + "\n"
        if text != self._published:
            try:
                write_if_changed(self.namespaces_file, text)
                self._published = text
            except OSError as e:
                log.warning("cannot write %s: %s", self.namespaces_file, e)

    def wait_committed(self, version: int, timeout: float) -> bool:
        """Block until a sync put store version `version` (or later) into the kernel."""
        deadline = self.clock() + timeout
        with self._cond:
            while self.committed < version:
                left = deadline - self.clock()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def isolated_count(self) -> dict[str, int]:
        rs = self.applied
        return {d: len(rs.isolated(d)) if rs else 0 for d in DIRECTIONS}
