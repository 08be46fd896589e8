"""policy.denylog without root: the nflog decoder on crafted bytes (the layouts of the kernel's
nfnetlink_log messages and of IPv4/IPv6 headers, written out here independently of the decoder),
hostile input, and the reporter's line, counters and cap on a small Cluster."""
from __future__ import annotations

import collections
import ipaddress
import logging
import random
import struct

import pytest
from prometheus_client import CollectorRegistry

from policy.denylog import Denied, DenyReader, DenyReporter, describe, parse
from policy.from_api import namespace_from_api, pod_from_api, policy_from_api
from policy.model import Cluster

A = ipaddress.ip_address


# --- the wire, written out ------------------------------------------------------------------------

def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def nflog(payload: bytes | None, prefix: bytes | None = b"pw-deny-in", family: int = 2, kind: int = 0x400,
          extra: bytes = b"") -> bytes:
    """One NFULNL_MSG_PACKET: nlmsghdr, nfgenmsg, NFULA_PACKET_HDR, then prefix and payload as the kernel
    orders them (prefix comes after the payload there)."""
    body = struct.pack("=BBH", family, 0, struct.unpack("=H", struct.pack(">H", 7))[0])
    body += attr(1, struct.pack(">HBx", 0x0800 if family == 2 else 0x86DD, 1))  # NFULA_PACKET_HDR
    body += extra
    if payload is not None:
        body += attr(9, payload)
    if prefix is not None:
        body += attr(10, prefix + b"\0")
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def ipv4(proto: int, l4: bytes, src: str = "10.0.1.2", dst: str = "10.0.2.3", frag: int = 0,
         options: bytes = b"") -> bytes:
    ihl = (20 + len(options)) // 4
    total = 20 + len(options) + len(l4)
    return (struct.pack(">BBHHHBBH", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0)
            + A(src).packed + A(dst).packed + options + l4)


def ipv6(nxt: int, rest: bytes, src: str = "fd00:1::2", dst: str = "fd00:2::3") -> bytes:
    return struct.pack(">IHBB", 6 << 28, len(rest), nxt, 64) + A(src).packed + A(dst).packed + rest


def ports(sport: int, dport: int, pad: int = 16) -> bytes:
    return struct.pack(">HH", sport, dport) + b"\0" * pad


def ext(nxt: int, units: int = 0) -> bytes:
    """An options-shaped extension header (hop-by-hop, routing, dest-opts): (units + 1) * 8 bytes."""
    return bytes([nxt, units]) + b"\0" * (6 + 8 * units)


def frag(nxt: int, offset: int, more: bool = True) -> bytes:
    return struct.pack(">BBHI", nxt, 0, (offset << 3) | int(more), 0x1234)


def one(data: bytes) -> Denied:
    skipped: collections.Counter[str] = collections.Counter()
    out = parse(data, skipped)
    assert not skipped and len(out) == 1, (out, skipped)
    return out[0]


def skipped_of(data: bytes) -> tuple[list[Denied], dict[str, int]]:
    skipped: collections.Counter[str] = collections.Counter()
    return parse(data, skipped), dict(skipped)


# --- parse: IPv4 ----------------------------------------------------------------------------------

def test_ipv4_tcp_udp_sctp_carry_the_destination_port():
    for proto, name in ((6, "tcp"), (17, "udp"), (132, "sctp")):
        d = one(nflog(ipv4(proto, ports(40000, 80))))
        assert d == Denied("ingress", A("10.0.1.2"), A("10.0.2.3"), name, 80)
        assert type(d.src) is ipaddress.IPv4Address


def test_ipv4_icmp_and_other_protocols_have_no_port():
    assert one(nflog(ipv4(1, b"\x08\0\0\0\0\0\0\0"))) == Denied("ingress", A("10.0.1.2"), A("10.0.2.3"), "icmp", None)
    assert one(nflog(ipv4(47, b"\0" * 8))).proto == "47"  # GRE: the number as text
    assert one(nflog(ipv4(58, b"\0" * 8))).proto == "ipv6-icmp"


