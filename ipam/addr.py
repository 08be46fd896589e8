"""IP addresses, networks and interfaces as small typed values over ints, for the CNI plugin's start-up path.

Why not `ipaddress`: it imports functools and with it collections, operator, reprlib, keyword, types
(~5 ms of every plugin start, the biggest import of an ADD; bench/cni_startup.py --importtime), for the
handful of operations IPAM needs: parse, compare, add, mask, print.

Parsing is as strict as `ipaddress` (the same rules, line by line: four decimal octets without leading
zeros; up to eight hextets of at most four hex digits, one '::', an IPv4 tail), and stricter where
that module takes what no CNI config means: no scope ids ('%', free text `ipaddress` prints back), no
netmask-style prefixes ('/255.255.255.0'), no ints or bytes. Printing is `ipaddress`'s, which is Go's
for everything but IPv4-mapped addresses (RFC 5952: lower case, the first longest run of two or more
zero hextets as '::'), so host-local's file names stay the same. tests/unit/test_ipam_addr.py holds
both to `ipaddress` on random and hostile text.
"""

from __future__ import annotations

_BITS = {4: 32, 6: 128}
_DEC = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")


class IP:
    """One IPv4 or IPv6 address: `version` and its value as an int (int(ip))."""

    __slots__ = ("version", "_n")
    version: int
    _n: int

    def __init__(self, version: int, n: int):
        bits = _BITS.get(version)
        if bits is None or not isinstance(n, int) or not 0 <= n < 1 << bits:
            raise ValueError(f"{n!r} is no IPv{version} address value")
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "_n", n)

    def __setattr__(self, name, value):
        raise AttributeError("IP is frozen")

    @property
    def max_prefixlen(self) -> int:
        return _BITS[self.version]

    def __int__(self) -> int:
        return self._n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IP) and self.version == other.version and self._n == other._n

    def __hash__(self) -> int:
        return hash((self.version, self._n))

    def _key(self, other: IP) -> int:
        # as ipaddress: addresses of different families have no order
        if not isinstance(other, IP) or other.version != self.version:
            raise TypeError(f"cannot compare {self!r} and {other!r}")
        return other._n

    def __lt__(self, other: IP) -> bool:
        return self._n < self._key(other)

    def __le__(self, other: IP) -> bool:
        return self._n <= self._key(other)

    def __gt__(self, other: IP) -> bool:
        return self._n > self._key(other)

    def __ge__(self, other: IP) -> bool:
        return self._n >= self._key(other)

    def __add__(self, k: int) -> IP:
        return IP(self.version, self._n + k)

    def __sub__(self, k: int) -> IP:
        return IP(self.version, self._n - k)

    def __str__(self) -> str:
        n = self._n
        if self.version == 4:
            return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        hextets = ["%x" % ((n >> shift) & 0xFFFF) for shift in range(112, -16, -16)]
        # the first longest run of "0" hextets, if two or more long, becomes "::"
        best_at, best_len, at, run = -1, 0, -1, 0
        for i, h in enumerate(hextets):
            if h == "0":
                if run == 0:
                    at = i
                run += 1
                if run > best_len:
                    best_at, best_len = at, run
            else:
                run = 0
        if best_len > 1:
            tail = hextets[best_at + best_len:]
            head = hextets[:best_at]
            return ":".join(head) + "::" + ":".join(tail)
        return ":".join(hextets)

    def __repr__(self) -> str:
        return f"IP({str(self)!r})"


class Net:
    """A network: its address (no host bits) and prefix length."""

    __slots__ = ("network_address", "prefixlen")
    network_address: IP
    prefixlen: int

    def __init__(self, address: IP, prefixlen: int):
        if not 0 <= prefixlen <= address.max_prefixlen or int(address) & _host_mask(address.version, prefixlen):
            raise ValueError(f"{address}/{prefixlen} has host bits set or a prefix out of range")
        object.__setattr__(self, "network_address", address)
        object.__setattr__(self, "prefixlen", prefixlen)

    def __setattr__(self, name, value):
        raise AttributeError("Net is frozen")

    @property
    def version(self) -> int:
        return self.network_address.version

    @property
    def max_prefixlen(self) -> int:
        return self.network_address.max_prefixlen

    @property
    def broadcast_address(self) -> IP:
        """The last address of the network (IPv6 has no broadcast, but the same last address)."""
        return IP(self.version, int(self.network_address) | _host_mask(self.version, self.prefixlen))

    def __contains__(self, ip: object) -> bool:
        return (isinstance(ip, IP) and ip.version == self.version
                and int(ip) & ~_host_mask(self.version, self.prefixlen) == int(self.network_address))

    def overlaps(self, other: Net) -> bool:
        return (other.network_address in self or other.broadcast_address in self
                or self.network_address in other or self.broadcast_address in other)

    @property
    def with_prefixlen(self) -> str:
        return f"{self.network_address}/{self.prefixlen}"

    def __str__(self) -> str:
        return self.with_prefixlen

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Net) and (self.network_address, self.prefixlen) == (other.network_address,
                                                                                      other.prefixlen)

    def __hash__(self) -> int:
        return hash((self.network_address, self.prefixlen))

    def __repr__(self) -> str:
        return f"Net({self.with_prefixlen!r})"


