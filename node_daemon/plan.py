"""The desired cross-node dataplane: a pure function of (this node, its peers, the underlay, config).

Transports are a small registry chosen per peer and per IP family, not per cluster: a peer on the
same underlay subnet gets a direct route via its InternalIP (kindnet, flannel host-gw); any other
peer gets the VXLAN overlay (flannel vxlan). `mode` narrows the choice: direct, vxlan or auto.
No I/O here: the netlink reconciler applies what this returns.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

from .dataplane import Dataplane, FdbEntry, Neighbour, Route, VxlanDevice
from .model import IPAddress, IPNetwork, NodeInfo

# Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14); outer IPv6 is 20 bytes longer.
VXLAN_OVERHEAD = {4: 50, 6: 70}


class Mode(str, enum.Enum):
    AUTO = "auto"
    DIRECT = "direct"
    VXLAN = "vxlan"


@dataclass(frozen=True)
class Underlay:
    """The node's underlay interface as read from the kernel."""

    ifname: str
    addresses: tuple  # ip_interface objects (address + prefix): what "on-link" is measured against
    mtu: int


@dataclass(frozen=True)
class VxlanSettings:
    device: str = "podwire.vxlan"
    vni: int = 1
    port: int = 4789


@dataclass(frozen=True)
class Skipped:
    node: str
    reason: str


@dataclass(frozen=True)
class Plan:
    dataplane: Dataplane
    pod_mtu: int
    transports: tuple[tuple[str, int, str], ...]  # (peer, IP family, transport name)
    skipped: tuple[Skipped, ...]


@dataclass(frozen=True)
class Context:
    """What every transport may use: this node's underlay, and the VXLAN device if there is one."""

    underlay: Underlay
    vxlan: VxlanDevice | None
    mac_conflicts: dict[str, str] = field(default_factory=dict)  # peer -> who owns its MAC


class Transport(Protocol):
    name: str

    def entries(self, ctx: Context, peer: NodeInfo, cidr: IPNetwork) -> Dataplane | str:
        """This peer's entries for one of its podCIDRs, or the reason it cannot be served."""


class DirectRoutes:
    name = "direct"

    def entries(self, ctx, peer, cidr):
        via = peer.ip_of(cidr.version)
        if via is None:
            return f"no IPv{cidr.version} InternalIP for a direct route to {cidr}"
        if not on_link(via, ctx.underlay):
            return f"{via} is not on-link on {ctx.underlay.ifname} (mode direct)"
        return Dataplane(routes=frozenset({Route(cidr, via, ctx.underlay.ifname)}))


class VxlanOverlay:
    name = "vxlan"

    def entries(self, ctx, peer, cidr):
        if ctx.vxlan is None:
            return "no VXLAN device (this node has no underlay address of its InternalIP family)"
        outer = peer.ip_of(ctx.vxlan.local.version)
        if outer is None:
            return f"no IPv{ctx.vxlan.local.version} InternalIP to reach its VTEP"
        if peer.vtep_mac is None:
            return "no valid podwire.io/vtep-mac annotation yet"
        if peer.name in ctx.mac_conflicts:
            # Two FDB entries for one MAC make the kernel send each frame to both VTEPs.
            return f"podwire.io/vtep-mac {peer.vtep_mac} is already {ctx.mac_conflicts[peer.name]}'s"
        vtep = vtep_ip(cidr)
        return Dataplane(
            routes=frozenset({Route(cidr, vtep, ctx.vxlan.name, onlink=True)}),
            fdb=frozenset({FdbEntry(peer.vtep_mac, outer)}),
            neighbours=frozenset({Neighbour(vtep, peer.vtep_mac)}),
        )


TRANSPORTS: dict[str, Transport] = {t.name: t for t in (DirectRoutes(), VxlanOverlay())}


def choose(mode: Mode, peer_on_link: bool) -> str:
    if mode is Mode.AUTO:
        return "direct" if peer_on_link else "vxlan"
    return mode.value


def vtep_ip(cidr: IPNetwork) -> IPAddress:
    """The VTEP address of the node owning `cidr`: the first address of its podCIDR (flannel's scheme).

    Every peer can derive it from spec.podCIDRs alone (no extra annotation); host-local never hands
    out a subnet's network address and the bridge takes .1, so .0 is free on every node; and traffic
    the node itself sends over the overlay leaves with a source inside the cluster CIDR, so replies
    route back through the overlay and egress masquerade leaves it alone.
    """
    return cidr.network_address


def on_link(ip: IPAddress, underlay: Underlay) -> bool:
    return any(ip.version == a.version and ip in a.network for a in underlay.addresses)


