"""Denied flows made visible (issue 11, item 5): nflog messages of the policy table's deny chains ->
`Denied` records -> one log line each (capped) and per-namespace counters.

The `*-deny` chains log with `limit rate R/second burst B packets ... log prefix pw-deny-in|out group G`
(policy/ruleset.py), so the kernel already bounds what reaches us; the reporter caps its log lines once
more in userspace, so nothing a pod sends can flood the daemon's log. Raw NETLINK_NETFILTER with
`struct` rather than pyroute2: two message shapes (one config request, the packet message), and the
decoder must refuse hostile bytes exactly — the packet headers are written by pods.

Three pieces, each testable alone: `parse` (pure bytes -> records), `DenyReader` (the socket, a thread),
`DenyReporter` (records -> log line + prometheus counters, given a Cluster snapshot for names/reasons).
"""
from __future__ import annotations

import collections
import errno
import ipaddress
import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

from prometheus_client import CollectorRegistry, Counter

from netkit.rtnl import nla
from policy.model import EGRESS, INGRESS, Cluster, IPAddress, Pod
from policy.verdict import isolating, verdict

log = logging.getLogger("podwire.policy.deny")

NETLINK_NETFILTER = 12
_ULOG = 4  # NFNL_SUBSYS_ULOG
MSG_PACKET, MSG_CONFIG = (_ULOG << 8) | 0, (_ULOG << 8) | 1
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
_F_REQUEST, _F_ACK = 0x1, 0x4
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 4, 5
NFULNL_CFG_CMD_BIND, NFULNL_COPY_PACKET = 1, 2
AF_INET, AF_INET6 = 2, 10

PREFIXES = {b"pw-deny-in": "ingress", b"pw-deny-out": "egress"}
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}
_PORTED = (6, 17, 132)  # the destination port is bytes 2-3 of each one's header
# skip reasons (a fixed set: they become a metric label)
GARBLED, FOREIGN, OVERRUN, CALLBACK_ERROR = "garbled", "foreign", "overrun", "callback-error"
SKIP_REASONS = (GARBLED, FOREIGN, OVERRUN, CALLBACK_ERROR)

_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_BE16 = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class Denied:
    """One denied packet as the deny chain logged it."""

    direction: str  # "ingress" (pw-deny-in) or "egress" (pw-deny-out)
    src: IPAddress
    dst: IPAddress
    proto: str  # tcp, udp, sctp, icmp, ipv6-icmp, or the protocol number as text
    port: int | None  # destination port of tcp/udp/sctp; None otherwise and for non-first fragments


