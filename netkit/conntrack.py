"""Conntrack entries over ctnetlink, in any network namespace: list them, delete them by tuple.

The one home of podwire's netlink conntrack code, shared by the policy cleaner (flows a policy
change denies) and the proxy's (UDP flows to endpoints that went away). It rides on netkit.rtnl's
batched, acknowledged exchange, so it costs no pyroute2 import. Why netlink: `conntrack -D` walks
the whole table per call (488 deletions among 1,000 entries took 7-10 s), and one process per
deletion adds ~5 ms each; a delete by original tuple is one hash lookup, and a listing is one dump.

Entries are deleted by their original tuple in zone 0: the kernel looks the tuple up, so no other
entry can match; an entry that ended meanwhile (ENOENT) is not an error.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Iterable, Union

from netkit import rtnl
from netkit.netns import open_netns, setns
from netkit.rtnl import nla, nla_nested, parse_attrs

Addr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h
NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
CT_GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
CT_DELETE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_FILTER = 1, 2, 25
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
F_IP_SRC, F_IP_DST, F_PROTO_NUM, F_PROTO_SRC_PORT, F_PROTO_DST_PORT = 1 << 0, 1 << 1, 1 << 3, 1 << 4, 1 << 5
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE = 4, 5, 6
CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE = 7, 8, 9

ICMP, TCP, UDP, ICMPV6, SCTP = 1, 6, 17, 58, 132
PROTO_NUMBERS = {"icmp": ICMP, "tcp": TCP, "udp": UDP, "icmpv6": ICMPV6, "sctp": SCTP}
_PORTS = (TCP, UDP, SCTP)
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_ADDR_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address)


@dataclass(frozen=True)
class Tuple:
    """One direction of an entry. `sport`/`dport` for tcp/udp/sctp (else 0); `icmp` = (type, code,
    id) for icmp/icmpv6."""
    proto: int
    src: Addr
    dst: Addr
    sport: int = 0
    dport: int = 0
    icmp: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if type(self.proto) is not int or not 0 <= self.proto <= 255:
            raise ValueError(f"protocol {self.proto!r:.20} is not 0-255")
        if type(self.src) not in _ADDR_TYPES or type(self.dst) not in _ADDR_TYPES \
                or self.src.version != self.dst.version:
            raise ValueError(f"tuple addresses {self.src!r:.60}, {self.dst!r:.60} are not one family's")
        for p in (self.sport, self.dport):
            if type(p) is not int or not 0 <= p <= 65535:
                raise ValueError(f"port {p!r:.20} is not an integer 0-65535")
        if self.icmp is not None and (len(self.icmp) != 3 or any(type(v) is not int for v in self.icmp)
                                      or not (0 <= self.icmp[0] <= 255 and 0 <= self.icmp[1] <= 255
                                              and 0 <= self.icmp[2] <= 65535)):
            raise ValueError(f"icmp fields {self.icmp!r:.40} are not (type 0-255, code 0-255, id 0-65535)")

    def attrs(self, kind: int = CTA_TUPLE_ORIG) -> bytes:
        v6 = self.src.version == 6
        ip = nla_nested(CTA_TUPLE_IP, nla(CTA_IP_V6_SRC if v6 else CTA_IP_V4_SRC, self.src.packed),
                        nla(CTA_IP_V6_DST if v6 else CTA_IP_V4_DST, self.dst.packed))
        l4 = [nla(CTA_PROTO_NUM, struct.pack("B", self.proto))]
        if self.icmp is not None:
            i, t, c = (CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE) if v6 else \
                (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
            l4 += [nla(i, struct.pack("!H", self.icmp[2])), nla(t, struct.pack("B", self.icmp[0])),
                   nla(c, struct.pack("B", self.icmp[1]))]
        elif self.proto in _PORTS:
            l4 += [nla(CTA_PROTO_SRC_PORT, struct.pack("!H", self.sport)),
                   nla(CTA_PROTO_DST_PORT, struct.pack("!H", self.dport))]
        return nla_nested(kind, ip, nla_nested(CTA_TUPLE_PROTO, *l4))

    def delete_message(self) -> bytes:
        """The body of a ctnetlink delete of exactly the entry with this original tuple."""
        nfgen = struct.pack("=BBH", _FAMILY[self.src.version], 0, 0)
        return nfgen + self.attrs(CTA_TUPLE_ORIG)


@dataclass(frozen=True)
class Entry:
    """One conntrack entry: its original tuple and its reply tuple (after NAT: the reply's source
    is where the flow really goes)."""
    orig: Tuple
    reply: Tuple


def _parse_tuple(raw: bytes) -> Tuple:
    a = parse_attrs(raw)
    ip, l4 = parse_attrs(a[CTA_TUPLE_IP]), parse_attrs(a[CTA_TUPLE_PROTO])
    src: Addr
    dst: Addr
    if CTA_IP_V4_SRC in ip:
        src, dst = ipaddress.IPv4Address(ip[CTA_IP_V4_SRC]), ipaddress.IPv4Address(ip[CTA_IP_V4_DST])
    else:
        src, dst = ipaddress.IPv6Address(ip[CTA_IP_V6_SRC]), ipaddress.IPv6Address(ip[CTA_IP_V6_DST])
    proto = l4[CTA_PROTO_NUM][0]
    if proto in _PORTS:
        return Tuple(proto, src, dst, struct.unpack("!H", l4[CTA_PROTO_SRC_PORT])[0],
                     struct.unpack("!H", l4[CTA_PROTO_DST_PORT])[0])
    keys = (CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE, CTA_PROTO_ICMP_ID) if proto == ICMP else \
        (CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE, CTA_PROTO_ICMPV6_ID) if proto == ICMPV6 else None
    if keys and all(k in l4 for k in keys):
        return Tuple(proto, src, dst, icmp=(l4[keys[0]][0], l4[keys[1]][0], struct.unpack("!H", l4[keys[2]])[0]))
    return Tuple(proto, src, dst)  # gre and others: addresses only


def parse_entry(body: bytes) -> Entry:
    """One IPCTNL_MSG_CT_NEW message body (nfgenmsg + attributes); ValueError when malformed."""
    try:
        a = parse_attrs(body, 4)
        return Entry(_parse_tuple(a[CTA_TUPLE_ORIG]), _parse_tuple(a[CTA_TUPLE_REPLY]))
    except (KeyError, IndexError, struct.error, ipaddress.AddressValueError) as e:
        raise ValueError(f"malformed conntrack entry: {type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class Filter:
    """Which entries a listing returns: one family and protocol, with this original destination and
    destination port, and this reply source and source port (after DNAT: the endpoint); None is
    any. The kernel applies it during the dump (CTA_FILTER, Linux >= 5.8), and `find` checks it
    again, so a kernel that ignores the attribute only makes the listing slower, never wider."""
    family: int
    proto: int
    dst: Addr | None = None
    dport: int | None = None
    reply_src: Addr | None = None
    reply_sport: int | None = None

    def __post_init__(self) -> None:
        if self.family not in _FAMILY or self.proto not in _PORTS:
            raise ValueError(f"filter family {self.family!r:.10} / protocol {self.proto!r:.10} not supported")
        for a in (self.dst, self.reply_src):
            if a is not None and (type(a) not in _ADDR_TYPES or a.version != self.family):
                raise ValueError(f"filter address {a!r:.60} is not an IPv{self.family} address")
        for p in (self.dport, self.reply_sport):
            if p is not None and (type(p) is not int or not 0 <= p <= 65535):
                raise ValueError(f"filter port {p!r:.20} is not an integer 0-65535")

    def matches(self, e: Entry) -> bool:
        o, r = e.orig, e.reply
        return o.proto == self.proto and o.src.version == self.family \
            and (self.dst is None or o.dst == self.dst) and (self.dport is None or o.dport == self.dport) \
            and (self.reply_src is None or r.src == self.reply_src) \
            and (self.reply_sport is None or r.sport == self.reply_sport)

    def _tuple(self, kind: int, addr_kind: int, addr: Addr | None, port_kind: int,
               port: int | None) -> tuple[bytes, int]:
        flags, ip, l4 = F_PROTO_NUM, b"", [nla(CTA_PROTO_NUM, struct.pack("B", self.proto))]
        if addr is not None:
            ip = nla_nested(CTA_TUPLE_IP, nla(addr_kind + (2 if self.family == 6 else 0), addr.packed))
            flags |= F_IP_DST if addr_kind == CTA_IP_V4_DST else F_IP_SRC
        if port is not None:
            l4.append(nla(port_kind, struct.pack("!H", port)))
            flags |= F_PROTO_DST_PORT if port_kind == CTA_PROTO_DST_PORT else F_PROTO_SRC_PORT
        return nla_nested(kind, ip, nla_nested(CTA_TUPLE_PROTO, *l4)), flags

    def request(self) -> bytes:
        """The body of a filtered dump request. IPv6 addresses are left to `find`'s own check: the
        kernel's IPv6 address filter is inverted (ctnetlink_filter_match_tuple tests
        `!ipv6_addr_cmp()`, so it passes only entries whose address *differs*; seen on 6.18), and
        sending it hid every stale IPv6 flow from the proxy's cleanup. The ports still narrow the dump."""
        v4 = self.family == 4
        orig, oflags = self._tuple(CTA_TUPLE_ORIG, CTA_IP_V4_DST, self.dst if v4 else None, CTA_PROTO_DST_PORT,
                                   self.dport)
        reply, rflags = self._tuple(CTA_TUPLE_REPLY, CTA_IP_V4_SRC, self.reply_src if v4 else None,
                                    CTA_PROTO_SRC_PORT, self.reply_sport)
        flt = nla_nested(CTA_FILTER, nla(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", oflags)),
                         nla(CTA_FILTER_REPLY_FLAGS, struct.pack("=I", rflags)))
        return struct.pack("=BBH", _FAMILY[self.family], 0, 0) + orig + reply + flt


class CtnlSocket(rtnl.RtnlSocket):
    """netkit's batched, acknowledged netlink exchange over a NETLINK_NETFILTER socket."""

    def __init__(self, sock: socket.socket):  # not super().__init__: that opens a NETLINK_ROUTE socket
        self._sock = sock
        self._seq = 0
        self._strict = False


def netfilter_socket(netns_path: str | None = None) -> socket.socket:
    """A NETLINK_NETFILTER socket in `netns_path`'s namespace (ours when None). A socket keeps the
    namespace it was made in; the setns happens in a thread of its own that ends right after, so no
    thread that runs anything else ever changes namespace."""
    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            s.setsockopt(rtnl.SOL_NETLINK, rtnl.NETLINK_CAP_ACK, 1)
            s.bind((0, 0))
        except OSError:
            s.close()
            raise
        return s
    if netns_path is None:
        return make()
    box: dict[str, object] = {}

    def enter_and_make() -> None:
        try:
            fd = open_netns(netns_path)
            try:
                setns(fd)
            finally:
                os.close(fd)
            box["sock"] = make()
        except Exception as e:
            box["error"] = e
    t = threading.Thread(target=enter_and_make, name="ctnl-netns")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["sock"]  # type: ignore[return-value]


def list_entries(netns_path: str | None = None, family: int | None = None) -> tuple[list[Entry], int]:
    """(entries, malformed count) of the conntrack table, of one IP family (4 | 6) or both."""
    entries, bad = [], 0
    with CtnlSocket(netfilter_socket(netns_path)) as ct:
        for fam in ((family,) if family else (4, 6)):
            for body in ct.dump(CT_GET, struct.pack("=BBH", _FAMILY[fam], 0, 0)):
                try:
                    entries.append(parse_entry(body))
                except ValueError:
                    bad += 1
    return entries, bad


def find(filters: Iterable[Filter], netns_path: str | None = None) -> list[Entry]:
    """The entries any of `filters` matches: one filtered dump each (the kernel walks its table,
    Python parses only what matched), checked again here; each entry once."""
    found: dict[Tuple, Entry] = {}
    with CtnlSocket(netfilter_socket(netns_path)) as ct:
        for f in filters:
            for body in ct.dump(CT_GET, f.request()):
                try:
                    e = parse_entry(body)
                except ValueError:
                    continue
                if f.matches(e):
                    found.setdefault(e.orig, e)
    return list(found.values())


def delete(tuples: Iterable[Tuple], netns_path: str | None = None) -> int:
    """Deletes the entry of each original tuple, in batches of acknowledged requests; returns how
    many the kernel deleted (an entry that ended meanwhile, ENOENT, is not counted)."""
    with CtnlSocket(netfilter_socket(netns_path)) as ct:
        batch = ct.batch()
        for t in tuples:
            batch.add("conntrack delete", CT_DELETE, 0, t.delete_message(), tolerate=(errno.ENOENT,))
        return sum(1 for err in batch.commit() if err == 0)
