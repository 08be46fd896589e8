"""A small rtnetlink client for the CNI plugin's hot path.

Why not pyroute2 here: importing pyroute2 costs ~140 ms per process on these machines and the plugin
runs once per pod; the plugin needs only a dozen message shapes (links, addresses, routes, bridge port
flags), which this module encodes with `struct`. The long-lived node daemon uses pyroute2.

Requests are batched: `Batch` packs several messages into one sendmsg and reads every ACK, so a pod's
whole container-side setup is one round trip. A batch larger than the socket's receive buffer can hold
ACKs for goes out in chunks (the kernel drops ACKs that do not fit and the reader gets ENOBUFS).
"""

# _socket, not socket: socket.py builds enums and imports selectors (~3 ms at every plugin start)
import _socket as socket
import errno
import os
import struct

# message types
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3

# flags
F_REQUEST, F_MULTI, F_ACK = 0x1, 0x2, 0x4
F_DUMP = 0x300
F_REPLACE, F_EXCL, F_CREATE = 0x100, 0x200, 0x400

AF_UNSPEC, AF_INET, AF_BRIDGE, AF_INET6 = 0, 2, 7, 10
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK = 270, 10, 12
SOL_SOCKET, SO_RCVBUF = 1, 8
IFF_UP = 0x1
NLA_F_NESTED = 0x8000

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_PROTINFO, IFLA_LINKINFO, IFLA_NET_NS_FD = 12, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4  # hairpin
IFLA_BR_NF_CALL_IPTABLES, IFLA_BR_NF_CALL_IP6TABLES = 36, 37

IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02

RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_METRICS, RTA_TABLE = 1, 4, 5, 6, 8, 15
RTAX_MTU, RTAX_ADVMSS = 2, 8
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254
RTN_UNICAST = 1

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLA = struct.Struct("=HH")


class NetlinkError(OSError):
    """A negative ACK from the kernel; `errno` is the kernel's errno, `request` names what failed."""

    def __init__(self, err: int, request: str):
        super().__init__(err, f"{request}: {os.strerror(err)}")
        self.request = request


def _align(n: int) -> int:
    return (n + 3) & ~3


def nla(kind: int, payload: bytes) -> bytes:
    raw = _NLA.pack(_NLA.size + len(payload), kind) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def nla_str(kind: int, text: str) -> bytes:
    return nla(kind, text.encode() + b"\0")


def nla_u32(kind: int, value: int) -> bytes:
    return nla(kind, struct.pack("=I", value))


def nla_nested(kind: int, *children: bytes) -> bytes:
    return nla(kind | NLA_F_NESTED, b"".join(children))


