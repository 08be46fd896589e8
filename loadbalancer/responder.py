"""Answers ARP and NDP for the LoadBalancer addresses this node currently holds, on one interface.

The Lease election decides which addresses a node holds and calls set_addresses; this module only
speaks on the wire. The addresses are NOT configured on the interface (the kernel would answer for
them on every node and pick them as source addresses), so the kernel ignores requests for them and
we answer with the interface's own MAC. Both families are spoken in whole Ethernet frames on packet
sockets bound to the interface:

- IPv4: ETH_P_ARP. Every ARP frame arrives (broadcast, and the unicast re-checks clients send
  when an entry goes stale); replies and gratuitous ARP are frames built by loadbalancer.arp.
- IPv6: ETH_P_IPV6 with a classic BPF filter that passes only Neighbor Solicitations; answers
  and unsolicited advertisements are frames built by loadbalancer.ndp. Not a raw ICMPv6 socket,
  for two reasons measured in tests/integration/test_lb_responder.py: it only sees a unicast NS
  (a client's reachability probe, sent to the address itself) when the kernel delivers packets
  for the address locally, while a node forwards or drops them, so clients would lose the entry
  each time it goes stale under one-way traffic; and the kernel sends its answers only with a
  route back to the asker and after resolving the asker's MAC itself, so a client asking from an
  address the node has no route for never got one. The asker's MAC is in the solicitation.
  Multicast NS still need the solicited-node group joined, or the NIC's multicast filter drops
  them (and MLD-snooping switches never forward them): memberships sit on port-less UDP sockets.

One thread and one poll() per interface: it blocks until a packet, a wake-up from set_addresses or
stop, or the next scheduled announcement; an idle responder costs no CPU. A bad packet is counted
and dropped; nothing escapes the thread.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import heapq
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from loadbalancer import arp, ndp

log = logging.getLogger(__name__)

IPAddress = IPv4Address | IPv6Address

_SIOCGIFHWADDR = 0x8927
_ARPHRD_ETHER = 1
_PACKET_OUTGOING = 4
_IFNAMSIZ = 16
_SO_ATTACH_FILTER = 26
# Classic BPF over an Ethernet frame: IPv6, next header ICMPv6, hop limit 255, ICMPv6 type NS.
# (code, jt, jf, k); a jump lands at pc + 1 + offset. Accepted frames are cut at 256 bytes.
_NS_FILTER = (
    (0x28, 0, 0, 12),                             # ldh [12]         ethertype
    (0x15, 0, 7, ndp.ETH_P_IPV6),                 # jne -> drop
    (0x30, 0, 0, 20),                             # ldb [20]         next header
    (0x15, 0, 5, ndp.IPPROTO_ICMPV6),
    (0x30, 0, 0, 21),                             # ldb [21]         hop limit
    (0x15, 0, 3, ndp.ND_HOP_LIMIT),
    (0x30, 0, 0, 54),                             # ldb [54]         ICMPv6 type
    (0x15, 0, 1, ndp.ND_NEIGHBOR_SOLICIT),
    (0x06, 0, 0, 256),                            # ret 256          accept
    (0x06, 0, 0, 0),                              # ret 0            drop
)
_RECV_BYTES = 2048  # an NS or ARP frame is < 100 bytes; larger datagrams arrive truncated and fail parsing
_RCVBUF = 1 << 20  # absorbs a burst of a few thousand requests (capped by net.core.rmem_max)


@dataclass(frozen=True)
class ResponderCounters:
    """Totals since start, for metrics. Gratuitous counts frames (a request and a reply each time)."""

    arp_requests: int = 0  # ARP requests seen on the link (for any address)
    arp_replies: int = 0
    ns_received: int = 0  # neighbor solicitations that passed the socket filter
    na_replies: int = 0
    gratuitous_arp: int = 0
    unsolicited_na: int = 0
    malformed: int = 0  # dropped: did not parse
    send_errors: int = 0
    receive_errors: int = 0  # e.g. ENETDOWN, reported once when the interface goes down
    join_errors: int = 0  # solicited-node group joins the kernel refused


def check_ifname(ifname: str) -> str:
    """A Linux interface name: 1-15 bytes, no '/', no whitespace, no NUL (dev_valid_name)."""
    if (not isinstance(ifname, str) or not 0 < len(ifname.encode()) < _IFNAMSIZ or ifname in (".", "..")
            or any(c == "/" or c == ":" or c.isspace() or c == "\0" for c in ifname)):
        raise ValueError(f"not an interface name: {ifname!r}")
    return ifname


def interface_mac(sock: socket.socket, ifname: str) -> arp.MacAddress:
    """The interface's Ethernet address, asked of the kernel (valid in the socket's namespace)."""
    ifreq = fcntl.ioctl(sock.fileno(), _SIOCGIFHWADDR, struct.pack("256s", ifname.encode()))
    family = struct.unpack_from("=H", ifreq, _IFNAMSIZ)[0]
    if family != _ARPHRD_ETHER:
        raise ValueError(f"{ifname} is not an Ethernet interface (hardware type {family})")
    return arp.MacAddress(ifreq[_IFNAMSIZ + 2:_IFNAMSIZ + 8])


def _parse_address(value: object) -> IPAddress:
    addr = value if isinstance(value, IPv4Address | IPv6Address) else ip_address(str(value))
    if addr.is_multicast or addr.is_unspecified or addr.is_loopback or addr.is_link_local:
        raise ValueError(f"{addr} cannot be a LoadBalancer address (multicast, unspecified, loopback or link-local)")
    if isinstance(addr, IPv6Address) and addr.scope_id:
        raise ValueError(f"{addr}: a LoadBalancer address carries no scope")
    return addr


class Responder:
    """ARP/NDP answers for a changing set of addresses on one interface of the current namespace."""

    def __init__(self, ifname: str, *, announce_count: int = 3, announce_interval: float = 0.75):
        self.ifname = check_ifname(ifname)
        if not 0 <= announce_count <= 10 or not 0.05 <= announce_interval <= 10:
            raise ValueError("announce_count 0-10 and announce_interval 0.05-10 s")
        self._announce_count = announce_count
        self._announce_interval = announce_interval
        self._ifindex = socket.if_nametoindex(ifname)  # OSError when there is no such interface
        self._lock = threading.Lock()
        self._held: frozenset[IPAddress] = frozenset()
        self._joined: dict[IPv6Address, socket.socket] = {}  # solicited-node group -> its membership socket
        self._group_socks: list[socket.socket] = []
        self._due: list[tuple[float, int, int, IPAddress]] = []  # heap of (when, seq, sends left, address)
        self._seq = 0  # ties in the heap never compare addresses (IPv4 and IPv6 do not order)
        self._counts = dict.fromkeys(vars(ResponderCounters()), 0)  # guarded by _lock
        self._stopping = False
        self._arp_sock = self._open_arp()
        self._ns_sock: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            self._mac = interface_mac(self._arp_sock, ifname)
            if self._ipv6_available():
                self._ns_sock = self._open_ns_receiver()
            else:
                log.info("IPv6 is not available on %s: it answers ARP only", ifname)
        except BaseException:
            self._close_sockets()
            raise
        self._thread = threading.Thread(target=self._run, name=f"lb-responder-{ifname}", daemon=True)
        self._thread.start()

    # -- sockets ----------------------------------------------------------------------------------

    def _open_arp(self) -> socket.socket:
        # Protocol 0 at creation receives nothing; bind() sets ETH_P_ARP and the interface at once, so
        # no frame from another interface is ever queued.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((self.ifname, arp.ETH_P_ARP))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _ipv6_available(self) -> bool:
        """The kernel has IPv6 and the interface has it enabled (else nothing we answer could arrive)."""
        try:
            with open(f"/proc/sys/net/ipv6/conf/{self.ifname}/disable_ipv6") as f:
                return f.read().strip() == "0"
        except OSError:  # no IPv6 in this kernel (or namespace)
            return False

    def _open_ns_receiver(self) -> socket.socket:
        # As for ARP: protocol 0 until the filter is attached and bind() sets ETH_P_IPV6, so no
        # unfiltered frame is ever queued.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            program = b"".join(struct.pack("=HBBI", *insn) for insn in _NS_FILTER)
            buf = ctypes.create_string_buffer(program)
            fprog = struct.pack("@HP", len(_NS_FILTER), ctypes.addressof(buf))  # struct sock_fprog
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((self.ifname, ndp.ETH_P_IPV6))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _close_sockets(self) -> None:
        for sock in (self._arp_sock, self._ns_sock, self._wake_r, self._wake_w, *self._group_socks):
            if sock is not None:
                sock.close()

    # -- API --------------------------------------------------------------------------------------

    @property
    def mac(self) -> arp.MacAddress:
        return self._mac

    def addresses(self) -> frozenset[IPAddress]:
        with self._lock:
            return self._held

    def counters(self) -> ResponderCounters:
        with self._lock:
            return ResponderCounters(**self._counts)

    def set_addresses(self, addrs: Iterable[IPAddress]) -> None:
        """Hold exactly `addrs` from now on. Newly held ones are announced in the background.

        Raises ValueError (and changes nothing) for an address that cannot be a LoadBalancer
        address, or an IPv6 one when this node has no IPv6.
        """
        wanted = frozenset(_parse_address(a) for a in addrs)
        if self._ns_sock is None and any(isinstance(a, IPv6Address) for a in wanted):
            raise ValueError(f"IPv6 addresses given, but IPv6 is not available on {self.ifname}")
        with self._lock:
            if self._stopping:
                raise RuntimeError(f"the responder on {self.ifname} is stopped")
            added = wanted - self._held
            self._held = wanted
            self._sync_groups_locked()
            now = time.monotonic()
            for addr in sorted(added, key=lambda a: (a.version, a)):
                if self._announce_count:
                    self._seq += 1
                    heapq.heappush(self._due, (now, self._seq, self._announce_count, addr))
        if added:
            self._wake()

    def stop(self) -> None:
        """Stops answering: the thread ends, groups are left, sockets closed. Safe to call twice."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._held = frozenset()
        self._wake()
        self._thread.join(timeout=5)
        with self._lock:
            self._sync_groups_locked()
        self._close_sockets()

    def __enter__(self) -> Responder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0", socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass  # a wake-up is already pending

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, n in increments.items():
                self._counts[name] += n

    def _sync_groups_locked(self) -> None:
        """Joins the solicited-node groups of the held IPv6 addresses, leaves the others.

        Memberships live on sockets of their own (UDP, bound to no port: they receive nothing).
        The kernel charges each membership to its socket's option memory (net.core.optmem_max:
        about 2,300 groups at the 128 KiB default, 360 at the older 20 KiB), so a full socket is
        followed by another.
        """
        if self._ns_sock is None:
            return
        wanted = {ndp.solicited_node_group(a) for a in self._held if isinstance(a, IPv6Address)}
        for group in set(self._joined) - wanted:
            sock = self._joined.pop(group)
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_LEAVE_GROUP, self._mreq(group))
            except OSError as e:  # the interface is gone: so is the membership
                log.debug("cannot leave %s on %s: %s", group, self.ifname, e)
        in_use = {id(sock) for sock in self._joined.values()}
        for sock in [s for s in self._group_socks if id(s) not in in_use]:
            self._group_socks.remove(sock)
            sock.close()
        failed: list[tuple[IPv6Address, OSError]] = []
        for group in sorted(wanted - set(self._joined)):
            try:
                self._joined[group] = self._join(group)
            except OSError as e:
                failed.append((group, e))
        if failed:
            self._counts["join_errors"] += len(failed)
            log.warning("cannot join %d solicited-node group(s) on %s (%s: %s): their multicast solicitations "
                        "go unanswered", len(failed), self.ifname, failed[0][0], failed[0][1])

    def _join(self, group: IPv6Address) -> socket.socket:
        """The membership socket that took `group`: the first with room, else a new one."""
        for sock in self._group_socks:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, self._mreq(group))
                return sock
            except OSError as e:
                if e.errno not in (errno.ENOMEM, errno.ENOBUFS):
                    raise
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, self._mreq(group))
        except BaseException:
            sock.close()
            raise
        self._group_socks.append(sock)
        return sock

    def _mreq(self, group: IPv6Address) -> bytes:
        return group.packed + struct.pack("@I", self._ifindex)  # struct ipv6_mreq

    def _run(self) -> None:
        poller = select.poll()
        handlers = {self._wake_r.fileno(): self._drain_wake, self._arp_sock.fileno(): self._on_arp}
        if self._ns_sock is not None:
            handlers[self._ns_sock.fileno()] = self._on_ns
        for fd in handlers:
            poller.register(fd, select.POLLIN)
        while True:
            with self._lock:
                if self._stopping:
                    return
                timeout = None if not self._due else max(0.0, self._due[0][0] - time.monotonic())
            try:
                for fd, _event in poller.poll(None if timeout is None else timeout * 1000):
                    handlers[fd]()
                self._announce_due()
            except Exception:  # never let one bad moment end the responder
                log.exception("responder on %s", self.ifname)
                time.sleep(0.1)  # an error that repeats must not spin a core

    def _drain_wake(self) -> None:
        while True:
            try:
                if not self._wake_r.recv(64, socket.MSG_DONTWAIT):
                    return
            except BlockingIOError:
                return

    def _on_arp(self) -> None:
        while True:  # drain: a burst of requests costs one wake-up
            try:
                frame, sll = self._arp_sock.recvfrom(_RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as e:
                self._receive_error(e)
                return
            if sll[2] == _PACKET_OUTGOING:
                continue  # our own kernel's frames, seen on the way out
            try:
                msg = arp.parse_frame(frame)
            except ValueError as e:
                self._count(malformed=1)
                log.debug("dropped ARP frame on %s: %s", self.ifname, e)
                continue
            if msg.op != arp.ArpOp.REQUEST:
                continue
            self._count(arp_requests=1)
            if msg.is_announcement or self._mac in (msg.sender_mac, msg.eth_source):
                continue  # someone's gratuitous ARP (never contest it) or our own frame
            if msg.target_ip not in self.addresses():
                continue
            if self._send(self._arp_sock, arp.build_reply(msg, self._mac)):
                self._count(arp_replies=1)

    def _on_ns(self) -> None:
        assert self._ns_sock is not None
        while True:
            try:
                frame, sll = self._ns_sock.recvfrom(_RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as e:
                self._receive_error(e)
                return
            if sll[2] == _PACKET_OUTGOING:
                continue  # our own kernel's solicitations, seen on the way out
            self._count(ns_received=1)
            try:
                received = ndp.parse_solicitation_frame(frame)
            except ValueError as e:
                self._count(malformed=1)
                log.debug("dropped neighbor solicitation on %s: %s", self.ifname, e)
                continue
            ns = received.solicitation
            if self._mac in (received.eth_source, ns.source_lladdr) or ns.target not in self.addresses():
                continue  # our own frame, or not ours to answer
            if self._send(self._ns_sock, ndp.reply_frame(received, self._mac)):
                self._count(na_replies=1)

    def _receive_error(self, e: OSError) -> None:
        # A packet socket reports ENETDOWN once when its interface goes down, then keeps its binding:
        # it receives again when the interface comes back up (the same ifindex).
        self._count(receive_errors=1)
        log.warning("receiving on %s: %s", self.ifname, e)

    def _announce_due(self) -> None:
        while True:
            with self._lock:
                if not self._due or self._due[0][0] > time.monotonic():
                    return
                _when, seq, left, addr = heapq.heappop(self._due)
                if addr not in self._held:
                    continue  # released during its burst: say nothing more
                if left > 1:
                    heapq.heappush(self._due, (time.monotonic() + self._announce_interval, seq, left - 1, addr))
            if isinstance(addr, IPv4Address):
                sent = sum(self._send(self._arp_sock, arp.build_gratuitous(addr, self._mac, op))
                           for op in (arp.ArpOp.REQUEST, arp.ArpOp.REPLY))
                self._count(gratuitous_arp=sent)
            elif self._ns_sock is not None and self._send(self._ns_sock, ndp.unsolicited_frame(addr, self._mac)):
                self._count(unsolicited_na=1)

    def _send(self, sock: socket.socket, frame: bytes) -> bool:
        try:
            sock.send(frame)
            return True
        except OSError as e:  # e.g. ENETDOWN while the link is down
            self._count(send_errors=1)
            log.debug("send on %s failed: %s", self.ifname, e)
            return False
