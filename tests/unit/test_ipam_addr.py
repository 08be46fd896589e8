"""ipam.addr against the standard `ipaddress`: same accepted texts, same values, same printing.

Random well-formed addresses, random mutations of them and hand-picked hostile texts; the only
intended differences (scope ids, netmask-style prefixes, non-strings) are tested on their own.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from ipam import addr

ALPHABET = "0123456789abcdefABCDEFxX:./% \t\n\x00-+_٣１"  # incl. non-ASCII digits


def std_address(text):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def ours_address(text):
    try:
        return addr.ip_address(text)
    except ValueError:
        return None


def random_ip(rng: random.Random) -> str:
    if rng.random() < 0.4:
        return str(ipaddress.IPv4Address(rng.getrandbits(32)))
    n = rng.getrandbits(128)
    # many zero hextets, so '::' runs of every length and position occur
    for shift in range(0, 128, 16):
        if rng.random() < 0.5:
            n &= ~(0xFFFF << shift)
    ip = ipaddress.IPv6Address(n)
    form = rng.random()
    if form < 0.3:
        return ip.exploded
    if form < 0.4:
        return ip.exploded.upper()
    if form < 0.5:  # an IPv4 tail
        return ":".join(ip.exploded.split(":")[:6]) + ":" + str(ipaddress.IPv4Address(n & 0xFFFFFFFF))
    return str(ip)


def mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        at = rng.randint(0, len(chars))
        if op < 0.4:
            chars.insert(at, rng.choice(ALPHABET))
        elif op < 0.7 and chars:
            del chars[min(at, len(chars) - 1)]
        elif chars:
            chars[min(at, len(chars) - 1)] = rng.choice(ALPHABET)
    return "".join(chars)


def same(text: str) -> None:
    std, ours = std_address(text), ours_address(text)
    if "%" in text:  # scope ids: ipaddress keeps them, we refuse them
        assert ours is None, text
        return
    assert (std is None) == (ours is None), (text, std, ours)
    if std is not None:
        assert ours.version == std.version and int(ours) == int(std), text
        assert str(ours) == str(std), text


def test_random_addresses_and_their_mutations_parse_and_print_as_ipaddress():
    rng = random.Random(20261127)
    for _ in range(20000):
        text = random_ip(rng)
        same(text)
        same(mutate(rng, text))


def test_every_ipv6_zero_run_prints_as_ipaddress():
    for mask in range(256):  # which of the 8 hextets are zero
        n = sum(0x1234 << (16 * i) for i in range(8) if not mask >> i & 1)
        assert str(addr.IP(6, n)) == str(ipaddress.IPv6Address(n))


HOSTILE = [
    "", " ", "1.2.3.4 ", " 1.2.3.4", "1.2.3.4\n", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.2.3.256", "1.2.3.-1",
    "1.2.3.+4", "1.2.3.0x4", "1.2.3.٣", "１.2.3.4", "1..3.4", "1.2.3.4/", "4294967295", "0x7f000001",
    "::", ":", ":::", "::1", "1::", "::1::", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7::",
    "::2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8::", ":1:2:3:4:5:6:7", "1:2:3:4:5:6:7:", "12345::", "g::1",
    "::ffff:1.2.3.4", "::1.2.3.4", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "::1.2.3.04", "::1.2.3",
    "1.2.3.4::", "fe80::1%eth0", "fe80::1%", "::%\n", "0" * 5000, ":" * 5000, "1:" * 2000 + "1", "\x00",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_addresses_are_judged_as_ipaddress_does(text):
    same(text)


def test_non_strings_are_refused():
    for value in (None, 1, 2**32, b"1.2.3.4", ["1.2.3.4"], 1.0):
        with pytest.raises(ValueError):
            addr.ip_address(value)
        with pytest.raises(ValueError):
            addr.ip_network(value)


def test_networks_strict_as_ipaddress_and_prefixes_decimal_only():
    rng = random.Random(7)
    for _ in range(5000):
        text = random_ip(rng) + "/" + str(rng.choice([0, 1, 8, 23, 24, 31, 32, 33, 64, 120, 127, 128, 129]))
        for t in (text, mutate(rng, text)):
            try:
                std = ipaddress.ip_network(t)
            except ValueError:
                std = None
            try:
                ours = addr.ip_network(t)
            except ValueError:
                ours = None
            if std is not None and ("%" in t or not t.split("/")[-1].isdigit() or t.count("/") != 1):
                assert ours is None, t  # a scope id or a netmask-style prefix: refused on purpose
                continue
            assert (std is None) == (ours is None), (t, std, ours)
            if std is not None:
                assert (ours.version, int(ours.network_address), ours.prefixlen) == (
                    std.version, int(std.network_address), std.prefixlen), t
                assert int(ours.broadcast_address) == int(std.broadcast_address)
                assert ours.with_prefixlen == std.with_prefixlen == str(ours)
    for text in ("10.0.0.0/255.255.255.0", "10.0.0.0/0.0.0.255", "10.0.0.0/+8", "10.0.0.0/ 8", "10.0.0.0/8/8",
                 "10.0.0.0", "10.0.0.1/24", "::1/64", "10.0.0.0/٨", "10.0.0.0/0008"):
        with pytest.raises(ValueError):
            addr.ip_network(text)


def test_membership_overlap_and_order_as_ipaddress():
    rng = random.Random(11)
    nets = [ipaddress.ip_network(t) for t in ("10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "192.168.0.0/30",
                                               "0.0.0.0/0", "fd00::/8", "fd00:1::/64", "::/0", "fd00:1::/128")]
    ours = [addr.ip_network(str(n)) for n in nets]
    for a, oa in zip(nets, ours, strict=True):
        for b, ob in zip(nets, ours, strict=True):
            assert oa.overlaps(ob) == (a.version == b.version and a.overlaps(b)), (a, b)
        for _ in range(200):
            ip = addr.IP(a.version, int(a.network_address) + rng.randint(-3, 2 ** (a.max_prefixlen - a.prefixlen) + 2)
                         ) if 0 <= int(a.network_address) - 3 else addr.IP(a.version, rng.getrandbits(a.max_prefixlen))
            assert (ip in oa) == (ipaddress.ip_address(str(ip)) in a)
        assert addr.IP(6 if a.version == 4 else 4, 0) not in oa  # another family is never inside
    x, y = addr.ip_address("10.0.0.1"), addr.ip_address("10.0.0.2")
    assert x < y and y > x and x <= x and y >= x and x + 1 == y and y - 1 == x and len({x, x + 0}) == 1
    with pytest.raises(TypeError):
        _ = x < addr.ip_address("::1")
    with pytest.raises(ValueError):
        _ = addr.ip_address("255.255.255.255") + 1
    with pytest.raises(ValueError):
        _ = addr.ip_address("::") - 1


def test_interfaces():
    i = addr.ip_interface("10.1.2.3/24")
    assert (str(i), i.with_prefixlen, i.version, str(i.ip), str(i.network)) == (
        "10.1.2.3/24", "10.1.2.3/24", 4, "10.1.2.3", "10.1.2.0/24")
    assert addr.Iface(addr.ip_address("fd00::5"), 64).network == addr.ip_network("fd00::/64")
    assert i == addr.ip_interface("10.1.2.3/24") != addr.ip_interface("10.1.2.3/25")
    for bad in ("10.1.2.3/33", "10.1.2.3", "fd00::1/129", "x/24"):
        with pytest.raises(ValueError):
            addr.ip_interface(bad)


def test_values_are_frozen():
    ip = addr.ip_address("10.0.0.1")
    with pytest.raises(AttributeError):
        ip.version = 6  # type: ignore[misc]
    with pytest.raises(AttributeError):
        addr.ip_network("10.0.0.0/8").prefixlen = 9  # type: ignore[misc]
