"""The host-local `ipam` section, parsed and validated once into frozen records.

from_json is the only place strings become typed addresses (ipam.addr); the allocator never
sees an unchecked value. Rules and defaults follow the reference host-local plugin
(containernetworking/plugins) so a node can switch between it and podwire. Where
host-local silently accepts nonsense (a gateway outside its subnet, rangeStart
without a subnet, a range without a single usable address) we refuse with code 7
and name the field.

Start-up cost decides the building blocks: netkit.record.Record instead of
dataclasses (which pulls in inspect and exec()s code per class) and no `typing`
(annotations stay strings).
"""

from __future__ import annotations

from ipam import addr
from ipam.errors import INVALID_CONFIG, UNSUPPORTED_FIELD, IPAMError
from netkit.record import Record

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
TYPE = "host-local"


class Range(Record):
    """One allocation range: rangeStart..rangeEnd (inclusive) inside subnet."""

    subnet: addr.Net
    range_start: addr.IP
    range_end: addr.IP
    gateway: addr.IP

    @property
    def version(self) -> int:
        return self.subnet.version

    def contains(self, ip: addr.IP) -> bool:
        """True when ip lies within rangeStart..rangeEnd (as host-local's Range.Contains)."""
        # ints: same family is checked first (addresses of two families have no order)
        return ip.version == self.subnet.version and int(self.range_start) <= int(ip) <= int(self.range_end)

    def never_allocated(self) -> frozenset[int]:
        """Addresses (as ints) the allocator skips: network, gateway and the IPv4 broadcast."""
        skip = {int(self.subnet.network_address), int(self.gateway)}
        if self.subnet.version == 4:
            skip.add(int(self.subnet.broadcast_address))
        return frozenset(skip)

    def size(self) -> int:
        """How many addresses of this range can be handed out."""
        lo, hi = int(self.range_start), int(self.range_end)
        return hi - lo + 1 - sum(1 for x in self.never_allocated() if lo <= x <= hi)

    def overlaps(self, other: Range) -> bool:
        return (
            self.version == other.version
            and int(self.range_start) <= int(other.range_end)
            and int(other.range_start) <= int(self.range_end)
        )

    def __str__(self) -> str:
        return f"{self.range_start}-{self.range_end}"


RangeSet = tuple[Range, ...]


def range_set_str(range_set: RangeSet) -> str:
    """'a-b,c-d': how host-local names a range set in its messages."""
    return ",".join(str(r) for r in range_set)


class Route(Record):
    """A route the IPAM result asks the plugin to add (gw None: via the interface)."""

    dst: addr.Net
    gw: addr.IP | None = None


class IPAMConfig(Record):
    """The validated `ipam` section; ranges holds one RangeSet per address handed out."""

    type: str
    ranges: tuple[RangeSet, ...]
    routes: tuple[Route, ...]
    data_dir: str
    network_name: str

    @classmethod
    def from_json(cls, ipam_dict: dict, network_name: str) -> IPAMConfig:
        """Validate the `ipam` object of a network config; IPAMError(7 or 2) names the bad field."""
        if not isinstance(ipam_dict, dict):
            raise _invalid("ipam", "must be a JSON object")
        _check_network_name(network_name)
        typ = _opt_str(ipam_dict, "type", "ipam")
        if typ != TYPE:
            raise _invalid("ipam.type", f"must be {TYPE!r}, got {typ!r}")
        if ipam_dict.get("resolvConf"):  # "" or null: no resolv.conf, which is what we do
            raise IPAMError(
                UNSUPPORTED_FIELD,
                f"ipam.resolvConf is not supported (value {ipam_dict['resolvConf']!r})",
                "podwire's IPAM returns no DNS settings; remove resolvConf",
            )
        data_dir = _opt_str(ipam_dict, "dataDir", "ipam")
        if data_dir is None:
            data_dir = DEFAULT_DATA_DIR
        elif not data_dir.startswith("/"):
            raise _invalid("ipam.dataDir", f"must be an absolute path, got {data_dir!r}")
        return cls(
            type=typ,
            ranges=_parse_ranges(ipam_dict),
            routes=_parse_routes(ipam_dict.get("routes")),
            data_dir=data_dir,
            network_name=network_name,
        )


def _invalid(field: str, problem: str) -> IPAMError:
    return IPAMError(INVALID_CONFIG, f"invalid ipam config: {field}: {problem}")


def _check_network_name(name: object) -> None:
    # The name becomes a directory under dataDir: it must stay one path component.
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise _invalid("name", f"network name {name!r} cannot name a directory")


def _opt_str(obj: dict, key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"{path}.{key}", f"must be a string, got {value!r}")
    return value


def _no_scope(text: str, field: str) -> None:
    # a scope id ("fe80::1%<anything>", free text, newlines included) would reach the result, the bridge
    # address and file names; ipam.addr refuses it too, this names the problem
    if "%" in text:
        raise _invalid(field, f"{text!r} carries a scope id ('%'); give a plain address")