def parse_attrs(data: bytes, offset: int = 0) -> dict:
    """Top-level attributes of a message body as {type: raw payload} (nested flag stripped)."""
    attrs = {}
    end = len(data)
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4:
            break
        attrs[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += _align(length)
    return attrs


def ifinfo(index: int = 0, flags: int = 0, change: int = 0, family: int = AF_UNSPEC) -> bytes:
    return _IFINFO.pack(family, 0, index, flags, change)


class Link:
    """What the plugin needs to know about a link."""

    __slots__ = ("index", "name", "flags", "mtu", "mac", "master", "kind")

    def __init__(self, index, name, flags, mtu, mac, master, kind):
        self.index, self.name, self.flags, self.mtu = index, name, flags, mtu
        self.mac, self.master, self.kind = mac, master, kind

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


def _decode_link(body: bytes) -> Link:
    _family, _type, index, flags, _change = _IFINFO.unpack_from(body)
    a = parse_attrs(body, _IFINFO.size)
    kind = None
    if IFLA_LINKINFO in a:
        info = parse_attrs(a[IFLA_LINKINFO])
        if IFLA_INFO_KIND in info:
            kind = info[IFLA_INFO_KIND].rstrip(b"\0").decode()
    mac = ":".join(f"{b:02x}" for b in a[IFLA_ADDRESS]) if IFLA_ADDRESS in a else ""
    return Link(
        index,
        a.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
        flags,
        struct.unpack("=I", a[IFLA_MTU])[0] if IFLA_MTU in a else 0,
        mac,
        struct.unpack("=I", a[IFLA_MASTER])[0] if IFLA_MASTER in a else 0,
        kind,
    )


class Addr:
    __slots__ = ("family", "prefixlen", "index", "address")

    def __init__(self, family, prefixlen, index, address):
        self.family, self.prefixlen, self.index, self.address = family, prefixlen, index, address


class Route:
    __slots__ = ("family", "dst", "dst_len", "gateway", "oif", "table", "scope", "protocol")

    def __init__(self, family, dst, dst_len, gateway, oif, table, scope, protocol):
        self.family, self.dst, self.dst_len, self.gateway = family, dst, dst_len, gateway
        self.oif, self.table, self.scope, self.protocol = oif, table, scope, protocol


def _ip_text(family: int, raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if family == AF_INET6 else socket.AF_INET, raw)


def _ip_bytes(text: str) -> tuple[int, bytes]:
    if ":" in text:
        return AF_INET6, socket.inet_pton(socket.AF_INET6, text)
    return AF_INET, socket.inet_pton(socket.AF_INET, text)


# Batches up to this many messages go out in one sendmsg without asking the socket anything.
_SMALL_BATCH = 64
# What one queued ACK costs in the receive buffer (skb truesize; measured ~830 bytes on 6.x kernels),
# with room to spare.
_ACK_COST = 1024


class RtnlSocket:
    """A NETLINK_ROUTE socket. It stays in the network namespace it was created in."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        # error ACKs without a copy of the request: every ACK costs the same, whatever failed
        self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self._sock.bind((0, 0))
        self._seq = 0
        self._strict = False

    def ack_room(self) -> int:
        """How many requests may be in flight before their ACKs could overflow the receive buffer."""
        return max(8, min(256, self._sock.getsockopt(SOL_SOCKET, SO_RCVBUF) // _ACK_COST))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- raw exchange -------------------------------------------------------------------------
    def _frame(self, msg_type: int, flags: int, body: bytes) -> tuple[int, bytes]:
        self._seq += 1
        return self._seq, _HDR.pack(_HDR.size + len(body), msg_type, flags | F_REQUEST, self._seq, 0) + body

    def _messages(self):
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, msg_type, flags, seq, _pid = _HDR.unpack_from(data, offset)
                yield msg_type, flags, seq, data[offset + _HDR.size : offset + length]
                offset += _align(length)

    def batch(self) -> "Batch":
        return Batch(self)

    def request(self, what: str, msg_type: int, flags: int, body: bytes, tolerate=()) -> int:
        """One acknowledged request; returns 0 or the tolerated errno."""
        b = Batch(self)
        b.add(what, msg_type, flags, body, tolerate)
        return b.commit()[0]

    def dump(self, msg_type: int, body: bytes) -> list[bytes]:
        seq, frame = self._frame(msg_type, F_DUMP, body)
        self._sock.send(frame)
        out: list[bytes] = []
        for mtype, _flags, mseq, payload in self._messages():
            if mseq != seq:
                continue
            if mtype == NLMSG_DONE:
                return out
            if mtype == NLMSG_ERROR:
                err = -struct.unpack_from("=i", payload)[0]
                if err:
                    raise NetlinkError(err, f"dump {msg_type}")
                return out
            out.append(payload)
        raise AssertionError("unreachable: _messages() never ends")

    # --- queries --------------------------------------------------------------------------------
    def link(self, name: str) -> Link | None:
        seq, frame = self._frame(RTM_GETLINK, 0, ifinfo() + nla_str(IFLA_IFNAME, name))
        self._sock.send(frame)
        for mtype, _flags, mseq, payload in self._messages():
            if mseq != seq:
                continue
            if mtype == NLMSG_ERROR:
                err = -struct.unpack_from("=i", payload)[0]
                if err in (errno.ENODEV, errno.ENOENT):
                    return None
                raise NetlinkError(err, f"get link {name}")
            return _decode_link(payload)
        raise AssertionError("unreachable: _messages() never ends")

    def addrs(self, index: int = 0, family: int = AF_UNSPEC) -> list[Addr]:
        """Addresses (of one link when `index`); the kernel filters by link under strict checking, so a
        node with hundreds of veths (each with an IPv6 link-local address) answers with a few messages."""
        if index and not self._strict:
            try:
                self._sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            except OSError:  # kernel < 4.20: the filter below still applies
                pass
            self._strict = True
        out = []
        for body in self.dump(RTM_GETADDR, _IFADDR.pack(family, 0, 0, 0, index)):
            family, prefixlen, _flags, _scope, idx = _IFADDR.unpack_from(body)
            if index and idx != index:
                continue
            a = parse_attrs(body, _IFADDR.size)
            raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
            if raw:
                out.append(Addr(family, prefixlen, idx, _ip_text(family, raw)))
        return out

    def routes(self, family: int = AF_UNSPEC) -> list[Route]:
        out = []
        for body in self.dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            fam, dst_len, _src_len, _tos, table, proto, scope, rtype, _flags = _RTMSG.unpack_from(body)
            if rtype != RTN_UNICAST:
                continue
            a = parse_attrs(body, _RTMSG.size)
            if RTA_TABLE in a:
                table = struct.unpack("=I", a[RTA_TABLE])[0]
            out.append(
                Route(
                    fam,
                    _ip_text(fam, a[RTA_DST]) if RTA_DST in a else None,
                    dst_len,
                    _ip_text(fam, a[RTA_GATEWAY]) if RTA_GATEWAY in a else None,
                    struct.unpack("=I", a[RTA_OIF])[0] if RTA_OIF in a else 0,
                    table,
                    scope,
                    proto,
                )
            )
        return out


class Batch:
    """Several requests sent in one sendmsg; `commit` reads one ACK per request, in order.

    The kernel runs them in order and keeps going after a failure, so the first error that is not
    tolerated is raised after all ACKs are read (the socket stays usable).
    """

    def __init__(self, sock: RtnlSocket):
        self._sock = sock
        self._frames: list[bytes] = []
        self._meta: list[tuple[int, str, tuple]] = []

    def add(self, what: str, msg_type: int, flags: int, body: bytes, tolerate=()) -> "Batch":
        seq, frame = self._sock._frame(msg_type, flags | F_ACK, body)
        self._frames.append(frame)
        self._meta.append((seq, what, tuple(tolerate)))
        return self

    def commit(self) -> list[int]:
        """Send everything and read every ACK; a batch too large for the receive buffer goes out in
        chunks (one sendmsg each, its ACKs read before the next), stopping after a chunk that failed."""
        frames, meta = self._frames, self._meta
        self._frames, self._meta = [], []
        if not frames:
            return []
        step = len(frames) if len(frames) <= _SMALL_BATCH else self._sock.ack_room()
        results = [0] * len(meta)
        for start in range(0, len(frames), step):
            end = min(start + step, len(frames))
            self._sock._sock.send(b"".join(frames[start:end]))
            pending = {meta[i][0]: i for i in range(start, end)}
            failure = None
            for mtype, _flags, seq, payload in self._sock._messages():
                if mtype != NLMSG_ERROR or seq not in pending:
                    continue
                i = pending.pop(seq)
                err = -struct.unpack_from("=i", payload)[0]
                _seq, what, tolerate = meta[i]
                if err and err not in tolerate and failure is None:
                    failure = NetlinkError(err, what)
                results[i] = err
                if not pending:
                    break
            if failure:
                raise failure
        return results

    # --- message builders -----------------------------------------------------------------------
    def new_bridge(self, name: str, mtu: int = 0, mac: bytes = b"", netfilter: bool = False) -> "Batch":
        """`mac` pins the bridge's address: without one it takes the lowest MAC among its ports and
        changes whenever that port leaves (every pod's ARP entry for the gateway goes stale).
        `netfilter`: bridged IPv4/IPv6 traffic of this bridge passes the inet hooks (NetworkPolicy
        sees same-node pod traffic), a per-bridge switch instead of the host-global sysctl."""
        info = [nla_str(IFLA_INFO_KIND, "bridge")]
        if netfilter:
            info.append(nla_nested(IFLA_INFO_DATA, nla(IFLA_BR_NF_CALL_IPTABLES, b"\1"),
                                   nla(IFLA_BR_NF_CALL_IP6TABLES, b"\1")))
        attrs = nla_str(IFLA_IFNAME, name) + nla_nested(IFLA_LINKINFO, *info)
        if mtu:
            attrs += nla_u32(IFLA_MTU, mtu)
        if mac:
            attrs += nla(IFLA_ADDRESS, mac)
        return self.add(f"create bridge {name}", RTM_NEWLINK, F_CREATE | F_EXCL,
                        ifinfo(flags=IFF_UP, change=IFF_UP) + attrs, tolerate=(errno.EEXIST,))

    def new_veth(self, host: str, peer: str, peer_netns_fd: int, mtu: int, master: int) -> "Batch":
        """The host end is created up; the peer is born (down: the kernel refuses a peer created up in
        another namespace) inside the pod's netns with its final name."""
        peer_msg = ifinfo() + nla_str(IFLA_IFNAME, peer) + nla_u32(
            IFLA_NET_NS_FD, peer_netns_fd) + nla_u32(IFLA_MTU, mtu)
        linkinfo = nla_nested(
            IFLA_LINKINFO,
            nla_str(IFLA_INFO_KIND, "veth"),
            nla_nested(IFLA_INFO_DATA, nla(VETH_INFO_PEER, peer_msg)),
        )
        attrs = nla_str(IFLA_IFNAME, host) + nla_u32(IFLA_MTU, mtu) + linkinfo
        if master:
            attrs += nla_u32(IFLA_MASTER, master)
        return self.add(f"create veth {host}/{peer}", RTM_NEWLINK, F_CREATE | F_EXCL,
                        ifinfo(flags=IFF_UP, change=IFF_UP) + attrs)

    def set_up(self, index: int, what: str) -> "Batch":
        return self.add(f"set {what} up", RTM_NEWLINK, 0, ifinfo(index, IFF_UP, IFF_UP))

    def set_mac(self, index: int, mac: bytes, what: str) -> "Batch":
        """Setting a MAC, even the one the link has, marks it chosen (a bridge then keeps it)."""
        return self.add(f"set MAC of {what}", RTM_NEWLINK, 0, ifinfo(index) + nla(IFLA_ADDRESS, mac))

    def set_hairpin(self, index: int, on: bool) -> "Batch":
        body = ifinfo(index, family=AF_BRIDGE) + nla_nested(IFLA_PROTINFO, nla(IFLA_BRPORT_MODE, bytes([int(on)])))
        return self.add(f"set hairpin on {index}", RTM_SETLINK, 0, body)

    def del_link(self, index: int, what: str) -> "Batch":
        return self.add(f"delete {what}", RTM_DELLINK, 0, ifinfo(index), tolerate=(errno.ENODEV,))

    def new_addr(self, index: int, cidr: str, tolerate_exists: bool = False) -> "Batch":
        ip, plen = cidr.split("/")
        family, raw = _ip_bytes(ip)
        body = _IFADDR.pack(family, int(plen), 0, RT_SCOPE_UNIVERSE, index)
        body += nla(IFA_LOCAL, raw) + nla(IFA_ADDRESS, raw)
        if family == AF_INET6:
            # No DAD: the address is unique by IPAM, and a tentative address would fail the pod's first packets.
            body += nla_u32(IFA_FLAGS, IFA_F_NODAD)
        return self.add(f"add address {cidr}", RTM_NEWADDR, F_CREATE | F_EXCL, body,
                        tolerate=(errno.EEXIST,) if tolerate_exists else ())

    def new_route(self, dst: str, gw: str | None, oif: int, *, mtu: int = 0, advmss: int = 0,
                  priority: int | None = None, table: int | None = None, scope: int | None = None,
                  replace: bool = False) -> "Batch":
        ip, plen = dst.split("/")
        family, raw = _ip_bytes(ip)
        table = RT_TABLE_MAIN if table is None else table
        if scope is None:
            scope = RT_SCOPE_UNIVERSE if gw else RT_SCOPE_LINK
        body = _RTMSG.pack(family, int(plen), 0, 0, table if table < 256 else 0, RTPROT_BOOT, scope, RTN_UNICAST, 0)
        if int(plen):
            body += nla(RTA_DST, raw)
        if gw:
            body += nla(RTA_GATEWAY, _ip_bytes(gw)[1])
        if oif:
            body += nla_u32(RTA_OIF, oif)
        if priority is not None:
            body += nla_u32(RTA_PRIORITY, priority)
        if table >= 256:
            body += nla_u32(RTA_TABLE, table)
        metrics = b""
        if mtu:
            metrics += nla_u32(RTAX_MTU, mtu)
        if advmss:
            metrics += nla_u32(RTAX_ADVMSS, advmss)
        if metrics:
            body += nla_nested(RTA_METRICS, metrics)
        flags = F_CREATE | (F_REPLACE if replace else F_EXCL)
        return self.add(f"add route {dst} via {gw or 'link'}", RTM_NEWROUTE, flags, body)
