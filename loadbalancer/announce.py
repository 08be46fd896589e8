"""Announcement: which LoadBalancer addresses this node answers ARP/NDP for.

Each address has one Lease (`podwire-lb-<address>`); every node that may answer for it is a
candidate and the holder answers (loadbalancer.responder). `eligible` is pure: a node may answer
for an address unless a Service on it has externalTrafficPolicy Local and some node has ready
endpoints of such a Service while this one has none (then only nodes with endpoints compete:
traffic that lands elsewhere would be dropped). Nodes labelled
node.kubernetes.io/exclude-from-external-load-balancers never answer.

The lease is per address, not per Service: addresses shared by several Services (same sharing
key) must be answered by one node, and for an unshared address the two are the same.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Mapping

from .model import IPAddress

log = logging.getLogger(__name__)

EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
ADDRESS_PURPOSE = "address"


@dataclass(frozen=True)
class Announced:
    """One of our Services' assigned addresses, as its status shows it."""

    key: str  # namespace/name
    addresses: tuple[IPAddress, ...]
    local: bool  # externalTrafficPolicy: Local


def lease_name(ip: IPAddress) -> str:
    """podwire-lb-10-0-0-5, podwire-lb-fd00-0000-...-0005 (exploded: never ends in '-')."""
    text = ip.exploded if ip.version == 6 else str(ip)
    return "podwire-lb-" + text.replace(".", "-").replace(":", "-")


def eligible(services: Iterable[Announced], endpoint_nodes: Mapping[str, frozenset[str]], node: str,
             excluded: bool = False) -> dict[IPAddress, bool]:
    """Every announced address -> may this node answer for it."""
    by_ip: dict[IPAddress, list[Announced]] = {}
    for s in services:
        for ip in s.addresses:
            by_ip.setdefault(ip, []).append(s)
    out: dict[IPAddress, bool] = {}
    for ip, svcs in by_ip.items():
        if excluded:
            out[ip] = False
            continue
        local = [s for s in svcs if s.local]
        with_endpoints: set[str] = set()
        for s in local:
            with_endpoints |= endpoint_nodes.get(s.key, frozenset())
        out[ip] = not with_endpoints or node in with_endpoints
    return out


def announced_from_api(obj: dict) -> Announced | None:
    """A Service we assigned addresses to, from its API dict (None: not one of ours / none yet)."""
    from .from_api import Invalid, service_from_api
    from .model import LBService

    try:
        s = service_from_api(obj)
    except Invalid:
        return None
    if not isinstance(s, LBService) or not s.current or s.request_error:
        return None
    return Announced(s.key, s.current, s.local)


def endpoint_nodes_from_slice(obj: dict) -> tuple[str, frozenset[str]] | None:
    """(Service key, nodes with a ready endpoint) of one EndpointSlice."""
    if not isinstance(obj, dict):
        return None
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    labels = meta.get("labels")
    labels = labels if isinstance(labels, dict) else {}
    svc, ns = labels.get("kubernetes.io/service-name"), meta.get("namespace")
    if not isinstance(svc, str) or not isinstance(ns, str):
        return None
    nodes = set()
    for ep in obj.get("endpoints") or []:
        if not isinstance(ep, dict):
            continue
        cond = ep.get("conditions")
        if isinstance(cond, dict) and cond.get("ready") is False:
            continue
        if isinstance(ep.get("nodeName"), str):
            nodes.add(ep["nodeName"])
    return f"{ns}/{svc}", frozenset(nodes)


class Announcer:
    """The node side: holds the leases of the addresses it may answer for and tells the
    responders (one per interface) which addresses to answer. Called from one SyncRunner."""

    def __init__(self, node: str, leases, services, slices, nodes, responders):
        self.node, self.leases = node, leases
        self.services, self.slices, self.nodes = services, slices, nodes  # informers (.list(), .get())
        self.responders = responders  # loadbalancer.feature.Responders: address -> interface
        self.holding: set[IPAddress] = set()
        self._want: dict[IPAddress, bool] | None = None
        self._off_link: list[IPAddress] = []

    def desired(self) -> dict[IPAddress, bool]:
        """Every announced address -> may this node answer for it (eligible, and on one of its
        links: ARP and NDP do not cross routers)."""
        announced = [a for a in map(announced_from_api, self.services.list()) if a is not None]
        ep_nodes: dict[str, frozenset[str]] = {}
        for obj in self.slices.list():
            got = endpoint_nodes_from_slice(obj)
            if got is not None:
                ep_nodes[got[0]] = ep_nodes.get(got[0], frozenset()) | got[1]
        me = self.nodes.get(self.node) or {}
        labels = (me.get("metadata") or {}).get("labels") or {}
        out = eligible(announced, ep_nodes, self.node, excluded=EXCLUDE_LABEL in labels)
        self.responders.refresh_links()
        off_link = sorted((ip for ip in out if self.responders.interface_for(ip) is None), key=str)
        for ip in off_link:
            out[ip] = False
        if off_link != self._off_link:
            if off_link:
                log.info("not on any link of this node, so not answered here: %s", ", ".join(map(str, off_link)))
            self._off_link = off_link
        return out

    def sync(self, recompute: bool = True) -> None:
        """Keep (or try for) the leases of the addresses this node may answer for; `recompute`
        reads the caches again (after an object changed), else the last answer is used."""
        if recompute or self._want is None:
            self._want = self.desired()
        want = self._want
        # first drop what we no longer hold (a claim that lapsed while the API server was out of
        # reach), before any write that may take a while
        self.responders.set_addresses({ip for ip in self.holding if want.get(ip)
                                       and self.leases.held(lease_name(ip))})
        held = set()
        for ip, ok in sorted(want.items(), key=lambda kv: (kv[0].version, int(kv[0]))):
            name = lease_name(ip)
            if ok and self.leases.hold(name, ADDRESS_PURPOSE):
                held.add(ip)
            elif not ok and ip in self.holding:
                self.leases.release(name, ADDRESS_PURPOSE)
        for ip in self.holding - set(want):
            self.leases.release(lease_name(ip), ADDRESS_PURPOSE)
        if held != self.holding:
            for ip in sorted(held - self.holding, key=str):
                log.info("answering for load balancer address %s", ip)
            for ip in sorted(self.holding - held, key=str):
                log.info("no longer answering for load balancer address %s", ip)
        self.holding = held
        self.responders.set_addresses(held)

    def stop(self) -> None:
        """Clean stop: hand every address over at once (another node's next sync takes it)."""
        self.responders.set_addresses(set())
        for ip in self.holding:
            self.leases.release(lease_name(ip), ADDRESS_PURPOSE)
        self.holding = set()

