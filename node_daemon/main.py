"""`podwire-daemon` / `python3 -m node_daemon`: build the daemon's parts and run until SIGTERM.

Run one per node, inside the node's network namespace (the harness uses
`nsenter --net=/run/netns/NODE podwire-daemon ...`); the daemon never switches namespaces.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import threading

from netkit import heap

from . import gcfreeze
from .config import Config, parse_args
from .daemon import Daemon, ensure_forwarding
from .egress import NftRunner
from .features import Host, start_features
from .informer import Informer
from .metrics import DaemonMetrics, serve
from .model import routing_view
from .netlink import NetlinkDataplane
from .nodeapi import NodeWriter
from .runner import SyncRunner

log = logging.getLogger("node_daemon")


# A watch on a dead connection (API server host gone, silent partition) would otherwise block
# until the read timeout (minutes): probe idle connections after 30 s and give up on unanswered
# probes or unacknowledged data after about a minute, so the informer resumes elsewhere.
KEEPALIVE = [
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),  # urllib3's own default, which a list replaces
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 60_000),
]


def api_client(kubeconfig: str | None):
    from kubernetes import client, config

    conf = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=conf)
    else:
        config.load_incluster_config(client_configuration=conf)
    conf.socket_options = KEEPALIVE
    return client.ApiClient(conf)


def run(cfg: Config, stop: threading.Event) -> None:
    from kubernetes import client
    from pyroute2 import IPRoute

    heap.limit_arenas()  # before the informer and sync threads start

    api = api_client(cfg.kubeconfig)
    core = client.CoreV1Api(api)
    metrics = DaemonMetrics()

    def api_error(resource, _exc):
        metrics.api_errors.labels(resource).inc()

    node_listeners: list = []  # the hosted features' consumers of Node events

    def node_event(obj, deleted=False, old=None):
        if old is None or routing_view(old) != routing_view(obj):
            runner.trigger()
        for listener in node_listeners:
            listener(obj, deleted)

    nodes = Informer(core.list_node, name="nodes", on_error=api_error,
                     on_add=node_event, on_update=lambda old, new: node_event(new, old=old),
                     on_delete=lambda o: node_event(o, True))
    with IPRoute() as ipr:
        daemon = Daemon(cfg, nodes=nodes, dataplane=NetlinkDataplane(ipr, cfg.route_protocol),
                        metrics=metrics, nft=NftRunner(), writer=NodeWriter(core),
                        forwarding=ensure_forwarding if cfg.ensure_forwarding else None)
        runner = SyncRunner(daemon.sync, name="node", min_interval=cfg.min_sync_interval,
                            resync_interval=cfg.resync_interval, ready=nodes.synced.is_set)
        server = serve(cfg.metrics_address, metrics.registry, lambda: daemon.health(runner.last_success))
        if not cfg.cluster_cidrs:
            log.warning("no cluster CIDRs configured: egress masquerade is off")
        try:
            parts = start_features(Host(cfg, api, metrics.registry, nodes, api_error, node_listeners))
        except Exception:
            server.shutdown()
            raise
        nodes.start()
        runner.start()
        runners = [runner, *(p for p in parts if isinstance(p, SyncRunner))]
        gcfreeze.start(lambda: all(r.last_success is not None for r in runners), stop)
        log.info("podwire node daemon running for node %s (mode %s)", cfg.node_name, cfg.mode.value)
        stop.wait()
        log.info("stopping")
        for part in [*parts, runner, nodes]:
            part.stop()
        server.shutdown()


SHUTDOWN_DEADLINE = 8.0  # seconds from SIGTERM to exit, at the latest


def _exit_now() -> None:
    log.warning("shutdown took longer than %.0f s: exiting without waiting for the rest", SHUTDOWN_DEADLINE)
    logging.shutdown()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    logging.basicConfig(level=cfg.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    stop = threading.Event()

    def on_signal(*_):
        if not stop.is_set():
            stop.set()
            # Stopping waits for threads that may sit in a blocked API call (e.g. a LIST during a
            # partition); kubelet's grace period is finite, so leave on time whatever they do.
            timer = threading.Timer(SHUTDOWN_DEADLINE, _exit_now)
            timer.daemon = True
            timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        run(cfg, stop)
    except Exception as e:  # noqa: BLE001 - start-up failure: one line, non-zero exit
        log.error("fatal: %s: %s", type(e).__name__, e)
        return 1
    return 0