class _Skip(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse(data: bytes, skipped: collections.Counter[str] | None = None) -> list[Denied]:
    """The deny records in one netlink read. A message that is not ours (another prefix, family or
    message type) counts as "foreign", a truncated or inconsistent one as "garbled", in `skipped`;
    neither raises. Bookkeeping messages (NOOP, DONE of a batch) are ignored."""
    out: list[Denied] = []
    skip = skipped if skipped is not None else collections.Counter()
    off = 0
    while off < len(data):
        if off + _NLMSG.size > len(data):
            skip[GARBLED] += 1  # trailing bytes that cannot hold a header
            break
        length, kind = _NLMSG.unpack_from(data, off)[:2]
        if length < _NLMSG.size or off + length > len(data):
            skip[GARBLED] += 1  # nothing after a bad length can be found again
            break
        body = data[off + _NLMSG.size:off + length]
        off += _align(length)
        if kind in (NLMSG_NOOP, NLMSG_DONE):
            continue
        if kind != MSG_PACKET:
            skip[FOREIGN] += 1
            continue
        try:
            out.append(_packet(body))
        except _Skip as e:
            skip[e.reason] += 1
        except (struct.error, ValueError, IndexError):  # a safety net: every read above is bounds-checked
            skip[GARBLED] += 1
    return out


def _attrs(body: bytes, off: int) -> dict[int, bytes]:
    """Attributes strictly: one that runs past its message is garbled, not silently cut."""
    attrs: dict[int, bytes] = {}
    while off < len(body):
        if off + _NLA.size > len(body):
            raise _Skip(GARBLED)
        length, kind = _NLA.unpack_from(body, off)
        if length < _NLA.size or off + length > len(body):
            raise _Skip(GARBLED)
        attrs.setdefault(kind & 0x3FFF, body[off + _NLA.size:off + length])
        off += _align(length)
    return attrs


def _packet(body: bytes) -> Denied:
    if len(body) < 4:  # struct nfgenmsg
        raise _Skip(GARBLED)
    family = body[0]
    attrs = _attrs(body, 4)
    direction = PREFIXES.get(attrs.get(NFULA_PREFIX, b"").rstrip(b"\0"))
    if direction is None or family not in (AF_INET, AF_INET6):
        raise _Skip(FOREIGN)
    payload = attrs.get(NFULA_PAYLOAD)
    if payload is None:
        raise _Skip(GARBLED)
    return (_ipv4 if family == AF_INET else _ipv6)(direction, payload)


def _port(proto: int, p: bytes, start: int, end: int) -> int | None:
    if proto not in _PORTED:
        return None
    if start + 4 > end:
        raise _Skip(GARBLED)  # a port protocol whose header is cut before its destination port
    return _BE16.unpack_from(p, start + 2)[0]


def _proto(n: int) -> str:
    return PROTO_NAMES.get(n, str(n))


def _ipv4(direction: str, p: bytes) -> Denied:
    if len(p) < 20 or p[0] >> 4 != 4:
        raise _Skip(GARBLED)
    ihl = (p[0] & 0x0F) * 4
    total = _BE16.unpack_from(p, 2)[0]
    if ihl < 20 or ihl > len(p) or total < ihl:
        raise _Skip(GARBLED)
    end = min(len(p), total)  # the copy range may cut the packet; never read past its own length
    proto = p[9]
    first_fragment = _BE16.unpack_from(p, 6)[0] & 0x1FFF == 0
    port = _port(proto, p, ihl, end) if first_fragment else None
    return Denied(direction, ipaddress.IPv4Address(p[12:16]), ipaddress.IPv4Address(p[16:20]), _proto(proto), port)


_V6_OPTION_HEADERS = (0, 43, 60)  # hop-by-hop, routing, destination options: (len + 1) * 8 bytes
_V6_FRAGMENT, _V6_AH = 44, 51
_V6_MAX_HEADERS = 8  # more extension headers than this is no packet a pod means to send


def _ipv6(direction: str, p: bytes) -> Denied:
    if len(p) < 40 or p[0] >> 4 != 6:
        raise _Skip(GARBLED)
    payload_len = _BE16.unpack_from(p, 4)[0]
    end = len(p) if payload_len == 0 else min(len(p), 40 + payload_len)  # 0: a jumbogram, length elsewhere
    src, dst = ipaddress.IPv6Address(p[8:24]), ipaddress.IPv6Address(p[24:40])
    nxt, off = p[6], 40
    for _ in range(_V6_MAX_HEADERS):
        if nxt not in _V6_OPTION_HEADERS and nxt not in (_V6_FRAGMENT, _V6_AH):
            return Denied(direction, src, dst, _proto(nxt), _port(nxt, p, off, end))
        if off + 8 > end:  # every extension header is at least 8 bytes
            raise _Skip(GARBLED)
        following = p[off]
        if nxt == _V6_FRAGMENT:
            if _BE16.unpack_from(p, off + 2)[0] >> 3:  # a non-first fragment: no transport header
                return Denied(direction, src, dst, _proto(following), None)
            off += 8
        elif nxt == _V6_AH:
            off += (p[off + 1] + 2) * 4
        else:
            off += (p[off + 1] + 1) * 8
        nxt = following
    raise _Skip(GARBLED)


class DenyReader(threading.Thread):
    """Reads nflog group `group` in the network namespace current when `start()` is called and hands
    every deny record to `on_denied`, on this thread.

    `start()` opens and binds the socket before the thread runs, so a refusal is the caller's
    OSError (EPERM: the group is bound by another socket, or no CAP_NET_ADMIN). `stop()` returns
    within about `poll_seconds`. Socket overruns (ENOBUFS: the kernel dropped messages) and undecodable
    messages are counted in `skipped` and reported through `on_skipped(reason, n)`; a callback that
    raises is counted too, and the thread goes on.
    """

    def __init__(self, group: int, on_denied: Callable[[Denied], None], *,
                 on_skipped: Callable[[str, int], None] | None = None, copy_range: int = 128,
                 rcvbuf: int = 1 << 20, poll_seconds: float = 0.25, flush_centiseconds: int = 10,
                 batch: int = 16):
        if type(group) is not int or not 0 <= group <= 65535:
            raise ValueError(f"nflog group {group!r:.20} is not an integer 0-65535")
        # IPv6 header + a few extension headers + the transport ports
        if type(copy_range) is not int or not 64 <= copy_range <= 65535:
            raise ValueError(f"copy range {copy_range!r:.20} is not an integer 64-65535")
        super().__init__(name=f"podwire-denylog-{group}", daemon=True)
        self.group = group
        self._on_denied = on_denied
        self._on_skipped = on_skipped
        self._copy_range = copy_range
        self._rcvbuf = rcvbuf
        self._poll = poll_seconds
        self._flush = flush_centiseconds
        self._batch = batch
        self._stopping = threading.Event()
        self._sock: socket.socket | None = None
        self._pending: list[bytes] = []  # packets that arrived before the bind's ACK
        self._last_error_log = 0.0
        self.skipped: collections.Counter[str] = collections.Counter()
        self.delivered = 0
        self.error: OSError | None = None  # why the thread ended, when it was not stop()

    def start(self) -> None:
        self._sock = self._open()
        super().start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)
        elif self._sock is not None and self.ident is None:  # opened, thread never ran
            self._sock.close()

    def _open(self) -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            except OSError:
                pass  # the default buffer still works; overruns are counted
            s.bind((0, 0))
            s.settimeout(self._poll)
            # bind, copy mode and batching in one request: the kernel applies the command first
            body = (struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.group))
                    + nla(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_BIND))
                    + nla(NFULA_CFG_MODE, struct.pack(">IBx", self._copy_range, NFULNL_COPY_PACKET))
                    + nla(NFULA_CFG_QTHRESH, struct.pack(">I", self._batch))
                    + nla(NFULA_CFG_TIMEOUT, struct.pack(">I", self._flush)))
            s.send(_NLMSG.pack(_NLMSG.size + len(body), MSG_CONFIG, _F_REQUEST | _F_ACK, 1, 0) + body)
            self._await_ack(s)
        except BaseException:
            s.close()
            raise
        return s

    def _await_ack(self, s: socket.socket) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                data, (sender, _groups) = s.recvfrom(65536)
            except TimeoutError:
                continue
            if sender != 0:
                continue
            if len(data) >= _NLMSG.size + 4 and _NLMSG.unpack_from(data)[1] == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, _NLMSG.size)[0]
                if err == 0:
                    return
                hint = " (bound by another socket, or no CAP_NET_ADMIN)" if err == errno.EPERM else ""
                raise OSError(err, f"nflog group {self.group}: bind: {errno.errorcode.get(err, err)}{hint}")
            self._pending.append(data)
        raise OSError(errno.ETIMEDOUT, f"nflog group {self.group}: no answer to the bind request")

    def run(self) -> None:
        s = self._sock
        assert s is not None
        try:
            for data in self._pending:
                self._handle(data)
            self._pending.clear()
            while not self._stopping.is_set():
                try:
                    data, (sender, _groups) = s.recvfrom(65536)
                except TimeoutError:
                    continue
                except OSError as e:
                    if e.errno == errno.ENOBUFS:  # the kernel dropped messages: unknown how many
                        self._skip(OVERRUN, 1)
                        continue
                    if e.errno == errno.EINTR:
                        continue
                    self.error = e
                    log.error("deny log reader of nflog group %d stopped: %s", self.group, e)
                    return
                if sender != 0:  # any process in the namespace may send to our port: only the kernel counts
                    self._skip(FOREIGN, 1)
                    continue
                self._handle(data)
        finally:
            s.close()

    def _handle(self, data: bytes) -> None:
        skipped: collections.Counter[str] = collections.Counter()
        records = parse(data, skipped)
        for reason, n in skipped.items():
            self._skip(reason, n)
        for d in records:
            self.delivered += 1
            try:
                self._on_denied(d)
            except Exception:
                self._skip(CALLBACK_ERROR, 1)
                now = time.monotonic()
                if now - self._last_error_log >= 60:  # one traceback a minute, the rest counted
                    self._last_error_log = now
                    log.exception("deny log callback failed")

    def _skip(self, reason: str, n: int) -> None:
        self.skipped[reason] += n
        if self._on_skipped is not None:
            try:
                self._on_skipped(reason, n)
            except Exception:
                log.exception("deny log skip callback failed")


