"""policy.ruleset: golden text of a small ruleset, the element diff, disjoint boxes, refusals."""
from __future__ import annotations

import ipaddress
import random

import pytest

from policy.ruleset import Allow, LogConfig, Ruleset, _boxes, elements, render_diff, render_full
from proxy.nft import UnsafeText

A = ipaddress.ip_address
N = ipaddress.ip_network
B = A("10.0.1.3")
C = A("10.0.1.4")
D6 = A("fd00::3")


def small() -> Ruleset:
    return Ruleset(
        isolated_ingress=frozenset({B, D6}), isolated_egress=frozenset({C}),
        ingress=frozenset({Allow(B, N("10.0.1.2/32"), "tcp", 80, 81), Allow(B, N("10.0.0.0/8"), "tcp", 80, 80),
                           Allow(D6, N("fd00::/64"), "udp", 53, 53)}),
        egress=frozenset({Allow(C, N("10.0.1.0/24"))}))


GOLDEN = """\
add table inet podwire-policy
flush table inet podwire-policy
add chain inet podwire-policy forward { type filter hook forward priority 0 ; }
add chain inet podwire-policy input { type filter hook input priority 0 ; }
add chain inet podwire-policy egress
add chain inet podwire-policy egress-deny
add chain inet podwire-policy ingress
add chain inet podwire-policy ingress-deny
add set inet podwire-policy egress-any4 { type ipv4_addr . ipv4_addr ; flags interval ; }
add set inet podwire-policy egress-any6 { type ipv6_addr . ipv6_addr ; flags interval ; }
add set inet podwire-policy egress-isolated4 { type ipv4_addr ; }
add set inet podwire-policy egress-isolated6 { type ipv6_addr ; }
add set inet podwire-policy egress-ports4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service ; flags interval ; }
add set inet podwire-policy egress-ports6 { type ipv6_addr . ipv6_addr . inet_proto . inet_service ; flags interval ; }
add set inet podwire-policy ingress-any4 { type ipv4_addr . ipv4_addr ; flags interval ; }
add set inet podwire-policy ingress-any6 { type ipv6_addr . ipv6_addr ; flags interval ; }
add set inet podwire-policy ingress-isolated4 { type ipv4_addr ; }
add set inet podwire-policy ingress-isolated6 { type ipv6_addr ; }
add set inet podwire-policy ingress-ports4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service ; flags interval ; }
add set inet podwire-policy ingress-ports6 { type ipv6_addr . ipv6_addr . inet_proto . inet_service ; flags interval ; }
flush set inet podwire-policy egress-any4
flush set inet podwire-policy egress-any6
flush set inet podwire-policy egress-isolated4
flush set inet podwire-policy egress-isolated6
flush set inet podwire-policy egress-ports4
flush set inet podwire-policy egress-ports6
flush set inet podwire-policy ingress-any4
flush set inet podwire-policy ingress-any6
flush set inet podwire-policy ingress-isolated4
flush set inet podwire-policy ingress-isolated6
flush set inet podwire-policy ingress-ports4
flush set inet podwire-policy ingress-ports6
add rule inet podwire-policy forward ct state established,related accept
add rule inet podwire-policy forward meta l4proto ipv6-icmp icmpv6 type { nd-router-solicit, nd-router-advert, \
nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept
add rule inet podwire-policy forward jump egress
add rule inet podwire-policy forward jump ingress
add rule inet podwire-policy input ct state established,related accept
add rule inet podwire-policy input meta l4proto ipv6-icmp icmpv6 type { nd-router-solicit, nd-router-advert, \
nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept
add rule inet podwire-policy input jump egress
add rule inet podwire-policy egress ip saddr . ip daddr . meta l4proto . th dport @egress-ports4 return
add rule inet podwire-policy egress ip saddr . ip daddr @egress-any4 return
add rule inet podwire-policy egress ip saddr @egress-isolated4 goto egress-deny
add rule inet podwire-policy egress ip6 saddr . ip6 daddr . meta l4proto . th dport @egress-ports6 return
add rule inet podwire-policy egress ip6 saddr . ip6 daddr @egress-any6 return
add rule inet podwire-policy egress ip6 saddr @egress-isolated6 goto egress-deny
add rule inet podwire-policy egress-deny limit rate 10/second burst 20 packets counter log prefix pw-deny-out group 1
add rule inet podwire-policy egress-deny counter drop
add rule inet podwire-policy ingress ip daddr . ip saddr . meta l4proto . th dport @ingress-ports4 return
add rule inet podwire-policy ingress ip daddr . ip saddr @ingress-any4 return
add rule inet podwire-policy ingress ip daddr @ingress-isolated4 goto ingress-deny
add rule inet podwire-policy ingress ip6 daddr . ip6 saddr . meta l4proto . th dport @ingress-ports6 return
add rule inet podwire-policy ingress ip6 daddr . ip6 saddr @ingress-any6 return
add rule inet podwire-policy ingress ip6 daddr @ingress-isolated6 goto ingress-deny
add rule inet podwire-policy ingress-deny limit rate 10/second burst 20 packets counter log prefix pw-deny-in group 1
add rule inet podwire-policy ingress-deny counter drop
add element inet podwire-policy egress-any4 { 10.0.1.4 . 10.0.1.0/24 }
add element inet podwire-policy egress-isolated4 { 10.0.1.4 }
add element inet podwire-policy ingress-isolated4 { 10.0.1.3 }
add element inet podwire-policy ingress-isolated6 { fd00::3 }
add element inet podwire-policy ingress-ports4 { 10.0.1.3 . 10.0.0.0-10.0.1.1 . tcp . 80, \
10.0.1.3 . 10.0.1.2 . tcp . 80-81, 10.0.1.3 . 10.0.1.3-10.255.255.255 . tcp . 80 }
add element inet podwire-policy ingress-ports6 { fd00::3 . fd00::/64 . udp . 53 }
"""