def test_ipv4_header_options_are_skipped_and_egress_prefix():
    d = one(nflog(ipv4(17, ports(1, 53), options=b"\x01" * 8, src="10.0.1.9", dst="8.8.8.8"), prefix=b"pw-deny-out"))
    assert d == Denied("egress", A("10.0.1.9"), A("8.8.8.8"), "udp", 53)


def test_ipv4_non_first_fragment_has_no_port():
    d = one(nflog(ipv4(17, b"\xff" * 16, frag=185)))  # offset 185*8: the bytes there are data, not ports
    assert (d.proto, d.port) == ("udp", None)
    assert one(nflog(ipv4(17, ports(5, 6), frag=0x2000))).port == 6  # MF set, offset 0: the first fragment


def test_copy_range_cut_packet_still_decodes():
    """The reader asks for 128 bytes: the payload is cut, the IP header still claims the whole length."""
    pkt = ipv4(6, ports(40000, 443, pad=1400))
    assert one(nflog(pkt[:128])).port == 443


# --- parse: IPv6 ----------------------------------------------------------------------------------

def test_ipv6_tcp():
    d = one(nflog(ipv6(6, ports(40000, 8080)), family=10))
    assert d == Denied("ingress", A("fd00:1::2"), A("fd00:2::3"), "tcp", 8080)


def test_ipv6_extension_headers_are_skipped():
    # hop-by-hop -> routing (16 bytes) -> fragment (offset 0: the first) -> dest-opts (24 bytes) -> udp
    rest = ext(43, 0) + ext(44, 1) + frag(60, 0) + ext(17, 2) + ports(1, 5353)
    assert one(nflog(ipv6(0, rest), family=10)) == Denied("ingress", A("fd00:1::2"), A("fd00:2::3"), "udp", 5353)
    ah = bytes([132, 4]) + b"\0" * 22  # AH counts in 4-byte units: (4 + 2) * 4 = 24 bytes
    assert one(nflog(ipv6(51, ah + ports(1, 9)), family=10)) == Denied(
        "ingress", A("fd00:1::2"), A("fd00:2::3"), "sctp", 9)
    assert one(nflog(ipv6(58, b"\x80\0\0\0\0\0\0\0"), family=10)).proto == "ipv6-icmp"


def test_ipv6_non_first_fragment_names_the_protocol_without_port():
    d = one(nflog(ipv6(44, frag(6, 181) + b"\xff" * 16), family=10))
    assert (d.proto, d.port) == ("tcp", None)
    assert one(nflog(ipv6(44, frag(6, 0) + ports(2, 22)), family=10)).port == 22


def test_ipv6_header_chains_that_do_not_end_are_garbled():
    assert skipped_of(nflog(ipv6(0, ext(0) * 9 + ports(1, 2)), family=10)) == ([], {"garbled": 1})
    assert skipped_of(nflog(ipv6(0, ext(17, 30)[:24]), family=10)) == ([], {"garbled": 1})  # runs past the copy
    assert skipped_of(nflog(ipv6(60, b"\x11\0\0"), family=10)) == ([], {"garbled": 1})


# --- parse: several messages, foreign and hostile input --------------------------------------------

def test_a_batch_with_done_decodes_every_message():
    done = struct.pack("=IHHII", 20, 3, 2, 0, 0) + b"\0" * 4
    data = nflog(ipv4(6, ports(1, 80))) + nflog(ipv6(17, ports(1, 53)), family=10, prefix=b"pw-deny-out") + done
    out, skipped = skipped_of(data)
    assert [(d.direction, d.proto, d.port) for d in out] == [("ingress", "tcp", 80), ("egress", "udp", 53)]
    assert skipped == {}


