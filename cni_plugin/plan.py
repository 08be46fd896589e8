"""The pod's network as plain data, computed from the config and the IPAM answer (pure, no I/O)."""

from __future__ import annotations

import zlib

from cni_plugin.result import IPConfig, RouteConfig
from netkit.record import Record


def host_veth_name(container_id: str, ifname: str) -> str:
    """Stable, unique enough and <= 15 chars: 'pw' + 12 hex digits of two CRCs of id/ifname.

    Stable so DEL and GC find the host end without state; 48 bits keep collisions negligible at
    node scale (hundreds of pods). zlib is already loaded by the frozen bootloader, hashlib is not.
    """
    key = f"{container_id}/{ifname}".encode()
    return "pw%08x%04x" % (zlib.crc32(key), zlib.crc32(key[::-1]) & 0xFFFF)


class PodPlan(Record):
    host_if: str
    container_if: str
    bridge: str
    mtu: int
    hairpin: bool
    bridge_addrs: tuple[str, ...]  # gateway addresses the bridge must carry ("gw/prefix")
    container_addrs: tuple[str, ...]
    routes: tuple[RouteConfig, ...]
    ips: tuple[IPConfig, ...]  # for the result, interface index filled in
    forward_v4: bool
    forward_v6: bool
    bridge_netfilter: bool = False  # NetworkPolicy on: bridged traffic passes the inet hooks


def plan_pod(conf, allocations, ipam_routes, container_id: str, ifname: str) -> PodPlan:
    """`allocations`: ipam Allocation objects (address: ip_interface, gateway); `ipam_routes`: ipam Route."""
    gateways: dict[int, str] = {}
    bridge_addrs, container_addrs, ips = [], [], []
    for alloc in allocations:
        fam = alloc.address.version
        gw = str(alloc.gateway) if alloc.gateway is not None else ""
        gateways.setdefault(fam, gw)
        container_addrs.append(alloc.address.with_prefixlen)
        if conf.is_gateway and gw:
            bridge_addrs.append(f"{gw}/{alloc.address.network.prefixlen}")
        # interface index 2: [bridge, host veth, container end], as the reference bridge plugin reports
        ips.append(IPConfig(alloc.address.with_prefixlen, gw, 2))
    routes = []
    seen = set()
    for r in ipam_routes:
        dst = r.dst.with_prefixlen
        gw = str(r.gw) if r.gw is not None else ""
        if dst not in seen and (gw or gateways.get(r.dst.version)):
            seen.add(dst)
            routes.append(RouteConfig(dst, gw))
    if conf.is_default_gateway and conf.is_gateway:
        for fam, gw in sorted(gateways.items()):
            dst = "0.0.0.0/0" if fam == 4 else "::/0"
            if gw and dst not in seen:
                seen.add(dst)
                routes.append(RouteConfig(dst, gw))
    return PodPlan(
        host_if=host_veth_name(container_id, ifname),
        container_if=ifname,
        bridge=conf.bridge,
        mtu=conf.mtu,
        hairpin=conf.hairpin,
        bridge_addrs=tuple(bridge_addrs),
        container_addrs=tuple(container_addrs),
        routes=tuple(routes),
        ips=tuple(ips),
        forward_v4=conf.is_gateway and 4 in gateways,
        forward_v6=conf.is_gateway and 6 in gateways,
        bridge_netfilter=getattr(conf, "policy", None) is not None,
    )


def route_gateway(route: RouteConfig, plan: PodPlan) -> str:
    """A route without gw goes via the pod's gateway of its family (host-local semantics)."""
    if route.gw:
        return route.gw
    v6 = ":" in route.dst
    for ip in plan.ips:
        if (":" in ip.address) == v6 and ip.gateway:
            return ip.gateway
    return ""