def test_golden_full_sync():
    assert render_full(small()) == GOLDEN
    assert render_full(small()) == render_full(small())  # deterministic


def test_overlapping_allows_become_disjoint_boxes():
    # the kernel refuses (EEXIST) an interval element whose start or end lies inside another
    rs = Ruleset(isolated_ingress=frozenset({B}), ingress=frozenset({
        Allow(B, N("10.0.0.0/8"), "tcp", 80, 80), Allow(B, N("10.0.1.0/24"), "tcp", 80, 80),  # contained
        Allow(B, N("10.0.1.0/24"), "tcp", 81, 90), Allow(B, N("10.0.1.0/24"), "tcp", 85, 100),  # overlapping ports
        Allow(B, N("192.168.0.0/24")), Allow(B, N("192.168.0.0/25")),  # every port, contained
    }))
    els = elements(rs)
    assert els["ingress-ports4"] == {
        "10.0.1.3 . 10.0.0.0/24 . tcp . 80", "10.0.1.3 . 10.0.2.0-10.255.255.255 . tcp . 80",
        "10.0.1.3 . 10.0.1.0/24 . tcp . 80-100"}
    assert els["ingress-any4"] == {"10.0.1.3 . 192.168.0.0/24"}


def test_ipblock_except_as_several_cidrs():
    holes = list(ipaddress.IPv4Network("10.0.0.0/16").address_exclude(ipaddress.IPv4Network("10.0.5.0/24")))
    rs = Ruleset(isolated_egress=frozenset({C}), egress=frozenset(Allow(C, h, "udp", 53, 53) for h in holes))
    assert elements(rs)["egress-ports4"] == {
        "10.0.1.4 . 10.0.0.0-10.0.4.255 . udp . 53", "10.0.1.4 . 10.0.6.0-10.0.255.255 . udp . 53"}


