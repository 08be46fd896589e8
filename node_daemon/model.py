"""Nodes as the daemon sees them: API dicts converted once, at the edge, into frozen dataclasses.

Nothing deeper than this module looks at the API's JSON. A Node the daemon cannot use (malformed
podCIDR, no InternalIP) raises BadNode here; the caller logs it and carries on with the others.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

VTEP_MAC_ANNOTATION = "podwire.io/vtep-mac"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class BadNode(ValueError):
    """A Node object the daemon cannot use; the message says why."""


@dataclass(frozen=True)
class NodeInfo:
    name: str
    internal_ips: tuple[IPAddress, ...]
    pod_cidrs: tuple[IPNetwork, ...]
    vtep_mac: str | None = None
    created: str = ""  # metadata.creationTimestamp (RFC 3339, UTC: sorts as text); who claimed first

    def ip_of(self, version: int) -> IPAddress | None:
        return next((ip for ip in self.internal_ips if ip.version == version), None)


def node_from_api(obj: dict) -> NodeInfo:
    """Convert a Node dict exactly as the API sends it. Raises BadNode."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise BadNode("node without metadata.name")
    spec = obj.get("spec") or {}
    raw_cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    cidrs = []
    for raw in raw_cidrs:
        try:
            cidrs.append(ipaddress.ip_network(raw, strict=True))
        except (ValueError, TypeError) as e:
            raise BadNode(f"node {name}: malformed podCIDR {raw!r}: {e}") from None
    if len({c.version for c in cidrs}) != len(cidrs):
        raise BadNode(f"node {name}: more than one podCIDR per IP family: {raw_cidrs}")

    ips = []
    for addr in (obj.get("status") or {}).get("addresses") or []:
        if addr.get("type") != "InternalIP":
            continue
        try:
            ips.append(ipaddress.ip_address(addr.get("address")))
        except (ValueError, TypeError):
            raise BadNode(f"node {name}: malformed InternalIP {addr.get('address')!r}") from None
    if not ips:
        raise BadNode(f"node {name}: no InternalIP in status.addresses")

    mac = (meta.get("annotations") or {}).get(VTEP_MAC_ANNOTATION)
    mac = mac.strip().lower() if isinstance(mac, str) else None
    return NodeInfo(name=name, internal_ips=tuple(ips), pod_cidrs=tuple(cidrs),
                    vtep_mac=mac if mac and _MAC.match(mac) else None,
                    created=str(meta.get("creationTimestamp") or ""))


def vtep_mac_for(node_name: str) -> str:
    """A stable, locally administered unicast MAC for this node's VXLAN device.

    Derived from the node name so a restart or a recreated device keeps the address the peers
    already know (flannel's random MAC forces every peer to relearn it after each restart).
    """
    digest = bytearray(hashlib.sha256(node_name.encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in digest)


def routing_view(obj: dict) -> tuple:
    """The parts of a Node dict a sync depends on. Node updates that leave this unchanged (status
    heartbeats, images, most conditions) trigger no sync; the periodic resync covers the rest."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    return (
        tuple(spec.get("podCIDRs") or ()), spec.get("podCIDR"),
        tuple((a.get("type"), a.get("address")) for a in status.get("addresses") or ()),
        (meta.get("annotations") or {}).get(VTEP_MAC_ANNOTATION),
        tuple((c.get("status"), c.get("reason")) for c in status.get("conditions") or ()
              if c.get("type") == "NetworkUnavailable"),
    )
