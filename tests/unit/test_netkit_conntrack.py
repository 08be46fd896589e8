"""netkit.conntrack, pure parts: the ctnetlink wire format of tuples, entries and deletes."""
from __future__ import annotations

import ipaddress
import struct

import pytest

from netkit import conntrack as ctnl
from netkit.rtnl import parse_attrs

ip = ipaddress.ip_address


def entry_message(orig: ctnl.Tuple, reply: ctnl.Tuple) -> bytes:
    """What the kernel sends for an entry (the parts we read): nfgenmsg + both tuples."""
    return struct.pack("=BBH", 2 if orig.src.version == 4 else 10, 0, 0) + orig.attrs(ctnl.CTA_TUPLE_ORIG) \
        + reply.attrs(ctnl.CTA_TUPLE_REPLY) + b"\x08\x00\x03\x00\x00\x00\x00\x08"  # a CTA_STATUS we skip


@pytest.mark.parametrize("orig, reply", [
    (ctnl.Tuple(17, ip("10.0.1.2"), ip("10.96.0.10"), 40000, 53),
     ctnl.Tuple(17, ip("10.0.2.2"), ip("10.0.1.2"), 8080, 40000)),
    (ctnl.Tuple(6, ip("fd00:1::2"), ip("fd00:96::10"), 1, 65535),
     ctnl.Tuple(6, ip("fd00:2::2"), ip("fd00:1::2"), 65535, 1)),
    (ctnl.Tuple(1, ip("10.0.1.2"), ip("10.0.2.2"), icmp=(8, 0, 4242)),
     ctnl.Tuple(1, ip("10.0.2.2"), ip("10.0.1.2"), icmp=(0, 0, 4242))),
    (ctnl.Tuple(58, ip("fd00:1::2"), ip("fd00:2::2"), icmp=(128, 0, 7)),
     ctnl.Tuple(58, ip("fd00:2::2"), ip("fd00:1::2"), icmp=(129, 0, 7))),
    (ctnl.Tuple(47, ip("10.0.1.2"), ip("10.0.2.2")), ctnl.Tuple(47, ip("10.0.2.2"), ip("10.0.1.2"))),  # gre
])
def test_an_entry_round_trips_through_the_wire_format(orig, reply):
    assert ctnl.parse_entry(entry_message(orig, reply)) == ctnl.Entry(orig, reply)


def test_a_delete_names_exactly_the_original_tuple():
    t = ctnl.Tuple(17, ip("10.0.1.2"), ip("10.96.0.10"), 40000, 53)
    body = t.delete_message()
    assert body[:4] == struct.pack("=BBH", 2, 0, 0)
    attrs = parse_attrs(body, 4)
    assert set(attrs) == {ctnl.CTA_TUPLE_ORIG}
    l4 = parse_attrs(parse_attrs(attrs[ctnl.CTA_TUPLE_ORIG])[ctnl.CTA_TUPLE_PROTO])
    assert l4 == {ctnl.CTA_PROTO_NUM: b"\x11", ctnl.CTA_PROTO_SRC_PORT: struct.pack("!H", 40000),
                  ctnl.CTA_PROTO_DST_PORT: struct.pack("!H", 53)}


@pytest.mark.parametrize("body", [b"", b"\x02\x00\x00\x00", b"\x02\x00\x00\x00\x08\x00\x01\x80\x00\x00\x00\x00",
                                  entry_message(ctnl.Tuple(17, ip("10.0.0.1"), ip("10.0.0.2"), 1, 2),
                                                ctnl.Tuple(17, ip("10.0.0.2"), ip("10.0.0.1"), 2, 1))[:40]])
def test_a_malformed_entry_is_a_value_error_not_a_traceback(body):
    with pytest.raises(ValueError):
        ctnl.parse_entry(body)


