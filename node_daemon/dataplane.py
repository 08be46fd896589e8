"""The node's cross-node dataplane as plain data, and the diff between two such states.

Desired state (from the plan) and actual state (read back from the kernel) share these types so
reconciling is a set difference. The kernel is the only source of truth: nothing here remembers
what was programmed, except `count_drift`, which only decides what to call drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import IPAddress, IPNetwork


@dataclass(frozen=True, order=True)
class Route:
    """A route the daemon owns (marked with its route protocol in the main table)."""

    dst: IPNetwork
    gateway: IPAddress | None  # None: read back from the kernel without one (not ours to plan)
    dev: str
    onlink: bool = False


@dataclass(frozen=True, order=True)
class FdbEntry:
    """VXLAN forwarding entry on our VXLAN device: inner MAC -> outer (underlay) destination."""

    mac: str
    dst: IPAddress


@dataclass(frozen=True, order=True)
class Neighbour:
    """Permanent neighbour entry on our VXLAN device: peer VTEP IP -> peer VTEP MAC."""

    ip: IPAddress
    mac: str


@dataclass(frozen=True)
class VxlanDevice:
    name: str
    vni: int
    port: int
    mac: str
    mtu: int
    local: IPAddress | None  # None only as read back from a device without one: recreated
    underlay: str  # underlay interface name (IFLA_VXLAN_LINK)
    up: bool = True

    # Attributes the kernel cannot change on a live VXLAN device: a difference means recreate.
    IMMUTABLE = ("vni", "port", "local", "underlay")


@dataclass(frozen=True)
class Dataplane:
    vxlan: VxlanDevice | None = None
    addresses: frozenset = frozenset()  # ip_interface objects on the VXLAN device (VTEP IPs)
    routes: frozenset[Route] = frozenset()
    fdb: frozenset[FdbEntry] = frozenset()
    neighbours: frozenset[Neighbour] = frozenset()


ENTRY_KINDS = ("addresses", "routes", "fdb", "neighbours")


@dataclass(frozen=True)
class Changes:
    """What to do to turn actual into desired. `device` is None, create, recreate, update or delete."""

    device: str | None = None
    add: dict = field(default_factory=dict)  # kind -> frozenset
    remove: dict = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.device is None and not any(self.add.values()) and not any(self.remove.values())

    def count(self) -> int:
        return (self.device is not None) + sum(len(v) for v in self.add.values()) + sum(
            len(v) for v in self.remove.values())


def device_change(desired: VxlanDevice | None, actual: VxlanDevice | None) -> str | None:
    if desired is None:
        return "delete" if actual is not None else None
    if actual is None:
        return "create"
    if any(getattr(desired, a) != getattr(actual, a) for a in VxlanDevice.IMMUTABLE):
        return "recreate"
    if desired != actual:
        return "update"
    return None


def diff(desired: Dataplane, actual: Dataplane) -> Changes:
    dev = device_change(desired.vxlan, actual.vxlan)
    add, remove = {}, {}
    for kind in ENTRY_KINDS:
        want, have = getattr(desired, kind), getattr(actual, kind)
        if dev in ("create", "recreate", "delete"):
            # A new device starts empty; whatever was on a deleted one goes with it.
            have = frozenset(e for e in have if not _on_vxlan(kind, e, actual))
        add[kind], remove[kind] = want - have, have - want
    return Changes(device=dev, add=add, remove=remove)


def _on_vxlan(kind: str, entry, state: Dataplane) -> bool:
    if kind == "routes":
        return state.vxlan is not None and entry.dev == state.vxlan.name
    return True  # addresses, FDB and neighbour entries all live on the VXLAN device


def count_drift(changes: Changes, previous: Dataplane | None, desired: Dataplane) -> int:
    """Changes not explained by a change of the desired state since the last successful sync.

    An entry we still want that had to be added again was lost; an entry we must remove that we
    never wanted was added behind our back. Both are drift. Before the first sync (`previous` is
    None) everything is start-up reconciliation, not drift.
    """
    if previous is None:
        return 0
    n = 0
    if changes.device in ("create", "recreate", "update") and previous.vxlan == desired.vxlan:
        n += 1
    for kind in ENTRY_KINDS:
        before = getattr(previous, kind)
        n += sum(1 for e in changes.add.get(kind, ()) if e in before)
        n += sum(1 for e in changes.remove.get(kind, ()) if e not in before)
    return n

