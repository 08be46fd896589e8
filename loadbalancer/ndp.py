"""IPv6 Neighbor Discovery (RFC 4861) messages as bytes in, typed values out (and back): no sockets.

The responder speaks NDP in whole Ethernet frames on a packet socket, as it speaks ARP (see
loadbalancer.responder for why not through a raw ICMPv6 socket). Received solicitations are
checked for what the IPv6 stack would have checked: version, next header, length, hop limit 255,
destination, and the ICMPv6 checksum (RFC 4443 2.3), which nobody has verified before us.
Advertisements are built complete: Ethernet and IPv6 headers (hop limit 255, source the
advertised address, as the kernel sends for its own) and the checksum computed here; the kernel
adds nothing. The unit tests compare them with the kernel's own advertisements byte for byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from loadbalancer.arp import MacAddress

ETH_P_IPV6 = 0x86DD
IPPROTO_ICMPV6 = 58
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
ND_HOP_LIMIT = 255  # RFC 4861 7.1.1: anything else was forwarded by a router, so not from the link
ALL_NODES = IPv6Address("ff02::1")
_OPT_SOURCE_LLADDR = 1
_OPT_TARGET_LLADDR = 2
_ETH_HEADER = struct.Struct("!6s6sH")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")  # version/class/flow, payload length, next header, hop limit, src, dst
_ICMPV6_OFFSET = _ETH_HEADER.size + _IPV6_HEADER.size
_NS = struct.Struct("!BBHI16s")  # type, code, checksum, reserved, target
_NA = struct.Struct("!BBHI16sBB6s")  # ... flags+reserved, target, target link-layer address option
_FLAG_SOLICITED = 1 << 30
_FLAG_OVERRIDE = 1 << 29
_SOLICITED_NODE_PREFIX = int(IPv6Address("ff02::1:ff00:0"))


@dataclass(frozen=True)
class NeighborSolicitation:
    source: IPv6Address  # :: for duplicate address detection
    target: IPv6Address
    source_lladdr: MacAddress | None  # the asker's link-layer address option, when it sent one

    @property
    def is_dad(self) -> bool:
        return self.source.is_unspecified


@dataclass(frozen=True)
class SolicitationFrame:
    """A solicitation as it arrived on the link: who sent the frame, and to which address."""

    eth_source: MacAddress
    destination: IPv6Address
    solicitation: NeighborSolicitation


def solicited_node_group(address: IPv6Address) -> IPv6Address:
    """ff02::1:ffXX:XXXX, the group every NS for `address` is sent to (RFC 4291 2.7.1)."""
    return IPv6Address(_SOLICITED_NODE_PREFIX | (int(address) & 0xFFFFFF))


def parse_solicitation(message: bytes, source: IPv6Address, hop_limit: int | None) -> NeighborSolicitation:
    """An ICMPv6 message (no IPv6 header) -> NeighborSolicitation, validated as RFC 4861 7.1.1 asks.

    hop_limit is the received IPv6 hop limit (None when the socket did not report it).
    """
    if hop_limit is not None and hop_limit != ND_HOP_LIMIT:
        raise ValueError(f"hop limit {hop_limit}, not {ND_HOP_LIMIT}: not from this link")
    if len(message) < _NS.size:
        raise ValueError(f"neighbor solicitation of {len(message)} bytes is shorter than {_NS.size}")
    icmp_type, code, _csum, _reserved, target_bytes = _NS.unpack_from(message, 0)
    if icmp_type != ND_NEIGHBOR_SOLICIT or code != 0:
        raise ValueError(f"ICMPv6 type {icmp_type} code {code} is not a neighbor solicitation")
    target = IPv6Address(target_bytes)
    if target.is_multicast:
        raise ValueError(f"solicitation target {target} is a multicast address")
    lladdr = _source_lladdr(message[_NS.size:])
    if source.is_multicast:
        raise ValueError(f"solicitation source {source} is a multicast address")
    if source.is_unspecified and lladdr is not None:
        raise ValueError("a duplicate address detection probe (source ::) must not carry a link-layer address")
    return NeighborSolicitation(source=source, target=target, source_lladdr=lladdr)


def parse_solicitation_frame(frame: bytes) -> SolicitationFrame:
    """An Ethernet frame carrying IPv6 + ICMPv6 NS (no extension headers) -> SolicitationFrame.

    The destination must be the target's solicited-node group or the target itself (a unicast
    reachability probe), as RFC 4861 7.1.1 and 7.2.2 allow; a DAD probe only to the group.
    """
    if len(frame) < _ICMPV6_OFFSET:
        raise ValueError(f"frame of {len(frame)} bytes is shorter than Ethernet + IPv6 ({_ICMPV6_OFFSET})")
    _dst_mac, eth_src, ethertype = _ETH_HEADER.unpack_from(frame, 0)
    if ethertype != ETH_P_IPV6:
        raise ValueError(f"ethertype {ethertype:#06x} is not IPv6")
    vtf, payload_len, next_header, hop_limit, src, dst = _IPV6_HEADER.unpack_from(frame, _ETH_HEADER.size)
    if vtf >> 28 != 6:
        raise ValueError(f"IP version {vtf >> 28} in an IPv6 frame")
    if next_header != IPPROTO_ICMPV6:
        raise ValueError(f"next header {next_header} is not ICMPv6 (extension headers are not taken)")
    if _ICMPV6_OFFSET + payload_len > len(frame):
        raise ValueError(f"payload length {payload_len} runs past the end of a {len(frame)}-byte frame")
    message = frame[_ICMPV6_OFFSET:_ICMPV6_OFFSET + payload_len]  # what follows is Ethernet padding
    source, destination = IPv6Address(src), IPv6Address(dst)
    if icmpv6_checksum(source, destination, message) != 0:
        raise ValueError("bad ICMPv6 checksum")
    ns = parse_solicitation(message, source, hop_limit)
    if destination not in (solicited_node_group(ns.target), ns.target) or (ns.is_dad and destination == ns.target):
        raise ValueError(f"solicitation for {ns.target} sent to {destination}")
    return SolicitationFrame(eth_source=MacAddress(eth_src), destination=destination, solicitation=ns)


def icmpv6_checksum(source: IPv6Address, destination: IPv6Address, message: bytes) -> int:
    """The one's complement sum over the pseudo-header and message (RFC 4443 2.3): 0 when a
    received message's checksum is right; a message with a zero checksum field gets its value."""
    data = source.packed + destination.packed + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6) + message
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _source_lladdr(options: bytes) -> MacAddress | None:
    """Walks the options (type, length in 8-byte units, data); returns the source link-layer address."""
    lladdr = None
    offset = 0
    while offset < len(options):
        if len(options) - offset < 2:
            raise ValueError("truncated option header")
        opt_type, units = options[offset], options[offset + 1]
        size = units * 8
        if size == 0:
            raise ValueError("option of length 0")  # RFC 4861 4.6: such a packet MUST be discarded
        if offset + size > len(options):
            raise ValueError(f"option of {size} bytes runs past the end of the message")
        if opt_type == _OPT_SOURCE_LLADDR:
            if size != 8:
                raise ValueError(f"source link-layer address option of {size} bytes on Ethernet (8 expected)")
            lladdr = MacAddress(options[offset + 2:offset + 8])
        offset += size
    return lladdr


