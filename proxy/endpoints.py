"""Which endpoints a service port uses on this node (kube-proxy's CategorizeEndpoints).

Pure. Per service port and family: resolve each endpoint's port from its slice (named
targetPorts are resolved by the EndpointSlice controller, per slice), then pick
  cluster: ready ones (narrowed by topology hints when usable), else serving+terminating;
  local:   the same among endpoints on this node.
and, for a healthCheckNodePort, how many of this node's endpoints count (`local_ready_endpoints`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from proxy.model import EndpointSlice, IPAddress, NodeInfo, Service, ServicePort


@dataclass(frozen=True)
class PortEndpoint:
    ip: IPAddress
    port: int
    local: bool
    ready: bool
    serving: bool
    terminating: bool
    hint_zones: tuple[str, ...] = ()
    hint_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Categorized:
    cluster: tuple[PortEndpoint, ...]
    local: tuple[PortEndpoint, ...]
    any: bool  # the Service has endpoints at all (even unusable ones)


def port_endpoints(sp: ServicePort, slices: Iterable[EndpointSlice], family: int,
                   node: NodeInfo) -> list[PortEndpoint]:
    """Endpoints for one service port, deduplicated on ip:port, in a stable order."""
    seen: dict[tuple[IPAddress, int], PortEndpoint] = {}
    for sl in slices:
        if sl.address_family != family:
            continue
        port = next((p.port for p in sl.ports if p.name == sp.name and p.protocol == sp.protocol), None)
        if port is None:
            continue
        for ep in sl.endpoints:
            pe = PortEndpoint(ep.addresses[0], port, bool(node.name) and ep.node_name == node.name,
                              ep.ready, ep.serving, ep.terminating, ep.hint_zones, ep.hint_nodes)
            old = seen.get((pe.ip, pe.port))
            if old is None or (pe.ready and not old.ready):  # the same pod in two slices mid-update
                seen[(pe.ip, pe.port)] = pe
    return sorted(seen.values(), key=lambda e: (e.ip, e.port))


def _topology(eps: list[PortEndpoint], node: NodeInfo) -> list[PortEndpoint]:
    """Hints are used only when every endpoint carries them and some match this node."""
    if eps and node.name and all(e.hint_nodes for e in eps):
        mine = [e for e in eps if node.name in e.hint_nodes]
        if mine:
            return mine
    zone = node.zone
    if not eps or not zone or not all(e.hint_zones for e in eps):
        return eps
    mine = [e for e in eps if zone in e.hint_zones]
    return mine or eps


def _usable(eps: list[PortEndpoint], topology: bool, node: NodeInfo) -> tuple[PortEndpoint, ...]:
    ready = [e for e in eps if e.ready]
    if ready:
        return tuple(_topology(ready, node) if topology else ready)
    return tuple(e for e in eps if e.serving and e.terminating)


def categorize(svc: Service, eps: list[PortEndpoint], node: NodeInfo) -> Categorized:
    # Topology narrows only cluster-wide choice; Local policies already pin the node.
    cluster = _usable(eps, True, node)
    local = _usable([e for e in eps if e.local], False, node)
    return Categorized(cluster, local, bool(eps))


def local_ready_endpoints(slices: Iterable[EndpointSlice], node_name: str) -> int:
    """The count a healthCheckNodePort reports (kube-proxy's LocalReadyEndpoints): distinct
    addresses of this node's endpoints whose `ready` condition holds, over all the slices of one
    Service. Terminating endpoints are left out even when they are the node's only ones (ready is
    false for them unless publishNotReadyAddresses): the dataplane may still fall back to them,
    but the 503 tells load balancers to drain the node while its pods shut down (KEP-1669)."""
    if not node_name:
        return 0
    return len({ep.addresses[0] for sl in slices for ep in sl.endpoints
                if ep.node_name == node_name and ep.ready and ep.addresses})
