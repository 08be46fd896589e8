"""IPv6 Neighbor Discovery (RFC 4861) messages as bytes in, typed values out (and back): no sockets.

The responder reads from a raw ICMPv6 socket, so a message starts at the ICMPv6 header; the IPv6
source address and hop limit come from recvmsg. Checksums are the kernel's job in both
directions: a raw IPPROTO_ICMPV6 socket always has IPV6_CHECKSUM at offset 2 (RFC 3542 section
3.1; Linux rawv6_init_sk), so the kernel drops received messages with a bad checksum before we see
them and fills the field of every message we send. We build with a zero checksum and rely on that
(the integration test proves it: ndisc6 and the client's kernel accept our advertisements).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from loadbalancer.arp import MacAddress

ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
ND_HOP_LIMIT = 255  # RFC 4861 7.1.1: anything else was forwarded by a router, so not from the link
ALL_NODES = IPv6Address("ff02::1")
_OPT_SOURCE_LLADDR = 1
_OPT_TARGET_LLADDR = 2
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
    """A Neighbor Advertisement "target is at our_mac" with checksum 0 (the kernel fills it).

    Override is always on: we are taking over (or holding) an address that may be cached with
    another node's MAC. Router is off: the address is a Service's, not a router's (a set R flag
    would make hosts keep it in their default router list).
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
