"""Nodes as the daemon sees them: API dicts converted once, at the edge, into frozen dataclasses.

Nothing deeper than this module looks at the API's JSON. A Node the daemon cannot use (malformed
podCIDR, no InternalIP) raises BadNode here; the caller logs it and carries on with the others.
Node objects are hostile input: the API server does not check that status.addresses are IPs, so a
kubelet (or a cloud controller) can write any text there, and every daemon reads every Node.
Values leave this module typed: names from the API's alphabet, addresses with no zone index.
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
_MAC = re.compile(r"[0-9a-f][02468ace](:[0-9a-f]{2}){5}")  # unicast: a multicast MAC in the FDB floods
_ZERO_MAC = "00:00:00:00:00:00"  # the FDB's default destination: never a peer's VTEP
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # DNS-1123 subdomain, as the API requires


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


def _text(value) -> str:
    # A string only (ipaddress reads the int 5 as 0.0.0.5), and no IPv6 zone index: ipaddress
    # keeps any text after "%" (newlines included) and prints it back into nft text.
    if not isinstance(value, str) or "%" in value:
        raise ValueError(f"not an address: {value!r:.100}")
    return value


def parse_ip(value) -> IPAddress:
    """An IP address from API or config text; ValueError otherwise."""
    return ipaddress.ip_address(_text(value))


def parse_network(value, strict: bool = True) -> IPNetwork:
    """A CIDR from API or config text; ValueError otherwise."""
    return ipaddress.ip_network(_text(value), strict=strict)


def _map(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadNode(f"{what}: not a map")
    return value


def _list(value, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadNode(f"{what}: not a list")
    return value


def node_from_api(obj) -> NodeInfo:
    """Convert a Node dict exactly as the API sends it. Raises BadNode."""
    meta = _map(_map(obj, "node").get("metadata"), "node metadata")
    name = meta.get("name")
    if not name:
        raise BadNode("node without metadata.name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadNode(f"node name {name!r:.100} is not a DNS subdomain")
    spec = _map(obj.get("spec"), f"node {name}: spec")
    raw_cidrs = _list(spec.get("podCIDRs"), f"node {name}: podCIDRs") or (
        [spec["podCIDR"]] if spec.get("podCIDR") else [])
    cidrs = []
    for raw in raw_cidrs:
        try:
            cidrs.append(parse_network(raw))
        except ValueError as e:
            raise BadNode(f"node {name}: malformed podCIDR {raw!r:.100}: {e}"[:300]) from None
    if len({c.version for c in cidrs}) != len(cidrs):
        raise BadNode(f"node {name}: more than one podCIDR per IP family: {[str(c) for c in cidrs]}")

    ips = []
    for addr in _list(_map(obj.get("status"), f"node {name}: status").get("addresses"), f"node {name}: addresses"):
        if _map(addr, f"node {name}: address").get("type") != "InternalIP":
            continue
        try:
            ips.append(parse_ip(addr.get("address")))
        except ValueError:
            raise BadNode(f"node {name}: malformed InternalIP {addr.get('address')!r:.100}") from None
    if not ips:
        raise BadNode(f"node {name}: no InternalIP in status.addresses")

    mac = _map(meta.get("annotations"), f"node {name}: annotations").get(VTEP_MAC_ANNOTATION)
    mac = mac.strip().lower() if isinstance(mac, str) else None
    created = meta.get("creationTimestamp")
    return NodeInfo(name=name, internal_ips=tuple(ips), pod_cidrs=tuple(cidrs),
                    vtep_mac=mac if mac and mac != _ZERO_MAC and _MAC.fullmatch(mac) else None,
                    created=created if isinstance(created, str) else "")


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
    heartbeats, images, most conditions) trigger no sync; the periodic resync covers the rest.
    A malformed Node gets a view of its own, so the sync that reports it still runs."""
    try:
        return _routing_view(obj)
    except (AttributeError, TypeError):
        return ("malformed", repr(obj))


def _routing_view(obj: dict) -> tuple:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    return (
        tuple(spec.get("podCIDRs") or ()), spec.get("podCIDR"),
        tuple((a.get("type"), a.get("address")) for a in status.get("addresses") or ()),
        (meta.get("annotations") or {}).get(VTEP_MAC_ANNOTATION),
        tuple((c.get("status"), c.get("reason")) for c in status.get("conditions") or ()
              if c.get("type") == "NetworkUnavailable"),
    )
