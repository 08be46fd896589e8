"""NetworkPolicy as a daemon feature (node_daemon.features): watches, sync runner, CNI gate.

Informers for Pods (all namespaces: peers live anywhere; kept slim, policy.store.slim_pod),
Namespaces and NetworkPolicies feed the Store; a SyncRunner runs PolicyAgent.sync (compile this
node's ruleset, one nft transaction); the Gate answers the CNI plugin's "is my pod's policy in
force?"; the bridge's own netfilter switch makes same-node (bridged) traffic reach the table.
"""
from __future__ import annotations

import json
import logging

from node_daemon.cniconf import policy_namespaces_file
from node_daemon.runner import SyncRunner
from policy.agent import ConntrackWorker, PolicyAgent
from policy.conntrack import ConntrackCleaner
from policy.denylog import DenyReader, DenyReporter
from policy.gate import Gate
from policy.metrics import PolicyMetrics
from policy.ruleset import LogConfig
from policy.store import Store, pod_key_only, slim_pod

log = logging.getLogger("podwire.policy")

MIN_SYNC_INTERVAL = 0.02  # a diff sync costs milliseconds; the goal is enforcement within 100 ms
FULL_RESYNC_EVERY = 10  # resync intervals between whole-table rewrites (repairs hand edits)


class BridgeNetfilter:
    """Keeps podwire0's `nf_call_iptables`/`nf_call_ip6tables` on: without them bridged same-node
    pod traffic never reaches the inet hooks. A per-bridge switch: no host-global sysctl, other
    bridges keep their behaviour. The plugin sets it when it creates the bridge; this repairs."""

    RECHECK = 10.0  # seconds: once on, a check per sync (a netlink socket, ~5 ms) only delays rules

    def __init__(self, bridge: str, clock=None):
        import time

        self.bridge, self.ok = bridge, False
        self.clock = clock or time.monotonic
        self._checked = float("-inf")

    def __call__(self) -> None:
        now = self.clock()
        if self.ok and now - self._checked < self.RECHECK:
            return
        self._checked = now
        self.ok = self._check()

    def _check(self) -> bool:
        """True when the switch is on (found so, or switched on now)."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.bridge)
            if not found:
                return False  # no pod yet: the plugin creates the bridge with the switch on
            link = ipr.get_links(found[0])[0]
            info = link.get_attr("IFLA_LINKINFO")
            data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
            if info is None or info.get_attr("IFLA_INFO_KIND") != "bridge" or data is None:
                log.error("%s is not a bridge; same-node traffic is not policed", self.bridge)
                return False
            if data.get_attr("IFLA_BR_NF_CALL_IPTABLES") == 1 and data.get_attr("IFLA_BR_NF_CALL_IP6TABLES") == 1:
                return True
            ipr.link("set", index=found[0], kind="bridge", br_nf_call_iptables=1, br_nf_call_ip6tables=1)
            log.info("%s: netfilter calls for bridged traffic switched on", self.bridge)
            return True


class _Sync:
    """The runner's function: a diff sync, a whole-table rewrite every `full_every` seconds."""

    def __init__(self, agent: PolicyAgent, full_every: float, clock):
        self.agent, self.full_every, self.clock = agent, full_every, clock
        self.last_full = clock()

    def __call__(self) -> None:
        now = self.clock()
        if now - self.last_full >= self.full_every:
            self.agent.request_full_sync()
            self.last_full = now
        self.agent.sync()


def start(host) -> list:
    import time

    from kubernetes import client

    from proxy.sync import NftRunner

    cfg = host.cfg
    core, net = client.CoreV1Api(host.api), client.NetworkingV1Api(host.api)
    store, metrics = Store(), PolicyMetrics(host.registry)
    cleaner = ConntrackWorker(ConntrackCleaner(), metrics)  # off the sync path: the next change goes first
    agent = PolicyAgent(cfg.node_name, store, NftRunner(), log_config=LogConfig(group=cfg.policy_log_group),
                        bridge=BridgeNetfilter(cfg.cni.bridge), conntrack=cleaner,
                        namespaces_file=policy_namespaces_file(cfg.policy_socket), metrics=metrics)
    runner = SyncRunner(_Sync(agent, cfg.resync_interval * FULL_RESYNC_EVERY, time.monotonic), name="policy",
                        min_interval=MIN_SYNC_INTERVAL, resync_interval=cfg.resync_interval,
                        ready=lambda: all(i.synced.is_set() for i in informers))

    def forward(handler):
        def on_event(obj, deleted):
            if handler(obj, deleted):
                runner.trigger()
        return on_event

    def on_node(obj, deleted):
        if store.on_node(obj, deleted, cfg.node_name):
            runner.trigger()

    host.on_node(on_node)
    informers = [
        host.watch(core.list_pod_for_all_namespaces, "pods", forward(store.on_pod), transform=slim_pod,
                   cache=pod_key_only),
        host.watch(core.list_namespace, "namespaces", forward(store.on_namespace)),
        host.watch(net.list_network_policy_for_all_namespaces, "networkpolicies", forward(store.on_policy)),
    ]

    def fetch_pod(ns: str, name: str):
        # a LIST narrowed to one name, not a GET: RBAC grants list/watch on pods and nothing more
        try:
            resp = core.list_namespaced_pod(ns, field_selector=f"metadata.name={name}",
                                            _preload_content=False, _request_timeout=5)
            items = json.loads(resp.data).get("items") or []
            return slim_pod(items[0]) if items else None
        except Exception as e:  # noqa: BLE001 - API trouble: the gate decides what it means
            log.info("pod %s/%s not read from the API: %s", ns, name, getattr(e, "status", type(e).__name__))
            return None

    gate = Gate(cfg.policy_socket, cfg.node_name, store, agent, runner.trigger, fetch_pod, metrics=metrics,
                ready=lambda: all(i.synced.is_set() for i in informers) and agent.committed >= 0)
    parts: list = [cleaner]
    for part in (*informers, runner, gate):
        part.start()
        parts.append(part)
    # denied packets, decoded into log lines and podwire_policy_denied_total (rate-limited in the
    # kernel and again here); without it policy still works, so a failure to bind is only logged
    reporter = DenyReporter(host.registry, lambda: agent.cluster)
    reader = DenyReader(cfg.policy_log_group, reporter, on_skipped=reporter.skipped)
    try:
        reader.start()
        parts.append(reader)
    except OSError as e:
        log.error("denied packets will not be logged: %s", e)
    return parts


def cleanup(cfg=None, netns_path: str | None = None) -> None:
    """Policy switched off: delete its table if present (node_daemon.features calls this at start).
    Left behind, its `known` backstop would drop every new pod's forwarded traffic, and its
    isolation would outlive the feature. The bridge's netfilter switch stays (harmless without it)."""
    from netkit.nft import apply as nft_apply
    from policy.ruleset import TABLE

    nft_apply(f"add table inet {TABLE}\ndelete table inet {TABLE}\n", netns_path)