@pytest.mark.parametrize("kwargs", [
    {"proto": 256, "src": ip("10.0.0.1"), "dst": ip("10.0.0.2")},
    {"proto": 17, "src": "10.0.0.1", "dst": ip("10.0.0.2")},
    {"proto": 17, "src": ip("10.0.0.1"), "dst": ip("fd00::2")},
    {"proto": 17, "src": ip("10.0.0.1"), "dst": ip("10.0.0.2"), "sport": 65536},
    {"proto": 17, "src": ip("10.0.0.1"), "dst": ip("10.0.0.2"), "dport": True},
    {"proto": 1, "src": ip("10.0.0.1"), "dst": ip("10.0.0.2"), "icmp": (8, 0, 70000)},
])
def test_a_tuple_refuses_values_the_kernel_could_not_mean(kwargs):
    with pytest.raises(ValueError):
        ctnl.Tuple(**kwargs)


def test_a_filter_asks_the_kernel_for_exactly_its_fields():
    f = ctnl.Filter(4, ctnl.UDP, ip("10.96.0.10"), 53, ip("10.244.1.5"), 8080)
    body = f.request()
    assert body[:4] == struct.pack("=BBH", 2, 0, 0)
    a = parse_attrs(body, 4)
    flt = parse_attrs(a[ctnl.CTA_FILTER])
    flags = {k: struct.unpack("=I", v)[0] for k, v in flt.items()}
    assert flags == {ctnl.CTA_FILTER_ORIG_FLAGS: ctnl.F_PROTO_NUM | ctnl.F_IP_DST | ctnl.F_PROTO_DST_PORT,
                     ctnl.CTA_FILTER_REPLY_FLAGS: ctnl.F_PROTO_NUM | ctnl.F_IP_SRC | ctnl.F_PROTO_SRC_PORT}
    orig = parse_attrs(a[ctnl.CTA_TUPLE_ORIG])
    assert parse_attrs(orig[ctnl.CTA_TUPLE_IP]) == {ctnl.CTA_IP_V4_DST: ip("10.96.0.10").packed}
    assert parse_attrs(orig[ctnl.CTA_TUPLE_PROTO]) == {ctnl.CTA_PROTO_NUM: b"\x11",
                                                      ctnl.CTA_PROTO_DST_PORT: b"\x00\x35"}
    reply = parse_attrs(a[ctnl.CTA_TUPLE_REPLY])
    assert parse_attrs(reply[ctnl.CTA_TUPLE_IP]) == {ctnl.CTA_IP_V4_SRC: ip("10.244.1.5").packed}
    any_dst = parse_attrs(ctnl.Filter(6, ctnl.UDP, None, 30053).request(), 4)
    assert struct.unpack("=I", parse_attrs(any_dst[ctnl.CTA_FILTER])[ctnl.CTA_FILTER_ORIG_FLAGS])[0] == \
        ctnl.F_PROTO_NUM | ctnl.F_PROTO_DST_PORT
    # IPv6 addresses stay out of the kernel's filter (it inverts them): ports and protocol only
    v6 = parse_attrs(ctnl.Filter(6, ctnl.UDP, ip("fd00::1"), 1, ip("fd00::2"), 2).request(), 4)
    assert ctnl.CTA_TUPLE_IP not in parse_attrs(v6[ctnl.CTA_TUPLE_ORIG])
    assert ctnl.CTA_TUPLE_IP not in parse_attrs(v6[ctnl.CTA_TUPLE_REPLY])
    v6_flags = {k: struct.unpack("=I", v)[0] for k, v in parse_attrs(v6[ctnl.CTA_FILTER]).items()}
    assert v6_flags == {ctnl.CTA_FILTER_ORIG_FLAGS: ctnl.F_PROTO_NUM | ctnl.F_PROTO_DST_PORT,
                        ctnl.CTA_FILTER_REPLY_FLAGS: ctnl.F_PROTO_NUM | ctnl.F_PROTO_SRC_PORT}


@pytest.mark.parametrize("args", [(5, ctnl.UDP), (4, ctnl.ICMP), (4, ctnl.UDP, ip("fd00::1")),
                                  (4, ctnl.UDP, "10.0.0.1"), (4, ctnl.UDP, None, 70000)])
def test_a_filter_refuses_what_it_cannot_mean(args):
    with pytest.raises(ValueError):
        ctnl.Filter(*args)