@pytest.mark.parametrize("msg", [
    nflog(ipv4(6, ports(1, 80)), prefix=b"pw-deny-inx"),
    nflog(ipv4(6, ports(1, 80)), prefix=b"other"),
    nflog(ipv4(6, ports(1, 80)), prefix=None),
    nflog(ipv4(6, ports(1, 80)), family=7),  # bridge family
    nflog(ipv4(6, ports(1, 80)), kind=0x401),  # a config message
], ids=["longer-prefix", "other-prefix", "no-prefix", "bridge-family", "not-a-packet"])
def test_messages_that_are_not_ours_are_counted_as_foreign(msg):
    assert skipped_of(msg + nflog(ipv4(17, ports(1, 53)))) == (
        [Denied("ingress", A("10.0.1.2"), A("10.0.2.3"), "udp", 53)], {"foreign": 1})


@pytest.mark.parametrize("msg", [
    nflog(None),  # ours, without the packet
    nflog(ipv4(6, ports(1, 80))[:19]),  # IP header cut
    nflog(ipv4(6, ports(1, 80))[:22]),  # TCP cut before the destination port
    nflog(ipv6(6, ports(1, 80))[:39], family=10),
    nflog(ipv6(6, ports(1, 80))[:42], family=10),
    nflog(ipv4(6, ports(1, 80)), family=10),  # family says 6, packet says 4
    nflog(ipv6(6, ports(1, 80)), family=2),
    nflog(b"\x44" + ipv4(6, ports(1, 80))[1:]),  # IHL 16 bytes
    nflog(b"\x4f" + ipv4(6, ports(1, 80))[1:]),  # IHL 60 bytes, packet shorter
    nflog(ipv4(6, ports(1, 80))[:2] + b"\0\x10" + ipv4(6, ports(1, 80))[4:]),  # total length < header
    nflog(ipv4(6, ports(1, 80)), extra=struct.pack("=HH", 400, 2)),  # an attribute longer than its message
    # the IP lengths end before the port; the bytes after them are not the packet's
    nflog(ipv4(6, ports(1, 80))[:2] + b"\0\x16" + ipv4(6, ports(1, 80))[4:]),
    nflog(ipv6(6, ports(1, 80))[:4] + b"\0\x02" + ipv6(6, ports(1, 80))[6:], family=10),
], ids=["no-payload", "v4-cut", "tcp-cut", "v6-cut", "v6-tcp-cut", "v4-as-v6", "v6-as-v4", "ihl-small",
        "ihl-large", "total-small", "attr-overrun", "v4-total-before-port", "v6-length-before-port"])
def test_garbled_messages_are_skipped_and_counted(msg):
    assert skipped_of(msg + nflog(ipv4(17, ports(1, 53)))) == (
        [Denied("ingress", A("10.0.1.2"), A("10.0.2.3"), "udp", 53)], {"garbled": 1})


def test_every_truncation_of_a_message_is_skipped_never_raised():
    whole = nflog(ipv6(0, ext(6) + ports(1, 80)), family=10)
    assert one(whole).port == 80
    for cut in range(1, len(whole)):
        out, skipped = skipped_of(whole[:cut])
        assert out == [] and skipped == {"garbled": 1}, cut


def test_random_bytes_and_bit_flips_never_raise():
    rng = random.Random(11)
    valid = [nflog(ipv4(6, ports(1, 80))), nflog(ipv6(0, ext(44) + frag(17, 0) + ports(1, 53)), family=10)]
    seen = 0
    for i in range(4000):
        if i % 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        else:
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        for d in parse(data):
            seen += 1
            assert d.direction in ("ingress", "egress") and isinstance(d.proto, str)
            assert d.port is None or 0 <= d.port <= 65535
    assert seen > 100  # flips outside the headers that matter still decode


def test_nothing_is_decoded_from_empty_or_short_reads():
    assert skipped_of(b"") == ([], {})
    assert skipped_of(b"\x10\0\0") == ([], {"garbled": 1})
    assert skipped_of(struct.pack("=IHHII", 8, 0x400, 0, 0, 0)) == ([], {"garbled": 1})  # length below a header


# --- DenyReader's handling (no socket) -------------------------------------------------------------

