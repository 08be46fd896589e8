"""ARP and NDP codecs of the LoadBalancer responder, against frames captured from the kernel.

The reference frames were captured with `tcpdump -xx` on a veth between two namespaces (2026-11-27):
arping and ndisc6 on the client side (02:00:00:00:0a:01, 10.77.0.1, fe80::ff:fe00:a01), the kernel
answering for its own configured 10.77.0.2 / fd77::2 on the other side (02:00:00:00:0b:02).
Matching the kernel byte for byte is the point: our answers must look like the kernel's own.
"""

from __future__ import annotations

import random
import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from loadbalancer import arp, ndp
from loadbalancer.responder import _parse_address, check_ifname

CLIENT_MAC = arp.MacAddress.parse("02:00:00:00:0a:01")
NODE_MAC = arp.MacAddress.parse("02:00:00:00:0b:02")

# arping 10.77.0.2 (who-has 10.77.0.2 tell 10.77.0.1), with arping's 16 bytes of padding
ARP_REQUEST = bytes.fromhex(
    "ffffffffffff 020000000a01 0806 0001 0800 06 04 0001 020000000a01 0a4d0001 000000000000 0a4d0002"
    + "00" * 16)
# the kernel's answer: 10.77.0.2 is-at 02:00:00:00:0b:02 (unpadded: the NIC pads)
KERNEL_ARP_REPLY = bytes.fromhex(
    "020000000a01 020000000b02 0806 0001 0800 06 04 0002 020000000b02 0a4d0002 020000000a01 0a4d0001")
# arping -U style announcement of 10.77.0.2 (request, sender = target, target MAC zero), padded
ARP_ANNOUNCEMENT = bytes.fromhex(
    "ffffffffffff 020000000b02 0806 0001 0800 06 04 0001 020000000b02 0a4d0002 000000000000 0a4d0002"
    + "00" * 16)

# ndisc6 fd77::2: the ICMPv6 part of the NS (fe80::ff:fe00:a01 > ff02::1:ff00:2, hop limit 255)
NS_SOURCE = IPv6Address("fe80::ff:fe00:a01")
NS = bytes.fromhex("8700 68a0 00000000 fd770000000000000000000000000002 01 01 020000000a01")
# the kernel's NA (fd77::2 > fe80::ff:fe00:a01): Solicited + Override, target link-layer address
NA_SOURCE = IPv6Address("fd77::2")
KERNEL_NA = bytes.fromhex("8800 062c 60000000 fd770000000000000000000000000002 02 01 020000000b02")
KERNEL_NA_FRAME = bytes.fromhex(
    "020000000a01 020000000b02 86dd 60000000 0020 3a ff fd770000000000000000000000000002"
    "fe800000000000000000 00fffe000a01") + KERNEL_NA


# the whole NS frame as captured: Ethernet (to 33:33:ff:00:00:02), IPv6 (hop limit 255), ICMPv6
NS_FRAME = bytes.fromhex(
    "3333ff000002 020000000a01 86dd 600a1e78 0020 3a ff fe800000000000000000 00fffe000a01"
    "ff020000000000000000 0001ff000002") + NS


def with_checksum(src: IPv6Address, dst: IPv6Address, message: bytes) -> bytes:
    zeroed = message[:2] + b"\0\0" + message[4:]
    return zeroed[:2] + struct.pack("!H", ndp.icmpv6_checksum(src, dst, zeroed)) + zeroed[4:]


def ns_frame(dst: IPv6Address, message: bytes = NS, src: IPv6Address = NS_SOURCE, hop_limit: int = 255) -> bytes:
    """NS_FRAME with another destination, message or source, checksum recomputed."""
    message = with_checksum(src, dst, message)
    return (NS_FRAME[:18] + struct.pack("!HBB", len(message), 58, hop_limit) + src.packed + dst.packed + message)


# -- reference frames are what they claim ---------------------------------------------------------

