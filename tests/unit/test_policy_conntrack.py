"""policy.conntrack, pure parts: which pods a change affects, which flows it now denies (DNAT,
another allow still covering a flow, IPv6, ICMP, the node's own flows), the parser of real
`conntrack -L` lines (copied from conntrack v1.4.7 on this kernel) and the ctnetlink delete messages."""
from __future__ import annotations

import ipaddress
import struct

import pytest

from netkit.rtnl import parse_attrs
from policy.conntrack import Flow, affected, delete_message, now_denied, parse_line, parse_listing
from policy.flowcheck import FlowCheck
from policy.ruleset import Allow, Ruleset

A = ipaddress.ip_address
N = ipaddress.ip_network
PA, PB, PC = A("10.0.1.2"), A("10.0.1.3"), A("10.0.1.4")
PA6, PB6 = A("fd00:1::2"), A("fd00:1::3")
SVC = A("10.96.0.10")
NODE = A("10.0.1.1")


def base() -> Ruleset:
    """b isolated for ingress: a may reach 8080/tcp and 9090/udp, the /24 may reach 7000-7999/tcp;
    a isolated for egress: to b on 8080/tcp and 9090/udp; b6 from a6 on 8080/tcp."""
    return Ruleset(
        isolated_ingress=frozenset({PB, PB6}), isolated_egress=frozenset({PA}),
        ingress=frozenset({Allow(PB, N(f"{PA}/32"), "tcp", 8080, 8080), Allow(PB, N(f"{PA}/32"), "udp", 9090, 9090),
                           Allow(PB, N("10.0.1.0/24"), "tcp", 7000, 7999),
                           Allow(PB6, N(f"{PA6}/128"), "tcp", 8080, 8080)}),
        egress=frozenset({Allow(PA, N(f"{PB}/32"), "tcp", 8080, 8080), Allow(PA, N(f"{PB}/32"), "udp", 9090, 9090),
                          Allow(PA, N(f"{PB}/32"), "tcp", 7000, 7999)}))


def without(rs: Ruleset, direction: str, *gone: Allow) -> Ruleset:
    ing, eg = rs.ingress, rs.egress
    if direction == "ingress":
        ing = ing - set(gone)
    else:
        eg = eg - set(gone)
    return Ruleset(rs.isolated_ingress, rs.isolated_egress, ing, eg)


def tcp(src, dst, dport, reply_src=None, reply_sport=None, sport=40000) -> Flow:
    return Flow("tcp", src, dst, reply_src or dst, sport, dport, reply_sport or dport)


# ---- affected ---------------------------------------------------------------------------------

def test_affected_only_additions_is_empty():
    old = base()
    new = Ruleset(old.isolated_ingress, old.isolated_egress,
                  old.ingress | {Allow(PB, N("10.0.0.0/8"), "tcp", 1, 100)}, old.egress)
    assert affected(old, new) == {"ingress": frozenset(), "egress": frozenset()}
    assert affected(old, old) == {"ingress": frozenset(), "egress": frozenset()}


def test_affected_removed_allow_names_its_pod_and_direction():
    old = base()
    new = without(old, "ingress", Allow(PB, N(f"{PA}/32"), "udp", 9090, 9090))
    assert affected(old, new) == {"ingress": frozenset({PB}), "egress": frozenset()}
    new = without(old, "egress", Allow(PA, N(f"{PB}/32"), "tcp", 8080, 8080))
    assert affected(old, new) == {"ingress": frozenset(), "egress": frozenset({PA})}


def test_affected_newly_isolated_and_no_longer_isolated():
    old = base()
    new = Ruleset(old.isolated_ingress | {PC}, old.isolated_egress, old.ingress, old.egress)
    assert affected(old, new)["ingress"] == frozenset({PC})
    # a pod that lost its isolation (and its allows) can lose nothing: everything is allowed now
    freed = Ruleset(frozenset({PB6}), old.isolated_egress,
                    frozenset(a for a in old.ingress if a.pod == PB6), old.egress)
    assert affected(old, freed) == {"ingress": frozenset(), "egress": frozenset()}


def test_affected_first_sync_is_every_isolated_pod():
    assert affected(None, base()) == {"ingress": frozenset({PB, PB6}), "egress": frozenset({PA})}
    assert affected(None, Ruleset()) == {"ingress": frozenset(), "egress": frozenset()}


# ---- now_denied -------------------------------------------------------------------------------

def test_removed_allow_denies_its_flow_only():
    old = base()
    new = without(old, "ingress", Allow(PB, N(f"{PA}/32"), "tcp", 8080, 8080))
    kept_udp = Flow("udp", PA, PB, PB, 50000, 9090, 9090)
    flows = [tcp(PA, PB, 8080), tcp(PA, PB, 7100), kept_udp, tcp(PC, PA, 80)]
    assert now_denied(flows, old) == []
    assert now_denied(flows, new) == [tcp(PA, PB, 8080)]


