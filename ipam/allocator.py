"""Host-local allocation: one address per range set, round-robin, under the store's lock.

Pure logic over the Store interface (store.py): the same code runs against the
on-disk layout in the CNI plugin and against a dict in unit tests. The order is
the reference host-local's: start just after the range set's last reserved IP
(or at rangeStart of its first range), walk every range of the set once, wrap
around, skip network, gateway, IPv4 broadcast and taken addresses. So a
crash-looping pod does not get its old address back until the set has cycled.

Two deliberate differences from host-local: a repeated ADD for the same
container and ifname returns the addresses it already holds (host-local fails),
and candidates are checked against one listing of the store instead of one
open(O_EXCL) per taken address, so a nearly full /16 stays fast.
"""

from __future__ import annotations

from ipam import addr
from ipam.config import IPAMConfig, RangeSet, range_set_str
from ipam.errors import (
    IO_FAILURE,
    POOL_EXHAUSTED,
    STATUS_EXHAUSTED,
    STATUS_UNAVAILABLE,
    IPAMError,
)
from ipam.store import Store
from netkit.record import Record


class Allocation(Record):
    """The address handed out from range set `range_set`, and that range's gateway."""

    address: addr.Iface  # the IP with its subnet's prefix
    gateway: addr.IP
    range_set: int


def allocate(config: IPAMConfig, store: Store, container_id: str, ifname: str) -> tuple[Allocation, ...]:
    """One address per range set for the attachment; the same ones again on a repeat."""
    with store.lock():
        entries = store.entries()
        mine = sorted((e.ip for e in entries if e.belongs_to(container_id, ifname)), key=_ip_key)
        taken = {(e.ip.version, int(e.ip)) for e in entries}
        out: list[Allocation] = []
        new: list = []
        try:
            for idx, rs in enumerate(config.ranges):
                ip = next((ip for ip in mine if _range_for(rs, ip) is not None), None)
                if ip is None:
                    ip = _reserve_next(store, rs, idx, taken, container_id, ifname)
                    new.append(ip)
                r = _range_for(rs, ip)
                out.append(Allocation(addr.Iface(ip, r.subnet.prefixlen), r.gateway, idx))
        except BaseException:
            # All or nothing: what this call reserved goes back (best effort).
            _free_each(store, new)
            raise
    return tuple(out)


def release(store: Store, container_id: str, ifname: str) -> int:
    """Free the attachment's addresses; how many were freed (0 is fine: DEL repeats)."""
    with store.lock():
        entries = store.entries()
        cid = container_id.strip()
        victims = [e.ip for e in entries if e.container_id == cid and e.ifname == ifname]
        if not victims:  # as host-local: fall back to files of the pre-ifname format
            victims = [e.ip for e in entries if e.container_id == cid and e.ifname is None]
        freed, failed = _free_each(store, victims)
    if failed:
        raise _free_failed("release", freed, failed)
    return len(freed)


def gc(store: Store, valid: set[tuple[str, str]]) -> list[str]:
    """Free every allocation whose (containerID, ifname) is not in valid; the freed IPs.

    A legacy entry (no ifname) survives when its container has any valid attachment.
    Goes on past per-file failures and raises IPAMError(5) naming them at the end.
    """
    valid = {(cid.strip(), ifname) for cid, ifname in valid}  # stored IDs are trimmed
    valid_ids = {cid for cid, _ in valid}
    with store.lock():
        stale = [
            e.ip
            for e in store.entries()
            if ((e.container_id, e.ifname) not in valid if e.ifname is not None else e.container_id not in valid_ids)
        ]
        freed, failed = _free_each(store, sorted(stale, key=_ip_key))
    if failed:
        raise _free_failed("gc", freed, failed)
    return [str(ip) for ip in freed]


def find(store: Store, container_id: str, ifname: str) -> tuple:
    """The addresses the attachment holds (legacy files match on the container alone)."""
    with store.lock():
        return tuple(sorted((e.ip for e in store.entries() if e.belongs_to(container_id, ifname)), key=_ip_key))


def status(config: IPAMConfig, store: Store) -> None:
    """Return when an ADD could be served now; else IPAMError 50 (store) or 51 (exhausted)."""
    try:
        with store.lock():
            if not store.writable():
                raise IPAMError(STATUS_UNAVAILABLE, "store not writable", store.name)
            taken = {(e.ip.version, int(e.ip)) for e in store.entries()}
    except IPAMError as err:
        if err.code != IO_FAILURE:
            raise
        raise IPAMError(STATUS_UNAVAILABLE, "store not writable", str(err)) from None
    for idx, rs in enumerate(config.ranges):
        used = 0
        for r in rs:
            lo, hi, skip = int(r.range_start), int(r.range_end), r.never_allocated()
            used += sum(1 for version, x in taken if version == r.version and lo <= x <= hi and x not in skip)
        if used >= sum(r.size() for r in rs):
            raise IPAMError(
                STATUS_EXHAUSTED,
                f"range set {idx} exhausted: no free address in range {range_set_str(rs)}",
                f"network {config.network_name}",
            )


def _reserve_next(store: Store, rs: RangeSet, idx: int, taken: set, container_id: str, ifname: str):
    version = rs[0].version
    for r, lo, hi in _segments(rs, store.last_reserved(idx)):
        skip = r.never_allocated()
        for x in range(lo, hi + 1):
            if x in skip or (version, x) in taken:
                continue
            taken.add((version, x))
            ip = addr.IP(version, x)
            if store.reserve(ip, container_id, ifname, idx):
                return ip
    raise IPAMError(
        POOL_EXHAUSTED,
        f"no free address in range {range_set_str(rs)}",
        f"range set {idx}: all {sum(r.size() for r in rs)} addresses are allocated",
    )


def _segments(rs: RangeSet, last):
    """(range, first, last) int spans in host-local's round-robin order.

    After `last` (when it lies in the set) to the end of its range, then the
    following ranges, wrapping, and finally back up to `last` itself.
    """
    at = next((i for i, r in enumerate(rs) if last is not None and r.contains(last)), None)
    if at is None:
        return [(r, int(r.range_start), int(r.range_end)) for r in rs]
    cur, n = int(last), len(rs)
    head = rs[at]
    spans = [(head, cur + 1, int(head.range_end))]
    spans += [(r, int(r.range_start), int(r.range_end)) for r in (rs[(at + k) % n] for k in range(1, n))]
    spans.append((head, int(head.range_start), cur))
    return spans


def _range_for(rs: RangeSet, ip):
    return next((r for r in rs if r.contains(ip)), None)


def _ip_key(ip) -> tuple[int, int]:
    return (ip.version, int(ip))


def _free_each(store: Store, ips) -> tuple[list, list]:
    """Free every ip, going on past failures: (freed, [(ip, error)])."""
    freed, failed = [], []
    for ip in ips:
        try:
            if store.free(ip):
                freed.append(ip)
        except IPAMError as err:
            failed.append((ip, err))
    return freed, failed


def _free_failed(what: str, freed: list, failed: list) -> IPAMError:
    return IPAMError(
        IO_FAILURE,
        f"{what}: could not free {len(failed)} address(es), freed {len(freed)}",
        "; ".join(f"{ip}: {err}" for ip, err in failed),
    )