def test_checksum_agrees_with_the_kernels():
    """The kernel computed these checksums; a wrong byte in the copied capture would fail too."""
    assert ndp.icmpv6_checksum(NS_SOURCE, ndp.solicited_node_group(NA_SOURCE), NS) == 0
    assert ndp.icmpv6_checksum(NA_SOURCE, NS_SOURCE, KERNEL_NA) == 0
    assert with_checksum(NA_SOURCE, NS_SOURCE, KERNEL_NA) == KERNEL_NA
    assert ndp.icmpv6_checksum(NA_SOURCE, NS_SOURCE, KERNEL_NA[:-1]) != 0, "odd length: padded with a zero byte"


# -- ARP ------------------------------------------------------------------------------------------

def test_parse_request_from_capture():
    msg = arp.parse_frame(ARP_REQUEST)
    assert msg == arp.ArpMessage(op=arp.ArpOp.REQUEST, eth_source=CLIENT_MAC, sender_mac=CLIENT_MAC,
                                 sender_ip=IPv4Address("10.77.0.1"), target_mac=arp.ZERO_MAC,
                                 target_ip=IPv4Address("10.77.0.2"))
    assert not msg.is_probe and not msg.is_announcement


def test_reply_is_the_kernels_byte_for_byte():
    assert arp.build_reply(arp.parse_frame(ARP_REQUEST), NODE_MAC) == KERNEL_ARP_REPLY
    assert arp.parse_frame(KERNEL_ARP_REPLY).op == arp.ArpOp.REPLY


def test_gratuitous_request_is_rfc5227_announcement():
    frame = arp.build_gratuitous(IPv4Address("10.77.0.2"), NODE_MAC)
    assert frame == ARP_ANNOUNCEMENT[:arp.ARP_FRAME_LEN]
    assert arp.parse_frame(ARP_ANNOUNCEMENT).is_announcement


def test_gratuitous_reply_form():
    msg = arp.parse_frame(arp.build_gratuitous(IPv4Address("10.77.0.2"), NODE_MAC, arp.ArpOp.REPLY))
    assert (msg.op, msg.eth_source, msg.sender_mac, msg.target_mac) == (arp.ArpOp.REPLY, NODE_MAC, NODE_MAC, NODE_MAC)
    assert msg.sender_ip == msg.target_ip == IPv4Address("10.77.0.2")
    assert arp.build_gratuitous(IPv4Address("10.77.0.2"), NODE_MAC, arp.ArpOp.REPLY)[:6] == b"\xff" * 6


def test_probe_is_answered_to_the_prober():
    probe = ARP_REQUEST[:28] + b"\0\0\0\0" + ARP_REQUEST[32:]  # sender IP 0.0.0.0 (arping -0, RFC 5227 probe)
    msg = arp.parse_frame(probe)
    assert msg.is_probe and not msg.is_announcement
    reply = arp.parse_frame(arp.build_reply(msg, NODE_MAC))
    assert (reply.target_mac, reply.target_ip, reply.sender_ip) == (CLIENT_MAC, IPv4Address(0), msg.target_ip)


@pytest.mark.parametrize("length", range(arp.ARP_FRAME_LEN))
def test_truncated_arp_frames(length):
    with pytest.raises(ValueError):
        arp.parse_frame(ARP_REQUEST[:length])


@pytest.mark.parametrize("offset,value,what", [
    (12, b"\x86\xdd", "ethertype"),
    (14, b"\x00\x06", "htype"),
    (16, b"\x86\xdd", "ptype"),
    (18, b"\x08", "hlen"),
    (19, b"\x10", "plen"),
    (20, b"\x00\x03", "op"),
    (20, b"\x00\x00", "op"),
    (22, b"\x01\x00\x5e\x00\x00\x01", "multicast sender"),
    (22, b"\xff" * 6, "broadcast sender"),
])
def test_malformed_arp_frames(offset, value, what):
    frame = ARP_REQUEST[:offset] + value + ARP_REQUEST[offset + len(value):]
    with pytest.raises(ValueError):
        arp.parse_frame(frame)