def test_reader_counts_a_failing_callback_and_goes_on():
    got: list[Denied] = []

    def on(d: Denied) -> None:
        if d.port == 80:
            raise RuntimeError("boom")
        got.append(d)

    skips: list[tuple[str, int]] = []
    r = DenyReader(3, on, on_skipped=lambda reason, n: skips.append((reason, n)))
    r._handle(nflog(ipv4(6, ports(1, 80))) + nflog(ipv4(6, ports(1, 81))) + nflog(None))
    assert [d.port for d in got] == [81]
    assert r.delivered == 2 and dict(r.skipped) == {"garbled": 1, "callback-error": 1}
    assert sorted(skips) == [("callback-error", 1), ("garbled", 1)]


@pytest.mark.parametrize("kw", [{"group": -1}, {"group": 65536}, {"group": "1"}, {"group": 1, "copy_range": 20}])
def test_reader_refuses_bad_settings(kw):
    group = kw.pop("group")
    with pytest.raises(ValueError):
        DenyReader(group, print, **kw)


# --- DenyReporter ----------------------------------------------------------------------------------

def pod(ns: str, name: str, ip: str, labels: dict | None = None):
    return pod_from_api({"metadata": {"name": name, "namespace": ns, "labels": labels or {"pod": name}},
                         "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
                         "status": {"phase": "Running", "podIPs": [{"ip": ip}]}})


def deny_all(ns: str, types: list[str]) -> dict:
    return {"metadata": {"name": "deny-all", "namespace": ns}, "spec": {"podSelector": {}, "policyTypes": types}}