def refusals(me: NodeInfo, peers: list[NodeInfo], underlay: Underlay,
             cluster_cidrs=()) -> dict[tuple[str, IPNetwork], str]:
    """Peer podCIDRs that must not be routed, with the reason: {(peer, cidr): why}.

    Node objects are input like any other. A podCIDR that overlaps this node's own (or one
    holding 0.0.0.0/0) would replace the node's own routes, since routes are programmed with
    `replace`; two Nodes claiming the same addresses would make the route flap between them,
    so the claim of the Node created first (then: name first) wins; a peer whose InternalIP is
    ours, loopback, multicast or unspecified cannot be a next hop or a VTEP.
    """
    refused: dict[tuple[str, IPNetwork], str] = {}
    claimed: list[tuple[IPNetwork, str]] = []  # (cidr, peer) already accepted, oldest Nodes first
    for peer in sorted(peers, key=lambda p: (p.created, p.name)):
        if peer.name == me.name:
            continue
        bad_ip = next((ip for ip in peer.internal_ips if ip.is_unspecified or ip.is_loopback
                       or ip.is_multicast or any(ip == a.ip for a in underlay.addresses)), None)
        for cidr in peer.pod_cidrs:
            why = (f"InternalIP {bad_ip} is not a usable peer address" if bad_ip is not None
                   else _overlap(cidr, me, underlay, cluster_cidrs, claimed))
            if why:
                refused[(peer.name, cidr)] = why
            else:
                claimed.append((cidr, peer.name))
    return refused


def mac_conflicts(me: NodeInfo, peers: list[NodeInfo], my_mac: str, refused) -> dict[str, str]:
    """Peers whose VTEP MAC is ours or an older served Node's: {peer: owner}. A Node writes its own
    annotation, so without this one node could receive a copy of every frame meant for another."""
    owners = {my_mac: me.name}
    out = {}
    for peer in sorted(peers, key=lambda p: (p.created, p.name)):
        if peer.name == me.name or peer.vtep_mac is None \
                or all((peer.name, c) in refused for c in peer.pod_cidrs):  # a refused Node claims nothing
            continue
        owner = owners.setdefault(peer.vtep_mac, peer.name)
        if owner != peer.name:
            out[peer.name] = owner
    return out


def _overlap(cidr, me, underlay, cluster_cidrs, claimed) -> str | None:
    same = lambda nets: [n for n in nets if n.version == cidr.version]  # noqa: E731 - overlaps() ignores versions
    for own in same(me.pod_cidrs):
        if own.overlaps(cidr):
            return f"overlaps this node's podCIDR {own}"
    for net in same(a.network for a in underlay.addresses):
        if net.overlaps(cidr):
            return f"overlaps the underlay subnet {net}"
    inside = same(cluster_cidrs)
    if inside and not any(cidr.subnet_of(c) for c in inside):
        return f"outside the cluster CIDRs {', '.join(map(str, inside))}"
    for other, owner in claimed:
        if other.version == cidr.version and other.overlaps(cidr):
            return f"overlaps {other} of {owner}, a Node created earlier"
    return None


def plan(me: NodeInfo, peers: list[NodeInfo], underlay: Underlay, mode: Mode,
         vxlan: VxlanSettings, vtep_mac: str, cluster_cidrs=()) -> Plan:
    device = _vxlan_device(me, underlay, mode, vxlan, vtep_mac)
    refused = refusals(me, peers, underlay, cluster_cidrs)
    ctx = Context(underlay, device, mac_conflicts(me, peers, vtep_mac, refused))
    routes: set[Route] = set()
    fdb: set[FdbEntry] = set()
    neigh: set[Neighbour] = set()
    transports, skipped = [], []
    overlay_wanted = mode is Mode.VXLAN
    for peer in sorted(peers, key=lambda p: p.name):
        if peer.name == me.name:
            continue
        if not peer.pod_cidrs:
            skipped.append(Skipped(peer.name, "no podCIDR yet"))
        for cidr in peer.pod_cidrs:
            if (peer.name, cidr) in refused:
                skipped.append(Skipped(peer.name, f"{cidr}: {refused[(peer.name, cidr)]}"))
                continue
            via = peer.ip_of(cidr.version)
            name = choose(mode, via is not None and on_link(via, underlay))
            overlay_wanted |= name == "vxlan"  # even if not servable yet (MAC not published)
            got = TRANSPORTS[name].entries(ctx, peer, cidr)
            if isinstance(got, str):
                skipped.append(Skipped(peer.name, f"{cidr}: {got}"))
                continue
            transports.append((peer.name, cidr.version, name))
            routes |= got.routes
            fdb |= got.fdb
            neigh |= got.neighbours
    addresses = frozenset(
        ipaddress.ip_interface(f"{vtep_ip(c)}/{c.max_prefixlen}") for c in me.pod_cidrs
    ) if device else frozenset()
    pod_mtu = device.mtu if device is not None and overlay_wanted else underlay.mtu
    return Plan(
        dataplane=Dataplane(vxlan=device, addresses=addresses, routes=frozenset(routes),
                            fdb=frozenset(fdb), neighbours=frozenset(neigh)),
        pod_mtu=pod_mtu, transports=tuple(transports), skipped=tuple(skipped))


def _vxlan_device(me, underlay, mode, vxlan, mac) -> VxlanDevice | None:
    """The device exists in modes auto and vxlan, even before any peer needs it: a peer that sees
    this node as off-link (asymmetric subnets) may encapsulate towards us at any time."""
    if mode is Mode.DIRECT:
        return None
    local = next((ip for ip in me.internal_ips
                  if any(a.ip == ip for a in underlay.addresses)), None)
    if local is None:
        return None
    return VxlanDevice(name=vxlan.device, vni=vxlan.vni, port=vxlan.port, mac=mac,
                       mtu=underlay.mtu - VXLAN_OVERHEAD[local.version], local=local,
                       underlay=underlay.ifname)