def _network(text: str, field: str) -> addr.Net:
    _no_scope(text, field)
    if "/" not in text:
        raise _invalid(field, f"{text!r} is not in CIDR notation (address/prefix)")
    try:
        return addr.ip_network(text)
    except ValueError as err:  # includes "has host bits set" and netmask-style prefixes
        raise _invalid(field, str(err)) from None


def _address(text: str, field: str) -> addr.IP:
    _no_scope(text, field)
    try:
        return addr.ip_address(text)
    except ValueError as err:
        raise _invalid(field, str(err)) from None


def _in_subnet(obj: dict, key: str, path: str, subnet, default):
    """The address under key (or default), checked to lie in subnet."""
    text = _opt_str(obj, key, path)
    if text is None:
        return default
    ip = _address(text, f"{path}.{key}")
    if ip.version != subnet.version or ip not in subnet:
        raise _invalid(f"{path}.{key}", f"{ip} is outside subnet {subnet}")
    return ip


def _parse_range(obj: object, path: str) -> Range:
    if not isinstance(obj, dict):
        raise _invalid(path, "a range must be a JSON object")
    text = _opt_str(obj, "subnet", path)
    if text is None:
        raise _invalid(f"{path}.subnet", "missing")
    subnet = _network(text, f"{path}.subnet")
    if subnet.prefixlen > subnet.max_prefixlen - 2:
        raise _invalid(f"{path}.subnet", f"{subnet} is too small to allocate from")
    first = subnet.network_address + 1
    last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
    gateway = _in_subnet(obj, "gateway", path, subnet, first)
    if subnet.version == 4 and gateway in (subnet.network_address, subnet.broadcast_address):
        raise _invalid(f"{path}.gateway", f"{gateway} is the network or broadcast address")
    start = _in_subnet(obj, "rangeStart", path, subnet, first)
    end = _in_subnet(obj, "rangeEnd", path, subnet, last)
    if start > end:
        raise _invalid(f"{path}.rangeStart", f"{start} comes after rangeEnd {end}")
    r = Range(subnet=subnet, range_start=start, range_end=end, gateway=gateway)
    if r.size() < 1:
        raise _invalid(path, f"range {r} holds no allocatable address (network, broadcast and gateway are skipped)")
    return r


def _parse_range_set(obj: object, path: str) -> RangeSet:
    if not isinstance(obj, list) or not obj:
        raise _invalid(path, "a range set must be a non-empty list of ranges")
    rs = tuple(_parse_range(r, f"{path}[{i}]") for i, r in enumerate(obj))
    for i, r in enumerate(rs):
        if r.version != rs[0].version:
            raise _invalid(path, f"mixed address families ({rs[0].subnet} and {r.subnet}) in one range set")
        for j in range(i):
            if rs[j].overlaps(r):
                raise _invalid(path, f"ranges {rs[j]} and {r} overlap")
    return rs


def _parse_ranges(ipam: dict) -> tuple[RangeSet, ...]:
    sets: list[RangeSet] = []
    # The legacy single-range form (top-level subnet, ...) comes first, as in host-local.
    if ipam.get("subnet") is not None:
        sets.append((_parse_range(ipam, "ipam"),))
    else:
        for key in ("rangeStart", "rangeEnd", "gateway"):
            if ipam.get(key) is not None:
                raise _invalid(f"ipam.{key}", "given without ipam.subnet")
    ranges = ipam.get("ranges")
    if ranges is not None:
        if not isinstance(ranges, list):
            raise _invalid("ipam.ranges", "must be a list of range sets")
        sets.extend(_parse_range_set(rs, f"ipam.ranges[{i}]") for i, rs in enumerate(ranges))
    if not sets:
        raise _invalid("ipam.ranges", "no IP ranges specified (neither ranges nor subnet)")
    for i, a in enumerate(sets):
        for j in range(i):
            if any(x.overlaps(y) for x in a for y in sets[j]):
                raise _invalid("ipam.ranges",
                               f"range set {j} ({range_set_str(sets[j])}) overlaps range set {i} ({range_set_str(a)})")
    return tuple(sets)


def _parse_routes(routes: object) -> tuple[Route, ...]:
    if routes is None:
        return ()
    if not isinstance(routes, list):
        raise _invalid("ipam.routes", "must be a list of routes")
    out = []
    for i, obj in enumerate(routes):
        path = f"ipam.routes[{i}]"
        if not isinstance(obj, dict):
            raise _invalid(path, "a route must be a JSON object")
        dst_text = _opt_str(obj, "dst", path)
        if dst_text is None:
            raise _invalid(f"{path}.dst", "missing")
        dst = _network(dst_text, f"{path}.dst")
        gw_text = _opt_str(obj, "gw", path)
        gw = None if gw_text is None else _address(gw_text, f"{path}.gw")
        if gw is not None and gw.version != dst.version:
            raise _invalid(f"{path}.gw", f"{gw} is not of the family of dst {dst}")
        out.append(Route(dst=dst, gw=gw))
    return tuple(out)
