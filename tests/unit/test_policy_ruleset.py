"""policy.ruleset: golden text of a small ruleset, the element diff, disjoint boxes (against the first,
quadratic normalisation kept here as the oracle), element texts, refusals."""
from __future__ import annotations

import ipaddress
import random
import time

import pytest

from policy import ruleset
from policy.ruleset import Allow, LogConfig, Ruleset, _boxes, _merge, _peer_text, elements, render_diff, render_full
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
        egress=frozenset({Allow(C, N("10.0.1.0/24")), Allow(C, N("10.0.2.9/32"), "udp", 53, 53),  # exact
                          Allow(C, N("10.0.2.7/32"))}))  # pair


GOLDEN = """\
add table inet podwire-policy
delete table inet podwire-policy
add table inet podwire-policy
add chain inet podwire-policy forward { type filter hook forward priority 0 ; }
add chain inet podwire-policy input { type filter hook input priority 0 ; }
add chain inet podwire-policy egress
add chain inet podwire-policy egress-deny
add chain inet podwire-policy ingress
add chain inet podwire-policy ingress-deny
add set inet podwire-policy egress-any4 { type ipv4_addr . ipv4_addr ; flags interval ; }
add set inet podwire-policy egress-any6 { type ipv6_addr . ipv6_addr ; flags interval ; }
add set inet podwire-policy egress-exact4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service ; }
add set inet podwire-policy egress-exact6 { type ipv6_addr . ipv6_addr . inet_proto . inet_service ; }
add set inet podwire-policy egress-isolated4 { type ipv4_addr ; }
add set inet podwire-policy egress-isolated6 { type ipv6_addr ; }
add set inet podwire-policy egress-pair4 { type ipv4_addr . ipv4_addr ; }
add set inet podwire-policy egress-pair6 { type ipv6_addr . ipv6_addr ; }
add set inet podwire-policy egress-ports4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service ; flags interval ; }
add set inet podwire-policy egress-ports6 { type ipv6_addr . ipv6_addr . inet_proto . inet_service ; flags interval ; }
add set inet podwire-policy ingress-any4 { type ipv4_addr . ipv4_addr ; flags interval ; }
add set inet podwire-policy ingress-any6 { type ipv6_addr . ipv6_addr ; flags interval ; }
add set inet podwire-policy ingress-exact4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service ; }
add set inet podwire-policy ingress-exact6 { type ipv6_addr . ipv6_addr . inet_proto . inet_service ; }
add set inet podwire-policy ingress-isolated4 { type ipv4_addr ; }
add set inet podwire-policy ingress-isolated6 { type ipv6_addr ; }
add set inet podwire-policy ingress-pair4 { type ipv4_addr . ipv4_addr ; }
add set inet podwire-policy ingress-pair6 { type ipv6_addr . ipv6_addr ; }
add set inet podwire-policy ingress-ports4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service ; flags interval ; }
add set inet podwire-policy ingress-ports6 { type ipv6_addr . ipv6_addr . inet_proto . inet_service ; flags interval ; }
add set inet podwire-policy known4 { type ipv4_addr ; }
add set inet podwire-policy known6 { type ipv6_addr ; }
add set inet podwire-policy local4 { type ipv4_addr ; flags interval ; }
add set inet podwire-policy local6 { type ipv6_addr ; flags interval ; }
add rule inet podwire-policy forward ct state established,related accept
add rule inet podwire-policy forward meta l4proto ipv6-icmp icmpv6 type { nd-router-solicit, nd-router-advert, \
nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept
add rule inet podwire-policy forward ip daddr @local4 ip daddr != @known4 counter drop
add rule inet podwire-policy forward ip saddr @local4 ip saddr != @known4 counter drop
add rule inet podwire-policy forward ip6 daddr @local6 ip6 daddr != @known6 counter drop
add rule inet podwire-policy forward ip6 saddr @local6 ip6 saddr != @known6 counter drop
add rule inet podwire-policy forward jump egress
add rule inet podwire-policy forward jump ingress
add rule inet podwire-policy input ct state established,related accept
add rule inet podwire-policy input meta l4proto ipv6-icmp icmpv6 type { nd-router-solicit, nd-router-advert, \
nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept
add rule inet podwire-policy input jump egress
add rule inet podwire-policy egress ip saddr . ip daddr . meta l4proto . th dport @egress-exact4 return
add rule inet podwire-policy egress ip saddr . ip daddr @egress-pair4 return
add rule inet podwire-policy egress ip saddr . ip daddr . meta l4proto . th dport @egress-ports4 return
add rule inet podwire-policy egress ip saddr . ip daddr @egress-any4 return
add rule inet podwire-policy egress ip saddr @egress-isolated4 goto egress-deny
add rule inet podwire-policy egress ip6 saddr . ip6 daddr . meta l4proto . th dport @egress-exact6 return
add rule inet podwire-policy egress ip6 saddr . ip6 daddr @egress-pair6 return
add rule inet podwire-policy egress ip6 saddr . ip6 daddr . meta l4proto . th dport @egress-ports6 return
add rule inet podwire-policy egress ip6 saddr . ip6 daddr @egress-any6 return
add rule inet podwire-policy egress ip6 saddr @egress-isolated6 goto egress-deny
add rule inet podwire-policy egress-deny limit rate 10/second burst 20 packets counter log prefix pw-deny-out group 1
add rule inet podwire-policy egress-deny counter drop
add rule inet podwire-policy ingress ip daddr . ip saddr . meta l4proto . th dport @ingress-exact4 return
add rule inet podwire-policy ingress ip daddr . ip saddr @ingress-pair4 return
add rule inet podwire-policy ingress ip daddr . ip saddr . meta l4proto . th dport @ingress-ports4 return
add rule inet podwire-policy ingress ip daddr . ip saddr @ingress-any4 return
add rule inet podwire-policy ingress ip daddr @ingress-isolated4 goto ingress-deny
add rule inet podwire-policy ingress ip6 daddr . ip6 saddr . meta l4proto . th dport @ingress-exact6 return
add rule inet podwire-policy ingress ip6 daddr . ip6 saddr @ingress-pair6 return
add rule inet podwire-policy ingress ip6 daddr . ip6 saddr . meta l4proto . th dport @ingress-ports6 return
add rule inet podwire-policy ingress ip6 daddr . ip6 saddr @ingress-any6 return
add rule inet podwire-policy ingress ip6 daddr @ingress-isolated6 goto ingress-deny
add rule inet podwire-policy ingress-deny limit rate 10/second burst 20 packets counter log prefix pw-deny-in group 1
add rule inet podwire-policy ingress-deny counter drop
add element inet podwire-policy egress-any4 { 10.0.1.4 . 10.0.1.0/24 }
add element inet podwire-policy egress-exact4 { 10.0.1.4 . 10.0.2.9 . udp . 53 }
add element inet podwire-policy egress-isolated4 { 10.0.1.4 }
add element inet podwire-policy egress-pair4 { 10.0.1.4 . 10.0.2.7 }
add element inet podwire-policy ingress-isolated4 { 10.0.1.3 }
add element inet podwire-policy ingress-isolated6 { fd00::3 }
add element inet podwire-policy ingress-ports4 { 10.0.1.3 . 10.0.0.0-10.0.1.1 . tcp . 80, 10.0.1.3 . 10.0.1.2 . tcp . \
80-81, 10.0.1.3 . 10.0.1.3-10.255.255.255 . tcp . 80 }
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
delete element inet podwire-policy egress-exact4 { 10.0.1.4 . 10.0.2.9 . udp . 53 }
delete element inet podwire-policy egress-isolated4 { 10.0.1.4 }
delete element inet podwire-policy egress-pair4 { 10.0.1.4 . 10.0.2.7 }
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
    lambda: Allow(D6, N("fd00::%eth0 }/64")),                         # scope id on the peer
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


def _boxes_reference(items):
    """The first normalisation (O(n²)): cut the peer axis at every boundary, rescan every rectangle per
    segment, join equal neighbours. Obviously right, too slow at scale: the oracle for the sweep."""
    cuts = sorted({b for lo, hi, _, _ in items for b in (lo, hi + 1)})
    segments: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []
    for lo, nxt in zip(cuts, cuts[1:], strict=False):
        ports = _merge((pl, ph) for a, b, pl, ph in items if a <= lo and nxt - 1 <= b)
        if not ports:
            continue
        if segments and segments[-1][1] + 1 == lo and segments[-1][2] == ports:
            segments[-1] = (segments[-1][0], nxt - 1, ports)
        else:
            segments.append((lo, nxt - 1, ports))
    return [(lo, hi, pl, ph) for lo, hi, ports in segments for pl, ph in ports]


def _random_rects(rng, n, peers, ports):
    """Mixed shapes: single peers (/32s), wide ranges, nested and repeated rectangles, adjacent ranges."""
    rects: list[tuple[int, int, int, int]] = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            a = b = rng.randint(0, peers)
        elif kind < 0.8:
            a, b = sorted(rng.randint(0, peers) for _ in range(2))
        elif rects:
            a, b, _, _ = rng.choice(rects)  # the same peers again, other ports
        else:
            a, b = 0, peers
        c = rng.randint(1, ports)
        d = c if rng.random() < 0.5 else min(ports, c + rng.randint(0, ports // 3))
        rects.append((a, b, c, d))
    return rects


def test_boxes_cover_exactly_on_larger_random_inputs():
    """Up to 40 rectangles on a 48 x 24 grid, checked point by point through coverage counts."""
    rng = random.Random(12)
    for _ in range(60):
        rects = _random_rects(rng, rng.randint(1, 40), 47, 23)
        want = [[False] * 25 for _ in range(48)]
        for a, b, c, d in rects:
            for x in range(a, b + 1):
                want[x][c:d + 1] = [True] * (d - c + 1)
        got = [[0] * 25 for _ in range(48)]
        for a, b, c, d in _boxes(rects):
            for x in range(a, b + 1):
                row = got[x]
                for y in range(c, d + 1):
                    row[y] += 1
        assert [[n > 0 for n in row] for row in got] == want, rects
        assert max(max(row) for row in got) == 1, rects  # disjoint: the kernel refuses overlaps


def test_boxes_equal_the_reference_normalisation():
    """Same boxes, same order as the quadratic normalisation, on 1,000 small and 60 larger (50-200
    rectangles) random inputs, address-sized peer axis included: the rendered text cannot change."""
    rng = random.Random(13)
    for trial in range(1060):
        n = rng.randint(1, 12) if trial < 1000 else rng.randint(50, 200)
        peers = rng.choice((15, 1000, 2**32 - 1))
        rects = _random_rects(rng, n, peers, rng.choice((12, 65535)))
        assert _boxes(rects) == _boxes_reference(rects), rects
    assert _boxes([]) == []


def test_boxes_sweep_merges_little_and_scales(monkeypatch):
    """20,000 /32 peers of one pod under a wide CIDR with other ports: the union is merged only where
    two ranges are open (once per peer), never per peer x box; and it runs in well under a second."""
    merged = []

    def counting_merge(ranges):
        ranges = list(ranges)
        merged.append(len(ranges))
        return _merge(ranges)
    monkeypatch.setattr(ruleset, "_merge", counting_merge)
    n = 20_000
    rects = [(0, 4 * n, 443, 443)] + [(2 * i + 1, 2 * i + 1, 80, 80) for i in range(n)]
    t = time.perf_counter()
    boxes = _boxes(rects)
    took = time.perf_counter() - t
    assert len(boxes) == 3 * n + 1  # per peer: 80 and 443; between peers and after them: 443 alone
    assert len(merged) == n and set(merged) == {2}
    assert took < 1.0, took


@pytest.mark.parametrize("version", [4, 6])
def test_peer_text_is_address_cidr_or_range(version):
    """The arithmetic CIDR test gives the text summarize_address_range gave, on random and edge ranges."""
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    bits = 32 if version == 4 else 128
    rng = random.Random(version)
    ranges = [(0, 2**bits - 1), (0, 0), (2**bits - 1, 2**bits - 1), (1, 2**bits - 1), (0, 2**bits - 2)]
    ranges += [(1, 2), (2, 5), (256, 767), (2**bits - 3, 2**bits - 2)]  # power-of-two sizes, not aligned
    for _ in range(150):
        plen = rng.randint(0, bits)
        lo = rng.getrandbits(bits) >> (bits - plen) << (bits - plen)
        hi = lo + (1 << (bits - plen)) - 1
        ranges += [(lo, hi), (lo, max(lo, hi - rng.randint(0, 3))), (min(hi, lo + rng.randint(0, 3)), hi)]
        if 0 < plen < bits:  # the same size shifted by half: a power of two that is no prefix
            half = 1 << (bits - plen - 1)
            ranges.append((lo + half, hi + half) if hi + half < 2**bits else (lo - half, hi - half))
        x, y = sorted(rng.getrandbits(bits) for _ in range(2))
        ranges.append((x, y))
    text: dict[int, str] = {}
    for lo, hi in ranges:
        nets = list(ipaddress.summarize_address_range(cls(lo), cls(hi)))
        want = str(cls(lo)) if lo == hi else str(nets[0]) if len(nets) == 1 else f"{cls(lo)}-{cls(hi)}"
        assert _peer_text(version, lo, hi) == want == _peer_text(version, lo, hi, text)


def test_every_prefix_length_renders_as_itself():
    """The peer's last address is computed from the prefix length, not broadcast_address: each CIDR alone
    renders as written (a host prefix as the address)."""
    for pod, base, bits, family in ((B, "10.128.0.0", 32, 4), (D6, "fd00:1::", 128, 6)):
        for plen in range(bits + 1):
            net = ipaddress.ip_network(f"{base}/{plen}", strict=False)
            rs = Ruleset(isolated_egress=frozenset({pod}), egress=frozenset({Allow(pod, net, "tcp", 80, 80)}))
            if plen == bits:  # one peer address, one port: the hash set
                assert elements(rs)[f"egress-exact{family}"] == {f"{pod} . {net.network_address} . tcp . 80"}
                assert not elements(rs)[f"egress-ports{family}"]
            else:
                assert elements(rs)[f"egress-ports{family}"] == {f"{pod} . {net} . tcp . 80"}


def test_groups_are_checked_per_pod_even_when_seen_before():
    group = frozenset({Allow(B, N("10.0.0.0/8"), "tcp", 80, 80)})
    ok = Ruleset(isolated_ingress=frozenset({B, C}), ingress=group, groups={"ingress": {B: group}, "egress": {}})
    assert ok.by_pod("ingress") == {B: group}
    with pytest.raises(ValueError, match="is not an Allow of"):  # the same checked frozenset, under another pod
        Ruleset(isolated_ingress=frozenset({B, C}), ingress=group, groups={"ingress": {C: group}, "egress": {}})
    with pytest.raises(ValueError, match="partition"):
        Ruleset(isolated_ingress=frozenset({B}), ingress=frozenset(), groups={"ingress": {B: group}, "egress": {}})


@pytest.mark.parametrize("seed", range(20))
def test_a_pods_elements_updated_from_its_changed_allows_equal_a_fresh_rendering(seed):
    """ElementCache renders a pod whose allows changed from the allows that came and went when it
    can (hash-set elements only); the result must be what rendering the pod afresh gives."""
    rng = random.Random(seed)
    pod = B if seed % 2 else D6
    peers = [N(f"10.0.{rng.randrange(4)}.{rng.randrange(1, 30)}/32") if pod.version == 4
             else N(f"fd00::{rng.randrange(1, 60):x}/128") for _ in range(40)]
    wide = N("10.0.0.0/16") if pod.version == 4 else N("fd00::/64")

    def allow():
        if rng.random() < 0.1:
            return Allow(pod, wide, "tcp", 1000, 1000 + rng.randrange(5))  # an interval element
        proto = rng.choice([None, "tcp", "udp"])
        port = rng.randrange(1, 100)
        return Allow(pod, rng.choice(peers), proto, *((port, port) if proto else (1, 65535)))

    cache = ruleset.ElementCache()
    current = frozenset(allow() for _ in range(30))
    cache.pod("ingress", pod, current)
    for _ in range(30):
        kept = {a for a in current if rng.random() < 0.9}
        current = frozenset(kept | {allow() for _ in range(rng.randrange(4))})
        got = cache.pod("ingress", pod, current)
        assert got == ruleset._pod_elements("ingress", pod, current, {})