CLUSTER = Cluster.build(
    [pod("x", "a", "10.0.1.2"), pod("y", "b", "10.0.2.3"), pod("z", "c", "fd00:3::4")],
    [namespace_from_api({"metadata": {"name": n}}) for n in ("x", "y", "z")],
    [policy_from_api(deny_all("y", ["Ingress"])), policy_from_api(deny_all("z", ["Egress"]))])


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def reporter(cluster=CLUSTER, **kw):
    registry = CollectorRegistry()
    clock = Clock()
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger(f"test.denylog.{id(lines)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(Capture())
    rep = DenyReporter(registry, lambda: cluster, clock=clock, logger=logger, **kw)
    return rep, registry, clock, lines


def denied_total(registry: CollectorRegistry, direction: str, ns: str) -> float | None:
    return registry.get_sample_value("podwire_policy_denied_total", {"direction": direction, "namespace": ns})


def test_ingress_line_names_both_sides_and_the_isolating_policy():
    rep, registry, _, lines = reporter()
    rep(Denied("ingress", A("10.0.1.2"), A("10.0.2.3"), "tcp", 80))
    assert lines == ["denied ingress tcp x/a 10.0.1.2 -> y/b 10.0.2.3:80: ingress to y/b denied: namespace y pod b "
                     "is isolated for ingress by policies [y/deny-all]; none allows x/a on TCP/80"]
    assert denied_total(registry, "ingress", "y") == 1
    assert denied_total(registry, "ingress", "x") is None


def test_egress_counts_the_source_namespace_and_v6_port_is_bracketed():
    rep, registry, _, lines = reporter()
    rep(Denied("egress", A("fd00:3::4"), A("fd00:9::9"), "udp", 53))
    assert lines == ["denied egress udp z/c fd00:3::4 -> [fd00:9::9]:53: egress from z/c denied: namespace z pod c "
                     "is isolated for egress by policies [z/deny-all]; none allows fd00:9::9 on UDP/53"]
    assert denied_total(registry, "egress", "z") == 1


def test_protocols_without_ports_name_the_isolating_policies():
    rep, _, _, lines = reporter()
    rep(Denied("ingress", A("10.0.1.2"), A("10.0.2.3"), "icmp", None))
    rep(Denied("ingress", A("10.0.1.2"), A("10.0.2.3"), "udp", None))
    rep(Denied("ingress", A("10.0.1.2"), A("10.0.2.3"), "tcp", 0))
    assert lines == [
        "denied ingress icmp x/a 10.0.1.2 -> y/b 10.0.2.3: y/b is isolated for ingress by policies [y/deny-all]; "
        "icmp can be allowed only by rules without ports",
        "denied ingress udp x/a 10.0.1.2 -> y/b 10.0.2.3: y/b is isolated for ingress by policies [y/deny-all]; "
        "a udp fragment without its header can be allowed only by rules without ports",
        "denied ingress tcp x/a 10.0.1.2 -> y/b 10.0.2.3:0: y/b is isolated for ingress by policies [y/deny-all]; "
        "tcp to port 0 can be allowed only by rules without ports"]


def test_a_snapshot_that_disagrees_with_the_kernel_says_so():
    rep, registry, _, lines = reporter()
    rep(Denied("ingress", A("10.0.2.3"), A("10.0.1.2"), "tcp", 80))  # x/a is not isolated
    rep(Denied("ingress", A("10.0.2.3"), A("10.0.1.2"), "icmp", None))
    assert lines[0].startswith("denied ingress tcp y/b 10.0.2.3 -> x/a 10.0.1.2:80: the current policies allow it "
                               "(the kernel's ruleset lags them): egress from y/b: no policy isolates it")
    assert lines[1] == ("denied ingress icmp y/b 10.0.2.3 -> x/a 10.0.1.2: no policy isolates x/a for ingress now "
                        "(the kernel's ruleset lags them)")
    assert denied_total(registry, "ingress", "x") == 2


def test_unknown_addresses_and_no_snapshot_collapse_to_one_empty_namespace():
    rep, registry, _, lines = reporter()
    for i in range(50):
        rep(Denied("ingress", A("10.9.0.1"), A(f"10.8.0.{i}"), "icmp", None))
    assert lines[0] == "denied ingress icmp 10.9.0.1 -> 10.8.0.0: 10.8.0.0 is not a pod in the current snapshot"
    assert denied_total(registry, "ingress", "") == 50
    series = [s for m in registry.collect() if m.name == "podwire_policy_denied" for s in m.samples
              if s.name.endswith("_total")]
    assert len(series) == 1
    rep2, registry2, _, lines2 = reporter(cluster=None)
    rep2(Denied("egress", A("10.0.1.2"), A("10.0.2.3"), "tcp", 80))
    assert lines2 == ["denied egress tcp 10.0.1.2 -> 10.0.2.3:80: no cluster snapshot yet"]
    assert denied_total(registry2, "egress", "") == 1


def test_log_lines_are_capped_the_rest_counted_and_announced():
    rep, registry, clock, lines = reporter(lines_per_second=5, burst=10)
    d = Denied("ingress", A("10.0.1.2"), A("10.0.2.3"), "tcp", 80)
    for _ in range(1000):
        rep(d)
    assert len(lines) == 10
    assert registry.get_sample_value("podwire_policy_deny_log_suppressed_total") == 990
    assert denied_total(registry, "ingress", "y") == 1000  # every one counted
    clock.t += 1.0
    for _ in range(1000):
        rep(d)
    assert len(lines) == 15  # 5 per second refilled
    assert lines[10].endswith("(990 more denials not logged since the last line)")
    assert not lines[11].endswith("since the last line)")
    clock.t += 3600  # the budget refills only to the burst
    for _ in range(100):
        rep(d)
    assert len(lines) == 25
    assert registry.get_sample_value("podwire_policy_deny_log_suppressed_total") == 990 + 995 + 90


def test_describe_without_a_reporter():
    d = Denied("ingress", A("10.0.1.2"), A("10.0.2.3"), "sctp", 9)
    assert describe(d, CLUSTER).startswith("denied ingress sctp x/a 10.0.1.2 -> y/b 10.0.2.3:9: ingress to y/b denied")


def test_skip_reasons_are_a_fixed_label_set():
    rep, registry, _, _ = reporter()
    rep.skipped("overrun")
    rep.skipped("garbled", 3)
    rep.skipped("anything\nelse")
    value = registry.get_sample_value
    assert value("podwire_policy_deny_log_skipped_total", {"reason": "overrun"}) == 1
    assert value("podwire_policy_deny_log_skipped_total", {"reason": "garbled"}) == 3
    assert value("podwire_policy_deny_log_skipped_total", {"reason": "other"}) == 1