def test_arp_fuzz_raises_only_valueerror():
    rnd = random.Random(14)
    for _ in range(20000):
        frame = bytearray(ARP_REQUEST[:rnd.randrange(0, 70)])
        for _ in range(rnd.randrange(0, 4)):
            if frame:
                frame[rnd.randrange(len(frame))] = rnd.randrange(256)
        try:
            arp.parse_frame(bytes(frame))
        except ValueError:
            pass


def test_mac_address():
    assert str(arp.MacAddress.parse("02:00:00:00:0A:01")) == "02:00:00:00:0a:01"
    for bad in ("", "02:00:00:00:0a", "02:00:00:00:0a:01:02", "0g:00:00:00:0a:01", "2:00:00:00:0a:01:",
                "02-00-00-00-0a-01", " +1:00:00:00:0a:01"):
        with pytest.raises(ValueError):
            arp.MacAddress.parse(bad)
    with pytest.raises(ValueError):
        arp.MacAddress(b"\0" * 5)
    assert arp.BROADCAST.is_multicast and not NODE_MAC.is_multicast


# -- NDP ------------------------------------------------------------------------------------------

def test_parse_solicitation_from_capture():
    ns = ndp.parse_solicitation(NS, NS_SOURCE, 255)
    assert ns == ndp.NeighborSolicitation(source=NS_SOURCE, target=IPv6Address("fd77::2"), source_lladdr=CLIENT_MAC)
    assert not ns.is_dad


def test_parse_frame_from_capture():
    received = ndp.parse_solicitation_frame(NS_FRAME)
    assert received == ndp.SolicitationFrame(eth_source=CLIENT_MAC, destination=IPv6Address("ff02::1:ff00:2"),
                                             solicitation=ndp.parse_solicitation(NS, NS_SOURCE, 255))
    assert ndp.parse_solicitation_frame(NS_FRAME + b"\0" * 14) == received, "Ethernet padding is ignored"


def test_unicast_probe_frame():
    """A reachability probe goes to the target itself (RFC 4861 7.3.3): accepted."""
    received = ndp.parse_solicitation_frame(ns_frame(IPv6Address("fd77::2")))
    assert received.destination == received.solicitation.target == IPv6Address("fd77::2")


@pytest.mark.parametrize("length", range(len(NS_FRAME)))
def test_truncated_ns_frames(length):
    with pytest.raises(ValueError):
        ndp.parse_solicitation_frame(NS_FRAME[:length])


@pytest.mark.parametrize("frame,what", [
    (NS_FRAME[:12] + b"\x08\x00" + NS_FRAME[14:], "ethertype"),
    (NS_FRAME[:14] + b"\x40" + NS_FRAME[15:], "IP version"),
    (NS_FRAME[:20] + b"\x00" + NS_FRAME[21:], "hop-by-hop extension header"),
    (NS_FRAME[:18] + b"\x00\x21" + NS_FRAME[20:], "payload length past the frame"),
    (NS_FRAME[:-1] + b"\x02", "checksum"),
    (NS_FRAME[:18] + b"\x00\x18" + NS_FRAME[20:], "payload length cuts the option: checksum"),
    (ns_frame(IPv6Address("ff02::1")), "to all-nodes"),
    (ns_frame(IPv6Address("ff02::1:ff00:3")), "to another target's group"),
    (ns_frame(IPv6Address("fd77::3")), "unicast to another address"),
    (ns_frame(IPv6Address("fd77::2"), NS[:24], IPv6Address("::")), "DAD probe not to the group"),
    (ns_frame(IPv6Address("ff02::1:ff00:2"), hop_limit=64), "hop limit"),
])
def test_malformed_ns_frames(frame, what):
    with pytest.raises(ValueError):
        ndp.parse_solicitation_frame(frame)


