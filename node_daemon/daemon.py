"""One node sync: Nodes from the informer cache -> plan -> kernel, CNI config, egress, Node status.

Every sync recomputes everything from the cache and reads the kernel back, so a missed event, a
restart or a hand-deleted route all end the same way: desired = actual. Collaborators (node cache,
netlink, nft runner, API writer) come in through the constructor; nothing here opens sockets.
"""

from __future__ import annotations

import logging
import time

from netkit.netns import write_sysctl

from . import cniconf, egress
from .config import Config
from .dataplane import Dataplane, count_drift
from .metrics import DaemonMetrics
from .model import BadNode, NodeInfo, node_from_api, vtep_mac_for
from .netlink import DataplaneError
from .nodeapi import annotation_patch, condition_patch
from .plan import plan

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, cfg: Config, *, nodes, dataplane, metrics: DaemonMetrics,
                 nft: egress.NftRunner | None = None, writer=None, forwarding=None):
        self.cfg, self.nodes, self.dataplane = cfg, nodes, dataplane
        self.metrics, self.nft, self.writer, self.forwarding = metrics, nft, writer, forwarding
        self.vtep_mac = vtep_mac_for(cfg.node_name)
        self.programmed = False  # the last sync programmed the dataplane completely
        self.state = "starting"  # one line for /healthz
        self._last_desired: Dataplane | None = None
        self._egress_text: str | None = None
        self._egress_at = float("-inf")
        self._reported: dict[str, object] = {}  # what was last logged, to log changes only

    # ---- the sync --------------------------------------------------------------------
    def sync(self) -> None:
        started = time.monotonic()
        try:
            self._sync()
        except Exception:
            self.metrics.sync_errors.inc()
            raise
        finally:
            self.metrics.sync_duration.observe(time.monotonic() - started)
        self.metrics.last_sync.set_to_current_time()

    def _sync(self) -> None:
        cfg = self.cfg
        infos = self._parse_nodes()
        me = infos.get(cfg.node_name)
        own = self.nodes.get(cfg.node_name)
        if me is None or own is None:
            self._waiting(f"waiting for a usable Node {cfg.node_name}")
            return
        # API writes never hold the dataplane back: a failure is raised after the kernel work
        failures = [self._write_api(annotation_patch(own, self.vtep_mac), status=False)]
        if not me.pod_cidrs:
            self._waiting(f"Node {cfg.node_name} has no podCIDR yet; no CNI config written")
            return self._raise_first(failures)
        self._report("self", f"Node {cfg.node_name}: podCIDRs {[str(c) for c in me.pod_cidrs]}")
        if self.forwarding:
            self.forwarding({c.version for c in me.pod_cidrs})

        underlay = self.dataplane.read_underlay(cfg.underlay_interface, me.internal_ips)
        peers = [n for name, n in infos.items() if name != cfg.node_name]
        p = plan(me, peers, underlay, cfg.mode, cfg.vxlan, self.vtep_mac, cfg.cluster_cidrs)
        self._report("skipped", sorted(f"{s.node}: {s.reason}" for s in p.skipped), logging.WARNING)
        self._report("transports", [f"peer {peer} IPv{v}: {t}" for peer, v, t in sorted(p.transports)])

        try:
            changes = self.dataplane.apply(p.dataplane, cfg.vxlan.device)
        except DataplaneError as e:
            failures.append(e)
        else:
            drift = count_drift(changes, self._last_desired, p.dataplane)
            self._last_desired = p.dataplane
            self.metrics.dataplane_changes.inc(changes.count())
            self.metrics.drift_repairs.inc(drift)
            if not changes.empty:
                log.info("dataplane: %d changes (%d drift repairs)", changes.count(), drift)

        text = cniconf.render(me.pod_cidrs, p.pod_mtu, cfg.cni, cfg.policy_socket if cfg.policy_enabled else None)
        if text is not None and cniconf.write_if_changed(cfg.cni.path, text):
            log.info("wrote %s (pod MTU %d)", cfg.cni.path, p.pod_mtu)
        self._sync_egress(infos)
        self._update_gauges(p)
        self.programmed = not any(isinstance(f, DataplaneError) for f in failures)
        if self.programmed:
            self.state = f"programmed: {len(p.transports)} peer podCIDRs, {len(p.skipped)} skipped"
            failures.append(self._write_api(condition_patch(own), status=True))
        self._raise_first(failures)

    def _waiting(self, why: str) -> None:
        self.state = why
        self._report("self", why, logging.WARNING)

    @staticmethod
    def _raise_first(failures) -> None:
        for f in failures:
            if f is not None:
                raise f

    def _parse_nodes(self) -> dict[str, NodeInfo]:
        infos, bad = {}, []
        for obj in self.nodes.list():
            try:
                n = node_from_api(obj)
            except BadNode as e:
                bad.append(str(e))
                continue
            infos[n.name] = n
        self.metrics.nodes_invalid.set(len(bad))
        self._report("invalid", sorted(bad), logging.WARNING)
        return infos

    def _sync_egress(self, infos: dict[str, NodeInfo]) -> None:
        if not (self.cfg.egress and self.cfg.cluster_cidrs and self.nft):
            return
        text = egress.render(list(self.cfg.cluster_cidrs),
                             [ip for n in infos.values() for ip in n.internal_ips])
        now = time.monotonic()
        if text != self._egress_text or now - self._egress_at >= self.cfg.resync_interval:
            self.nft.apply(text)
            if text != self._egress_text:
                log.info("egress masquerade ruleset applied")
            self._egress_text, self._egress_at = text, now

    def _update_gauges(self, p) -> None:
        by: dict[str, set[str]] = {"direct": set(), "vxlan": set()}
        for peer, _, transport in p.transports:
            by[transport].add(peer)
        for transport, names in by.items():
            self.metrics.peers.labels(transport).set(len(names))
        self.metrics.peers_skipped.set(len(p.skipped))
        self.metrics.routes.set(len(p.dataplane.routes))
        self.metrics.pod_mtu.set(p.pod_mtu)

    def _write_api(self, body: dict | None, status: bool) -> Exception | None:
        """Patch our Node; returns the error instead of raising it."""
        if body is None or self.writer is None:
            return None
        try:
            (self.writer.patch_status if status else self.writer.patch)(self.cfg.node_name, body)
        except Exception as e:  # noqa: BLE001 - any API/transport error
            self.metrics.api_errors.labels("nodes-write").inc()
            return e
        return None

    def _report(self, topic: str, value, level=logging.INFO) -> None:
        """Log a fact when it changes, not on every sync (no log floods from a resync loop)."""
        if self._reported.get(topic) == value:
            return
        self._reported[topic] = value
        if isinstance(value, list):
            for line in value:
                log.log(level, "%s: %s", topic, line)
        else:
            log.log(level, "%s", value)

    # ---- health ----------------------------------------------------------------------
    def health(self, last_success: float | None) -> tuple[bool, str]:
        """Healthy while the sync loop keeps completing (waiting for a podCIDR included: a
        liveness probe must not restart a daemon that is only waiting); the text says what it does."""
        if last_success is None:
            return False, f"no successful sync yet ({self.state})"
        age = time.monotonic() - last_success
        if age > 3 * self.cfg.resync_interval:
            return False, f"last successful sync {age:.0f}s ago ({self.state})"
        return True, self.state


def ensure_forwarding(versions: set[int]) -> None:
    """Enable IP forwarding in the daemon's own network namespace (/proc/sys/net is per netns)."""
    for v in versions:
        write_sysctl("net/ipv4/ip_forward" if v == 4 else "net/ipv6/conf/all/forwarding", "1")