def build_advertisement(target: IPv6Address, our_mac: MacAddress, *, solicited: bool) -> bytes:
    """A Neighbor Advertisement "target is at our_mac", ICMPv6 only, checksum 0 (see ipv6_frame).

    Override is always on: we are taking over (or holding) an address that may be cached with
    another node's MAC. Router is off: the address is a Service's, not a router's (neighbours
    record the flag as the entry's IsRouter, RFC 4861 7.2.5).
    """
    flags = _FLAG_OVERRIDE | (_FLAG_SOLICITED if solicited else 0)
    return _NA.pack(ND_NEIGHBOR_ADVERT, 0, 0, flags, target.packed, _OPT_TARGET_LLADDR, 1, our_mac.octets)


def reply_to(solicitation: NeighborSolicitation, our_mac: MacAddress) -> tuple[IPv6Address, bytes]:
    """(destination, message) answering a solicitation, as RFC 4861 7.2.4 says.

    A DAD probe (source ::) is answered to all-nodes with Solicited off; anything else unicast to
    its source with Solicited on.
    """
    if solicitation.is_dad:
        return ALL_NODES, build_advertisement(solicitation.target, our_mac, solicited=False)
    return solicitation.source, build_advertisement(solicitation.target, our_mac, solicited=True)


def build_unsolicited(address: IPv6Address, our_mac: MacAddress) -> tuple[IPv6Address, bytes]:
    """(ff02::1, advertisement) sent on takeover so that neighbours replace a cached MAC (Override)."""
    return ALL_NODES, build_advertisement(address, our_mac, solicited=False)


def multicast_mac(group: IPv6Address) -> MacAddress:
    """33:33 and the group's last 32 bits (RFC 2464 7)."""
    return MacAddress(b"\x33\x33" + group.packed[12:])


def ipv6_frame(dst_mac: MacAddress, src_mac: MacAddress, source: IPv6Address, destination: IPv6Address,
               message: bytes) -> bytes:
    """Ethernet + IPv6 (hop limit 255, no flow label) + the ICMPv6 message with its checksum."""
    zeroed = message[:2] + b"\0\0" + message[4:]
    message = zeroed[:2] + struct.pack("!H", icmpv6_checksum(source, destination, zeroed)) + zeroed[4:]
    return (_ETH_HEADER.pack(dst_mac.octets, src_mac.octets, ETH_P_IPV6)
            + _IPV6_HEADER.pack(6 << 28, len(message), IPPROTO_ICMPV6, ND_HOP_LIMIT, source.packed,
                                destination.packed)
            + message)


def reply_frame(received: SolicitationFrame, our_mac: MacAddress) -> bytes:
    """The whole frame answering a received solicitation, from the target address itself.

    Unicast to the asker's link-layer address option, else to the frame's Ethernet source (a
    reachability probe may leave the option out); a DAD probe's answer goes to all-nodes.
    """
    ns = received.solicitation
    destination, message = reply_to(ns, our_mac)
    dst_mac = multicast_mac(destination) if destination.is_multicast else (ns.source_lladdr or received.eth_source)
    return ipv6_frame(dst_mac, our_mac, ns.target, destination, message)


def unsolicited_frame(address: IPv6Address, our_mac: MacAddress) -> bytes:
    """The whole frame of an unsolicited advertisement of `address` to all-nodes (takeover)."""
    destination, message = build_unsolicited(address, our_mac)
    return ipv6_frame(multicast_mac(destination), our_mac, address, destination, message)