def test_ns_frame_fuzz_raises_only_valueerror():
    rnd = random.Random(14)
    for _ in range(20000):
        frame = bytearray(NS_FRAME[:rnd.randrange(0, len(NS_FRAME) + 10)])
        for _ in range(rnd.randrange(0, 4)):
            if frame:
                frame[rnd.randrange(len(frame))] = rnd.randrange(256)
        try:
            ndp.parse_solicitation_frame(bytes(frame))
        except ValueError:
            pass


def test_solicited_advertisement_is_the_kernels_but_for_the_checksum():
    dst, message = ndp.reply_to(ndp.parse_solicitation(NS, NS_SOURCE, 255), NODE_MAC)
    assert dst == NS_SOURCE
    assert message[2:4] == b"\0\0", "the message alone has no checksum: ipv6_frame computes it"
    assert message == KERNEL_NA[:2] + b"\0\0" + KERNEL_NA[4:]
    assert with_checksum(NA_SOURCE, NS_SOURCE, message) == KERNEL_NA


def test_reply_frame_is_the_kernels_byte_for_byte():
    """Ethernet and IPv6 headers, source address, hop limit, checksum: all as the kernel sends."""
    assert ndp.reply_frame(ndp.parse_solicitation_frame(NS_FRAME), NODE_MAC) == KERNEL_NA_FRAME


def test_reply_frame_without_lladdr_option_goes_to_the_ethernet_source():
    probe = ns_frame(IPv6Address("fd77::2"), NS[:24])  # a reachability probe may leave the option out
    frame = ndp.reply_frame(ndp.parse_solicitation_frame(probe), NODE_MAC)
    assert frame[:6] == CLIENT_MAC.octets and frame[6:12] == NODE_MAC.octets


def test_dad_reply_frame_goes_to_all_nodes():
    dad = ns_frame(ndp.solicited_node_group(IPv6Address("fd77::2")), NS[:24], IPv6Address("::"))
    frame = ndp.reply_frame(ndp.parse_solicitation_frame(dad), NODE_MAC)
    assert frame[:6] == bytes.fromhex("333300000001")
    assert IPv6Address(frame[38:54]) == ndp.ALL_NODES and frame[21] == 255
    assert ndp.icmpv6_checksum(IPv6Address(frame[22:38]), ndp.ALL_NODES, frame[54:]) == 0


def test_unsolicited_frame():
    frame = ndp.unsolicited_frame(IPv6Address("fd77::2"), NODE_MAC)
    assert frame[:14] == bytes.fromhex("333300000001 020000000b02 86dd")
    assert frame[14:54] == bytes.fromhex("60000000 0020 3a ff") + IPv6Address("fd77::2").packed + ndp.ALL_NODES.packed
    assert frame[54:] == with_checksum(IPv6Address("fd77::2"), ndp.ALL_NODES, ndp.build_unsolicited(
        IPv6Address("fd77::2"), NODE_MAC)[1])
    assert ndp.multicast_mac(IPv6Address("ff02::1:ff00:2")) == arp.MacAddress.parse("33:33:ff:00:00:02")


def test_dad_probe_is_answered_to_all_nodes_unsolicited():
    ns = ndp.parse_solicitation(NS[:24], IPv6Address("::"), 255)  # DAD: source ::, no lladdr option
    assert ns.is_dad and ns.source_lladdr is None
    dst, message = ndp.reply_to(ns, NODE_MAC)
    assert dst == ndp.ALL_NODES
    assert message[4] == 0x20, "Override only: a multicast NA must not claim Solicited"


def test_unsolicited_advertisement():
    dst, message = ndp.build_unsolicited(IPv6Address("fd77::2"), NODE_MAC)
    assert dst == IPv6Address("ff02::1")
    assert message == bytes.fromhex("8800 0000 20000000 fd770000000000000000000000000002 0201 020000000b02")


