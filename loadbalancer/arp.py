"""ARP over Ethernet as bytes in, typed values out (and back): no sockets here.

The responder reads whole Ethernet frames from an AF_PACKET socket, so parsing starts at the
Ethernet header. Every frame is hostile input: anything that is not Ethernet/IPv4 ARP of the one
shape RFC 826 allows raises ValueError, never an IndexError or struct.error. Frames are built
without padding to 60 bytes, as the kernel's own arp_create does: the NIC pads on the wire.
"""

from __future__ import annotations

import string
import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address

ETH_P_ARP = 0x0806
_ETH_P_IPV4 = 0x0800
_HTYPE_ETHERNET = 1
_ETH_HEADER = struct.Struct("!6s6sH")
_ARP_BODY = struct.Struct("!HHBBH6s4s6s4s")
ARP_FRAME_LEN = _ETH_HEADER.size + _ARP_BODY.size  # 42: what we send; what we accept at least


@dataclass(frozen=True, order=True)
class MacAddress:
    """A 48-bit Ethernet address (six bytes), printed the way `ip link` prints it."""

    octets: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.octets, bytes) or len(self.octets) != 6:
            raise ValueError(f"a MAC address has 6 bytes, got {self.octets!r}")

    @classmethod
    def parse(cls, text: str) -> MacAddress:
        parts = text.strip().split(":")
        if len(parts) != 6 or not all(len(p) == 2 and all(c in string.hexdigits for c in p) for p in parts):
            raise ValueError(f"not a MAC address: {text!r}")
        return cls(bytes(int(p, 16) for p in parts))

    @property
    def is_multicast(self) -> bool:
        """Group bit set (broadcast included): never a valid sender address."""
        return bool(self.octets[0] & 1)

    def __str__(self) -> str:
        return ":".join(f"{b:02x}" for b in self.octets)


BROADCAST = MacAddress(b"\xff" * 6)
ZERO_MAC = MacAddress(b"\x00" * 6)
UNSPECIFIED = IPv4Address(0)


class ArpOp(IntEnum):
    REQUEST = 1
    REPLY = 2


@dataclass(frozen=True)
class ArpMessage:
    """One received ARP message, with the Ethernet source kept for the "is it our own?" check."""

    op: ArpOp
    eth_source: MacAddress
    sender_mac: MacAddress
    sender_ip: IPv4Address
    target_mac: MacAddress
    target_ip: IPv4Address

    @property
    def is_probe(self) -> bool:
        """RFC 5227 probe: "who has X?" from a host that has no address yet (sender 0.0.0.0)."""
        return self.sender_ip == UNSPECIFIED

    @property
    def is_announcement(self) -> bool:
        """Gratuitous ARP: the sender announces its own address; nothing to answer."""
        return self.sender_ip == self.target_ip


def parse_frame(frame: bytes) -> ArpMessage:
    """An Ethernet frame carrying IPv4-over-Ethernet ARP -> ArpMessage, or ValueError."""
    if len(frame) < ARP_FRAME_LEN:
        raise ValueError(f"frame of {len(frame)} bytes is shorter than Ethernet + ARP ({ARP_FRAME_LEN})")
    _dst, eth_src, ethertype = _ETH_HEADER.unpack_from(frame, 0)
    if ethertype != ETH_P_ARP:
        raise ValueError(f"ethertype {ethertype:#06x} is not ARP")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP_BODY.unpack_from(frame, _ETH_HEADER.size)
    if (htype, ptype, hlen, plen) != (_HTYPE_ETHERNET, _ETH_P_IPV4, 6, 4):
        raise ValueError(f"not IPv4-over-Ethernet ARP (htype {htype}, ptype {ptype:#06x}, hlen {hlen}, plen {plen})")
    if op not in (ArpOp.REQUEST, ArpOp.REPLY):
        raise ValueError(f"ARP operation {op} is neither request nor reply")
    sender_mac = MacAddress(sha)
    if sender_mac.is_multicast:
        raise ValueError(f"ARP sender hardware address {sender_mac} is a group address")
    return ArpMessage(op=ArpOp(op), eth_source=MacAddress(eth_src), sender_mac=sender_mac,
                      sender_ip=IPv4Address(spa), target_mac=MacAddress(tha), target_ip=IPv4Address(tpa))


def _frame(eth_dst: MacAddress, eth_src: MacAddress, op: ArpOp, sha: MacAddress, spa: IPv4Address,
           tha: MacAddress, tpa: IPv4Address) -> bytes:
    return (_ETH_HEADER.pack(eth_dst.octets, eth_src.octets, ETH_P_ARP)
            + _ARP_BODY.pack(_HTYPE_ETHERNET, _ETH_P_IPV4, 6, 4, op, sha.octets, spa.packed, tha.octets, tpa.packed))


def build_reply(request: ArpMessage, our_mac: MacAddress) -> bytes:
    """The answer to `request`: "target_ip is at our_mac", unicast back to the asker.

    For an RFC 5227 probe (sender 0.0.0.0) this is the defence the RFC expects: the prober sees
    the address is taken. Addressed to sender_mac (not eth_source), as the kernel's arp_send does.
    """
    return _frame(request.sender_mac, our_mac, ArpOp.REPLY, our_mac, request.target_ip,
                  request.sender_mac, request.sender_ip)


def build_gratuitous(address: IPv4Address, our_mac: MacAddress, op: ArpOp = ArpOp.REQUEST) -> bytes:
    """A broadcast announcement that `address` is now at `our_mac` (sender IP = target IP).

    RFC 5227 section 3 names the request form (target hardware address zero) the announcement, and
    Linux's neighbour code updates an existing entry from either form; some routers and older
    stacks only take the reply form. The responder therefore sends both, request first, as
    MetalLB does: one extra 42-byte frame per announcement buys failover for both kinds of client.
    """
    tha = ZERO_MAC if op == ArpOp.REQUEST else our_mac
    return _frame(BROADCAST, our_mac, op, our_mac, address, tha, address)