def test_flow_still_allowed_by_another_rule_is_kept():
    """The removed rule (10.0.0.0/16 -> b:7500) covered a->b:7500 and d->b:7500; the /24 rule (7000-7999)
    still covers a, so only d's flow goes."""
    extra = Allow(PB, N("10.0.0.0/16"), "tcp", 7500, 7500)
    old = Ruleset(base().isolated_ingress, base().isolated_egress, base().ingress | {extra}, base().egress)
    new = without(old, "ingress", extra)
    assert affected(old, new)["ingress"] == frozenset({PB})
    from_a, from_d = tcp(PA, PB, 7500), tcp(A("10.0.2.9"), PB, 7500)
    assert now_denied([from_a, from_d], old) == []
    assert now_denied([from_a, from_d], new) == [from_d]


def test_dnat_is_judged_on_the_endpoint():
    """a -> ClusterIP:80, DNATed to b:8080: the reply comes from b:8080, which is what the policy saw."""
    via_svc = tcp(PA, SVC, 80, reply_src=PB, reply_sport=8080)
    old = base()
    assert now_denied([via_svc], old) == []
    new = without(old, "egress", Allow(PA, N(f"{PB}/32"), "tcp", 8080, 8080))
    assert now_denied([via_svc], new) == [via_svc]
    # judged on the ClusterIP instead, the flow would look denied already before the change
    as_if_no_dnat = tcp(PA, SVC, 80)
    assert now_denied([as_if_no_dnat], old) == [as_if_no_dnat]


def test_ipv6():
    old = base()
    f6 = tcp(PA6, PB6, 8080)
    assert now_denied([f6], old) == []
    new = without(old, "ingress", Allow(PB6, N(f"{PA6}/128"), "tcp", 8080, 8080))
    assert affected(old, new)["ingress"] == frozenset({PB6})
    assert now_denied([f6, tcp(PA, PB, 8080)], new) == [f6]


def test_icmp_passes_only_allows_without_ports():
    ping = Flow("icmp", PA, PB, PB, icmp=(8, 0, 77))
    ping6 = Flow("icmpv6", PA6, PB6, PB6, icmp=(128, 0, 77))
    # b's ingress allows a on ports only: a ping is denied, as `meta l4proto . th dport` never matches it
    assert now_denied([ping, ping6], base()) == [ping, ping6]
    anyport = Ruleset(frozenset({PB}), frozenset(), frozenset({Allow(PB, N("10.0.1.0/24"))}))
    assert now_denied([ping], anyport) == []
    # not isolated at all: allowed
    assert now_denied([Flow("icmp", PC, PA, PA, icmp=(8, 0, 1))], Ruleset()) == []


def test_the_nodes_own_flows_are_never_denied():
    """kubelet probe node -> b: output is not hooked; deleting it would only cut the probe."""
    probe = tcp(NODE, PB, 9999)
    assert now_denied([probe], base()) == [probe]
    assert now_denied([probe], base(), exempt=frozenset({NODE})) == []


def test_agrees_with_flowcheck_on_a_grid():
    """Every tcp/udp flow between the test's addresses: denied exactly when FlowCheck refuses it."""
    rs = without(base(), "ingress", Allow(PB, N(f"{PA}/32"), "udp", 9090, 9090))
    fc = FlowCheck(rs)
    addrs = [PA, PB, PC, A("10.0.2.9")]
    flows = [Flow(p, s, d, d, 1234, port, port) for p in ("tcp", "udp", "sctp") for s in addrs for d in addrs
             if s != d for port in (80, 7000, 7999, 8000, 8080, 9090)]
    denied = set(now_denied(flows, rs))
    for f in flows:
        assert (f in denied) == (not fc.allows(f.src, f.dst, f.proto, f.dport))
    assert denied and len(denied) < len(flows)


# ---- parsing and deleting ---------------------------------------------------------------------

LINES = """\
tcp      6 296 ESTABLISHED src=10.0.1.2 dst=10.96.0.10 sport=40000 dport=80 [UNREPLIED] src=10.0.1.3 dst=10.0.1.2 \
sport=8080 dport=40000 [ASSURED] mark=0 use=1
udp      17 299 src=10.0.1.2 dst=10.0.1.3 sport=40001 dport=9090 [UNREPLIED] src=10.0.1.3 dst=10.0.1.2 sport=9090 \
dport=40001 mark=0 use=1
icmp     1 29 src=10.0.1.2 dst=10.0.1.3 type=8 code=0 id=77 [UNREPLIED] src=10.0.1.3 dst=10.0.1.2 type=0 code=0 \
id=77 mark=0 use=1
tcp      6 299 ESTABLISHED src=fd00:1::2 dst=fd00:1::3 sport=40000 dport=8080 [UNREPLIED] src=fd00:1::3 \
dst=fd00:1::2 sport=8080 dport=40000 mark=0 use=1
icmpv6   58 29 src=fd00:1::2 dst=fd00:1::3 type=128 code=0 id=77 [UNREPLIED] src=fd00:1::3 dst=fd00:1::2 type=129 \
code=0 id=77 mark=0 use=1
sctp     132 29 ESTABLISHED src=10.0.1.2 dst=10.0.1.3 sport=5 dport=6 [UNREPLIED] src=10.0.1.3 dst=10.0.1.2 sport=6 \
dport=5 mark=0 use=1
gre      47 179 src=10.0.1.2 dst=10.0.1.3 srckey=0x0 dstkey=0x0 src=10.0.1.3 dst=10.0.1.2 srckey=0x0 dstkey=0x0 use=1
tcp      6 296 ESTABLISHED src=10.0.1.999 dst=10.0.1.3 sport=1 dport=2 src=10.0.1.3 dst=10.0.1.2 sport=2 dport=1
tcp      6 296 ESTABLISHED src=10.0.1.2 dst=10.0.1.3 sport=70000 dport=2 src=10.0.1.3 dst=10.0.1.2 sport=2 dport=1
tcp      6 296 ESTABLISHED src=10.0.1.2 dst=fd00::1 sport=1 dport=2 src=fd00::1 dst=10.0.1.2 sport=2 dport=1
udp      17 1 src=10.0.1.2 dst=10.0.1.3 sport=1 dport=2
icmp     1 29 src=10.0.1.2 dst=10.0.1.3 type=300 code=0 id=77 src=10.0.1.3 dst=10.0.1.2 type=0 code=0 id=77
conntrack v1.4.7 (conntrack-tools): 6 flow entries have been shown.
tcp 6 1 src=10.0.1.2;rm dst=10.0.1.3 sport=1 dport=2 src=10.0.1.3 dst=10.0.1.2 sport=2 dport=1
"""