def test_solicited_node_group():
    # RFC 4291 2.7.1's example
    assert ndp.solicited_node_group(IPv6Address("4037::1:800:200e:8c6c")) == IPv6Address("ff02::1:ff0e:8c6c")
    assert ndp.solicited_node_group(IPv6Address("fd77::2")) == IPv6Address("ff02::1:ff00:2")  # as captured
    assert ndp.solicited_node_group(IPv6Address("fd77::100")) == ndp.solicited_node_group(IPv6Address("fd77:1::100"))


@pytest.mark.parametrize("length", range(24))
def test_truncated_solicitations(length):
    with pytest.raises(ValueError):
        ndp.parse_solicitation(NS[:length], NS_SOURCE, 255)


@pytest.mark.parametrize("message,source,hop_limit,what", [
    (NS, NS_SOURCE, 64, "hop limit: forwarded by a router"),
    (NS, NS_SOURCE, 254, "hop limit"),
    (b"\x88" + NS[1:], NS_SOURCE, 255, "type"),
    (NS[:1] + b"\x01" + NS[2:], NS_SOURCE, 255, "code"),
    (NS[:8] + IPv6Address("ff02::1").packed + NS[24:], NS_SOURCE, 255, "multicast target"),
    (NS, IPv6Address("ff02::1"), 255, "multicast source"),
    (NS, IPv6Address("::"), 255, "DAD with a link-layer address"),
    (NS[:24] + b"\x01\x00" + NS[26:], NS_SOURCE, 255, "option of length 0"),
    (NS[:24] + b"\x01\x02" + NS[26:], NS_SOURCE, 255, "option past the end"),
    (NS[:24] + b"\x01\x02" + NS[26:] + b"\0" * 8, NS_SOURCE, 255, "source lladdr of 16 bytes"),
    (NS + b"\x05", NS_SOURCE, 255, "truncated option header"),
])
def test_malformed_solicitations(message, source, hop_limit, what):
    with pytest.raises(ValueError):
        ndp.parse_solicitation(message, source, hop_limit)


def test_unknown_options_are_skipped():
    nonce = b"\x0e\x01" + b"\x11" * 6  # RFC 7527 nonce option
    ns = ndp.parse_solicitation(NS[:24] + nonce + NS[24:], NS_SOURCE, 255)
    assert ns.source_lladdr == CLIENT_MAC
    assert ndp.parse_solicitation(NS, NS_SOURCE, None).target == IPv6Address("fd77::2")  # no hop limit reported


def test_ndp_fuzz_raises_only_valueerror():
    rnd = random.Random(14)
    for _ in range(20000):
        message = bytearray((NS + NS[24:])[:rnd.randrange(0, 50)])
        for _ in range(rnd.randrange(0, 4)):
            if message:
                message[rnd.randrange(len(message))] = rnd.randrange(256)
        try:
            ndp.parse_solicitation(bytes(message), NS_SOURCE, rnd.choice((255, 255, 64, None)))
        except ValueError:
            pass


# -- responder input ------------------------------------------------------------------------------

def test_interface_names():
    assert check_ifname("eth0") == "eth0"
    for bad in ("", "a" * 16, "../x", "a/b", "eth 0", "eth0\0", ".", "..", "eth0:1"):
        with pytest.raises(ValueError):
            check_ifname(bad)


def test_addresses_a_responder_may_hold():
    assert _parse_address("10.0.0.1") == IPv4Address("10.0.0.1")
    assert _parse_address(IPv6Address("2001:db8::1")) == IPv6Address("2001:db8::1")
    for bad in ("224.0.0.1", "0.0.0.0", "127.0.0.1", "169.254.1.1", "::", "::1", "fe80::1", "ff02::1",
                "2001:db8::1%eth0", "10.0.0.256", "10.0.0.1/32", "", "example.com", None, 3):
        with pytest.raises(ValueError):
            _parse_address(bad)