class Iface:
    """An address with its network's prefix length (ipaddress's *Interface)."""

    __slots__ = ("ip", "prefixlen")
    ip: IP
    prefixlen: int

    def __init__(self, ip: IP, prefixlen: int):
        if not 0 <= prefixlen <= ip.max_prefixlen:
            raise ValueError(f"prefix length {prefixlen} out of range for {ip}")
        object.__setattr__(self, "ip", ip)
        object.__setattr__(self, "prefixlen", prefixlen)

    def __setattr__(self, name, value):
        raise AttributeError("Iface is frozen")

    @property
    def version(self) -> int:
        return self.ip.version

    @property
    def network(self) -> Net:
        return Net(IP(self.version, int(self.ip) & ~_host_mask(self.version, self.prefixlen)), self.prefixlen)

    @property
    def with_prefixlen(self) -> str:
        return f"{self.ip}/{self.prefixlen}"

    def __str__(self) -> str:
        return self.with_prefixlen

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Iface) and (self.ip, self.prefixlen) == (other.ip, other.prefixlen)

    def __hash__(self) -> int:
        return hash((self.ip, self.prefixlen))

    def __repr__(self) -> str:
        return f"Iface({self.with_prefixlen!r})"


def _host_mask(version: int, prefixlen: int) -> int:
    return (1 << (_BITS[version] - prefixlen)) - 1


def ip_address(text: str) -> IP:
    """An address from its text; ValueError names what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not an address string")
    if ":" in text:
        return IP(6, _v6(text))
    return IP(4, _v4(text))


def ip_network(text: str) -> Net:
    """'address/prefix' with no host bits set (ipaddress.ip_network's strict form)."""
    ip, prefixlen = _split(text)
    try:
        return Net(ip, prefixlen)
    except ValueError:
        raise ValueError(f"{text!r} has host bits set") from None


def ip_interface(text: str) -> Iface:
    """'address/prefix'."""
    ip, prefixlen = _split(text)
    return Iface(ip, prefixlen)


def _split(text: str) -> tuple[IP, int]:
    if not isinstance(text, str) or text.count("/") != 1:
        raise ValueError(f"{text!r} is not in CIDR notation (address/prefix)")
    addr, _, prefix = text.partition("/")
    ip = ip_address(addr)
    if not prefix or not set(prefix) <= _DEC or len(prefix) > 3 or int(prefix) > ip.max_prefixlen:
        raise ValueError(f"{prefix!r} is not a valid prefix length for {text!r}")
    return ip, int(prefix)


def _v4(text: str) -> int:
    octets = text.split(".")
    if len(octets) != 4:
        raise ValueError(f"expected 4 octets in {text!r}")
    n = 0
    for o in octets:
        if not o or not set(o) <= _DEC or len(o) > 3:
            raise ValueError(f"octet {o!r} of {text!r} is not 1 to 3 decimal digits")
        if len(o) > 1 and o[0] == "0":
            raise ValueError(f"leading zeros are not permitted in octet {o!r} of {text!r}")
        v = int(o)
        if v > 255:
            raise ValueError(f"octet {v} of {text!r} exceeds 255")
        n = n << 8 | v
    return n


def _v6(text: str) -> int:
    """ipaddress.IPv6Address._ip_int_from_string's rules, without the scope id."""
    parts = text.split(":")
    if len(parts) < 3:
        raise ValueError(f"at least 3 parts expected in {text!r}")
    if "." in parts[-1]:
        v4 = _v4(parts.pop())
        parts += ["%x" % (v4 >> 16), "%x" % (v4 & 0xFFFF)]
    if len(parts) > 9:
        raise ValueError(f"at most 8 colons permitted in {text!r}")
    skip = None
    for i in range(1, len(parts) - 1):
        if not parts[i]:
            if skip is not None:
                raise ValueError(f"at most one '::' permitted in {text!r}")
            skip = i
    if skip is not None:
        hi, lo = skip, len(parts) - skip - 1
        if not parts[0]:
            hi -= 1
            if hi:
                raise ValueError(f"leading ':' only permitted as part of '::' in {text!r}")
        if not parts[-1]:
            lo -= 1
            if lo:
                raise ValueError(f"trailing ':' only permitted as part of '::' in {text!r}")
        skipped = 8 - hi - lo
        if skipped < 1:
            raise ValueError(f"expected at most 7 other parts with '::' in {text!r}")
    else:
        if len(parts) != 8:
            raise ValueError(f"exactly 8 parts expected without '::' in {text!r}")
        if not parts[0] or not parts[-1]:
            raise ValueError(f"leading or trailing ':' only permitted as part of '::' in {text!r}")
        hi, lo, skipped = len(parts), 0, 0
    n = 0
    for h in parts[:hi]:
        n = n << 16 | _hextet(h, text)
    n <<= 16 * skipped
    for h in parts[len(parts) - lo:]:
        n = n << 16 | _hextet(h, text)
    return n


def _hextet(h: str, text: str) -> int:
    if not h or not set(h) <= _HEX or len(h) > 4:
        raise ValueError(f"part {h!r} of {text!r} is not 1 to 4 hex digits")
    return int(h, 16)