def test_parse_real_lines_and_refuse_bad_ones():
    flows, other, bad = parse_listing(LINES)
    assert flows == [
        Flow("tcp", PA, SVC, PB, 40000, 80, 8080),
        Flow("udp", PA, PB, PB, 40001, 9090, 9090),
        Flow("icmp", PA, PB, PB, icmp=(8, 0, 77)),
        Flow("tcp", PA6, PB6, PB6, 40000, 8080, 8080),
        Flow("icmpv6", PA6, PB6, PB6, icmp=(128, 0, 77)),
        Flow("sctp", PA, PB, PB, 5, 6, 6),
    ]
    assert other == 1  # gre: not judged by tuple
    assert bad == 7    # bad address, port out of range, mixed families, one tuple, icmp type, summary, junk


def test_parse_listing_keep_passes_over_untouched_lines():
    """The full-listing pre-check: the same flows as filtering the whole parse afterwards."""
    every, _, _ = parse_listing(LINES)
    for keep in (lambda s, r: r == PB, lambda s, r: s == PA6, lambda s, r: False):
        kept, _, _ = parse_listing(LINES, keep)
        assert kept == [f for f in every if keep(f.src, f.reply_src)]
    assert parse_listing(LINES, lambda s, r: r == PB)[0] == every[:3] + every[5:]


def test_parse_line_errors_are_value_errors():
    for line in ("", "tcp", "tcp x 1 src=1.2.3.4", "udp 17 1 src=1.2.3.4 dst=1.2.3.5 src=1.2.3.5 dst=1.2.3.4"):
        with pytest.raises(ValueError):
            parse_line(line)


def _tuple(body: bytes) -> tuple:
    """Decode a delete message back: (family, src, dst, {proto attr: raw})."""
    family = body[0]
    orig = parse_attrs(body, 4)[1]
    tup = parse_attrs(orig)
    ip, l4 = parse_attrs(tup[1]), parse_attrs(tup[2])
    return family, ipaddress.ip_address(ip[min(ip)]), ipaddress.ip_address(ip[max(ip)]), l4


def test_delete_messages_name_the_whole_original_tuple():
    flows, _, _ = parse_listing(LINES)
    tcp4, udp4, icmp4, tcp6, icmp6, sctp4 = (_tuple(delete_message(f)) for f in flows)
    port = lambda n: struct.pack("!H", n)  # noqa: E731
    # the post-DNAT address is not in the delete: the kernel keys entries by their original tuple
    assert tcp4 == (2, PA, SVC, {1: bytes([6]), 2: port(40000), 3: port(80)})
    assert udp4 == (2, PA, PB, {1: bytes([17]), 2: port(40001), 3: port(9090)})
    assert sctp4 == (2, PA, PB, {1: bytes([132]), 2: port(5), 3: port(6)})
    assert tcp6 == (10, PA6, PB6, {1: bytes([6]), 2: port(40000), 3: port(8080)})
    assert icmp4 == (2, PA, PB, {1: bytes([1]), 4: port(77), 5: bytes([8]), 6: bytes([0])})
    assert icmp6 == (10, PA6, PB6, {1: bytes([58]), 7: port(77), 8: bytes([128]), 9: bytes([0])})


def test_flow_refuses_untyped_values():
    with pytest.raises(ValueError):
        Flow("tcp", "10.0.1.2", PB, PB, 1, 2, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Flow("tcp", PA, PB, PB, 1, 70000, 2)
    with pytest.raises(ValueError):
        Flow("gre", PA, PB, PB)
    with pytest.raises(ValueError):
        Flow("icmp", PA6, PB6, PB6, icmp=(128, 0, 1))
    with pytest.raises(ValueError):
        Flow("icmp", PA, PB, PB, icmp=(8, 0, 1 << 16))