def test_diff_is_element_deletes_then_adds():
    new = Ruleset(isolated_ingress=frozenset({B}), ingress=frozenset({
        Allow(B, N("10.0.1.2/32"), "tcp", 80, 90), Allow(B, N("10.0.0.0/8"), "udp", 80, 80)}))
    assert render_diff(small(), new) == """\
delete element inet podwire-policy egress-any4 { 10.0.1.4 . 10.0.1.0/24 }
delete element inet podwire-policy egress-isolated4 { 10.0.1.4 }
delete element inet podwire-policy ingress-isolated6 { fd00::3 }
delete element inet podwire-policy ingress-ports4 { 10.0.1.3 . 10.0.0.0-10.0.1.1 . tcp . 80, \
10.0.1.3 . 10.0.1.2 . tcp . 80-81, 10.0.1.3 . 10.0.1.3-10.255.255.255 . tcp . 80 }
delete element inet podwire-policy ingress-ports6 { fd00::3 . fd00::/64 . udp . 53 }
add element inet podwire-policy ingress-ports4 { 10.0.1.3 . 10.0.0.0/8 . udp . 80, 10.0.1.3 . 10.0.1.2 . tcp . 80-90 }
"""
    assert render_diff(small(), small()) == ""
    assert render_diff(small(), Ruleset(log=LogConfig(rate=5))) is None  # fixed part changed: full sync


@pytest.mark.parametrize("make", [
    lambda: Allow(B, N("10.0.0.0/8"), "icmp"),                       # protocol outside the fixed set
    lambda: Allow(B, N("10.0.0.0/8"), "tcp", 0, 80),                 # port out of range
    lambda: Allow(B, N("10.0.0.0/8"), "tcp", 90, 80),                # empty range
    lambda: Allow(B, N("10.0.0.0/8"), "tcp", True, 80),              # bool is not a port
    lambda: Allow(B, N("10.0.0.0/8"), None, 80, 80),                 # ports without a protocol
    lambda: Allow(B, N("fd00::/64")),                                # mixed families
    lambda: Allow("10.0.1.3", N("10.0.0.0/8")),  # type: ignore[arg-type] # text, not an address
    lambda: Allow(B, "10.0.0.0/8 } ; flush ruleset"),  # type: ignore[arg-type] # text, not a network
    lambda: Allow(A("fd00::3%eth0 }"), N("fd00::/64")),              # scope id
    lambda: Ruleset(ingress=frozenset({Allow(B, N("10.0.0.0/8"))})),  # allow for a pod that is not isolated
    lambda: Ruleset(isolated_egress=frozenset({"10.0.1.4"})),  # type: ignore[arg-type] # text in the isolated set
    lambda: LogConfig(group=70000),
])
def test_refuses_untyped_or_unsafe_values(make):
    with pytest.raises(ValueError):
        make()


def test_renderer_refuses_text_that_slipped_past_the_types():
    class Evil(ipaddress.IPv4Address):
        def __str__(self) -> str:
            return "10.0.1.3 } ; flush ruleset ; add element inet x y { 1"
    evil = object.__new__(Evil)
    evil._ip = int(B)  # type: ignore[attr-defined]
    rs = Ruleset.__new__(Ruleset)
    object.__setattr__(rs, "isolated_ingress", frozenset({evil}))
    for f in ("isolated_egress", "ingress", "egress"):
        object.__setattr__(rs, f, frozenset())
    object.__setattr__(rs, "log", LogConfig())
    with pytest.raises(UnsafeText):
        render_full(rs)
    with pytest.raises(UnsafeText):
        render_diff(Ruleset(), rs)


def test_boxes_are_disjoint_and_cover_exactly_the_allows():
    """The normalisation on random rectangles of a small grid, checked point by point."""
    rng = random.Random(11)
    for _ in range(200):
        rects = []
        for _ in range(rng.randint(1, 6)):
            a, b = sorted(rng.randint(0, 15) for _ in range(2))
            c, d = sorted(rng.randint(1, 12) for _ in range(2))
            rects.append((a, b, c, d))
        boxes = _boxes(rects)
        for x in range(17):
            for y in range(14):
                inside = [bx for bx in boxes if bx[0] <= x <= bx[1] and bx[2] <= y <= bx[3]]
                assert len(inside) <= 1, (rects, boxes, x, y)  # the kernel refuses overlaps
                assert bool(inside) == any(r[0] <= x <= r[1] and r[2] <= y <= r[3] for r in rects)