class DenyReporter:
    """`reporter(denied)`: count it per direction and policed pod's namespace, and log one line naming
    both sides and the reason, at most `lines_per_second` (+ `burst`); the rest are counted as
    suppressed, and the next line says how many.

    `lookup()` gives the current Cluster snapshot (or None). The namespace label is the policed pod's
    (destination for ingress, source for egress), "" when the address is no known pod: the label set
    is bounded by direction x the cluster's namespaces.
    """

    def __init__(self, registry: CollectorRegistry, lookup: Callable[[], Cluster | None], *,
                 lines_per_second: float = 10.0, burst: int = 20, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log):
        self._lookup = lookup
        self._rate = lines_per_second
        self._burst = burst
        self._clock = clock
        self._log = logger
        self._tokens = float(burst)
        self._last = clock()
        self._unlogged = 0
        self.denied = Counter("podwire_policy_denied_total", "Denied packets seen in the deny log (after the "
                              "kernel's rate limit), by direction and the policed pod's namespace",
                              ["direction", "namespace"], registry=registry)
        self.suppressed = Counter("podwire_policy_deny_log_suppressed_total",
                                  "Denied packets received but not logged (over the log line cap)", registry=registry)
        self.skipped_total = Counter("podwire_policy_deny_log_skipped_total",
                                     "nflog messages not decoded or lost, by reason", ["reason"], registry=registry)

    def __call__(self, d: Denied) -> None:
        cluster = self._lookup()
        src = cluster.pod_at(d.src) if cluster is not None else None
        dst = cluster.pod_at(d.dst) if cluster is not None else None
        policed = dst if d.direction == "ingress" else src
        self.denied.labels(d.direction, policed.namespace if policed is not None else "").inc()
        if not self._take():
            self._unlogged += 1
            self.suppressed.inc()
            return
        line = describe(d, cluster)
        if self._unlogged:
            line += f" ({self._unlogged} more denials not logged since the last line)"
            self._unlogged = 0
        self._log.info("%s", line)

    def skipped(self, reason: str, n: int = 1) -> None:
        """For DenyReader's on_skipped."""
        self.skipped_total.labels(reason if reason in SKIP_REASONS else "other").inc(n)

    def _take(self) -> bool:
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + max(0.0, now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def _side(pod: Pod | None, ip: IPAddress, port: int | None = None) -> str:
    where = str(ip) if port is None else (f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    return f"{pod} {where}" if pod is not None else where


def describe(d: Denied, cluster: Cluster | None) -> str:
    """`denied ingress tcp x/a 10.0.1.2 -> y/b 10.0.2.3:80: <why>` (why: policy.verdict's reason on the
    snapshot, which may be newer than the kernel's ruleset)."""
    src = cluster.pod_at(d.src) if cluster is not None else None
    dst = cluster.pod_at(d.dst) if cluster is not None else None
    head = f"denied {d.direction} {d.proto} {_side(src, d.src)} -> {_side(dst, d.dst, d.port)}"
    return f"{head}: {_reason(d, cluster, src, dst)}"


def _reason(d: Denied, cluster: Cluster | None, src: Pod | None, dst: Pod | None) -> str:
    if cluster is None:
        return "no cluster snapshot yet"
    if d.proto in ("tcp", "udp", "sctp") and d.port is not None and 1 <= d.port <= 65535:
        v = verdict(cluster, d.src, d.dst, d.port, d.proto.upper())
        if v.allowed:
            return f"the current policies allow it (the kernel's ruleset lags them): {v.because}"
        return v.because
    # no port policies can name (icmp, other protocols, non-first fragments, port 0): only rules
    # without ports can allow it; name the isolating policies
    policed = dst if d.direction == "ingress" else src
    if policed is None:
        return f"{d.dst if d.direction == 'ingress' else d.src} is not a pod in the current snapshot"
    direction = INGRESS if d.direction == "ingress" else EGRESS
    pols = isolating(cluster, policed, direction)
    if d.port == 0:
        what = f"{d.proto} to port 0"
    elif d.port is None and d.proto in ("tcp", "udp", "sctp"):
        what = f"a {d.proto} fragment without its header"
    else:
        what = d.proto
    if not pols:
        return f"no policy isolates {policed} for {d.direction} now (the kernel's ruleset lags them)"
    return (f"{policed} is isolated for {d.direction} by policies [{', '.join(map(str, pols))}]; "
            f"{what} can be allowed only by rules without ports")
