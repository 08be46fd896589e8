"""flowcheck: would the nft table rendered from a Ruleset pass a new flow's first packet?

A pure evaluator that mirrors policy/ruleset.py's chains (ct state aside: this is the first packet
of a connection). It reads the very set elements `ruleset.elements()` renders (per pod, with the
same renderer) — after the normalisation into disjoint boxes — not the Allow records, so it checks
what the kernel would hold:

    egress  (source pod):  pod . peer . l4proto . dport @egress-exact  -> return
                           pod . peer @egress-pair                     -> return
                           pod . peer . l4proto . dport @egress-ports  -> return
                           pod . peer @egress-any                      -> return
                           pod @egress-isolated                        -> drop
    ingress (dest. pod):   the same with the destination as pod and the source as peer

A flow passes iff it passes egress and then ingress (forward: `jump egress; jump ingress`).
"""
from __future__ import annotations

import ipaddress
from typing import Union

from policy.ruleset import PROTOCOLS, Ruleset, _pod_elements, set_name

Addr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def _interval(text: str) -> tuple[int, int]:
    """An element's address field: `a`, `net/len` or `a-b` -> (first, last) as integers."""
    if "-" in text:
        a, b = text.split("-")
        return int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b))
    net = ipaddress.ip_network(text)
    return int(net.network_address), int(net.broadcast_address)


def _ports(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


class FlowCheck:
    """One Ruleset's sets, parsed per pod when a flow first asks about that pod (a cleanup after a
    change judges the flows of a few pods; parsing a node's 270k elements took seconds, on a
    worker thread that then held the interpreter lock against the next sync)."""

    def __init__(self, ruleset: Ruleset):
        self._rs = ruleset
        self._ports: dict[tuple[str, Addr], list[tuple[int, int, str, int, int]]] = {}
        self._any: dict[tuple[str, Addr], list[tuple[int, int]]] = {}

    def _load(self, direction: str, pod: Addr) -> None:
        """The pod's elements as ruleset.elements() renders them (the same per-pod renderer)."""
        key = (direction, pod)
        ports: list[tuple[int, int, str, int, int]] = []
        anys: list[tuple[int, int]] = []
        group = self._rs.by_pod(direction).get(pod)
        if group:
            els = _pod_elements(direction, pod, group, {})
            v = pod.version
            for e in els[set_name(direction, "exact", v)] | els[set_name(direction, "ports", v)]:
                _, peer, proto, port_text = e.split(" . ")
                ports.append((*_interval(peer), proto, *_ports(port_text)))
            for e in els[set_name(direction, "pair", v)] | els[set_name(direction, "any", v)]:
                anys.append(_interval(e.split(" . ")[1]))
        self._ports[key], self._any[key] = ports, anys

    def passes(self, direction: str, pod: Addr, peer: Addr, proto: str, port: int) -> bool:
        """One direction's chain: `pod` is the local end (egress: source, ingress: destination); proto lower-case."""
        p = int(peer)
        if (direction, pod) not in self._ports:
            self._load(direction, pod)
        for lo, hi, pr, plo, phi in self._ports[(direction, pod)]:
            if lo <= p <= hi and pr == proto and plo <= port <= phi:
                return True
        for lo, hi in self._any[(direction, pod)]:
            if lo <= p <= hi:
                return True
        return pod not in self._rs.isolated(direction)

    def allows(self, src: Addr, dst: Addr, proto: str, port: int) -> bool:
        """The first packet src -> dst:port/proto passes the source's egress and the destination's ingress."""
        if src.version != dst.version:
            raise ValueError(f"{src} -> {dst}: mixed IP families")
        proto = proto.lower()
        if proto not in PROTOCOLS:
            raise ValueError(f"protocol {proto!r:.20} not one of {PROTOCOLS}")
        if type(port) is not int or not 1 <= port <= 65535:
            raise ValueError(f"port {port!r:.20} not in 1..65535")
        return self.passes("egress", src, dst, proto, port) and self.passes("ingress", dst, src, proto, port)


def allows(ruleset: Ruleset, src_ip: Addr, dst_ip: Addr, proto: str, port: int) -> bool:
    """One flow against one Ruleset (parses the sets each call; build a FlowCheck for many flows)."""
    return FlowCheck(ruleset).allows(src_ip, dst_ip, proto, port)
