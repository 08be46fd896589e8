"""The allocator: pools and LoadBalancer Services -> each Service's addresses, as a pure function.

It is run whole on every sync by the one daemon that holds the allocator Lease. Its only memory
is the Services' own status: addresses a Service already shows are kept while they stay valid,
so a restart or a failover of the allocator changes no address (state lives in the API, not in
a process). Order makes it deterministic: Services that hold addresses keep them first, then the
rest claim in creation order (oldest first), so a newer Service can never take an older one's
address, whatever order the events came in.

Rules (what MetalLB and Cilium users expect):
- a pool serves a Service when its serviceSelector matches the Service's labels; a pool with
  autoAssign false only serves Services that name it or ask for one of its addresses;
- requested addresses (annotation, or the deprecated spec.loadBalancerIP) must lie in such a pool;
- one address per family in spec.ipFamilies (the primary only for SingleStack);
  RequireDualStack gets both or nothing, PreferDualStack at least its primary;
- an address is shared only by Services with the same sharing key and disjoint ports, and under
  externalTrafficPolicy: Local only by Services with the same selector (one node answers for the
  address: it must have the endpoints of all of them);
- of two overlapping pools the older serves, the newer is reported Conflicting and unused;
- a pool overlapping a Service or pod CIDR is reported OverlapsCluster and unused (the cluster
  routes those addresses inside); a node's own address in a pool is never handed out (the pool
  says so: ContainsNodeAddresses), and a Service asking for one is refused (AddressOfNode);
- an IPv4 CIDR pool skips its network and broadcast addresses, an IPv6 one its subnet-router
  anycast address (the range form "a-b" gives every address from a to b).
"""
from __future__ import annotations

import ipaddress
from typing import Iterable, Sequence

from .model import (
    ASSIGNED,
    EXHAUSTED,
    IN_USE,
    INVALID,
    NO_POOL,
    NODE_ADDRESS,
    NOT_IN_POOL,
    PARTLY,
    POOL_CONFLICTING,
    POOL_HAS_NODE_ADDRESSES,
    POOL_OVERLAPS_CLUSTER,
    ClusterAddresses,
    Decision,
    IPAddress,
    LBService,
    Pool,
    PoolProblem,
    usable_addresses,
)

FAMILY = {4: "IPv4", 6: "IPv6"}
NO_CLUSTER = ClusterAddresses()  # nothing known to keep out (unit tests, a cluster not yet listed)


def _overlaps_network(p: Pool, net) -> bool:
    return any(r.version == net.version and int(r.first) <= int(net[-1]) and int(net[0]) <= int(r.last)
               for r in p.ranges)


def usable_pools(pools: Iterable[Pool], cluster: ClusterAddresses = NO_CLUSTER
                 ) -> tuple[list[Pool], list[PoolProblem]]:
    """Pools in the order they serve (oldest first, then by name), without those that overlap
    an older one or a network of the cluster; pools holding node addresses serve, with a note."""
    usable: list[Pool] = []
    problems: list[PoolProblem] = []
    for p in sorted(pools, key=lambda p: (p.created, p.name)):
        inside = next((what for net, what in cluster.networks if _overlaps_network(p, net)), None)
        clash = next((q for q in usable if any(r.overlaps(s) for r in p.ranges for s in q.ranges)), None)
        if inside is not None:
            problems.append(PoolProblem(p.name, POOL_OVERLAPS_CLUSTER,
                                        f"overlaps the {inside}: the cluster routes those addresses inside"))
        elif clash is not None:
            problems.append(PoolProblem(p.name, POOL_CONFLICTING, f"overlaps pool {clash.name}, which is older"))
        else:
            usable.append(p)
            nodes = [f"{ip} (node {name})" for ip, name in cluster.nodes if ip in p]
            if nodes:
                problems.append(PoolProblem(p.name, POOL_HAS_NODE_ADDRESSES,
                                            f"holds node addresses, never assigned: {', '.join(nodes[:8])}"
                                            + (f" and {len(nodes) - 8} more" if len(nodes) > 8 else ""),
                                            fatal=False))
    return usable, problems


class _Holders:
    """Who holds each address in this allocation, and the used addresses per family as ints."""

    def __init__(self, cluster: ClusterAddresses = NO_CLUSTER):
        self.by_ip: dict[IPAddress, list[LBService]] = {}
        self.used: dict[int, set[int]] = {4: set(), 6: set()}
        self.nodes = {ip: name for ip, name in cluster.nodes}
        for ip in self.nodes:  # never handed out, never kept
            self.used[ip.version].add(int(ip))

    def can_share(self, ip: IPAddress, svc: LBService) -> bool:
        if ip in self.nodes:
            return False
        for h in self.by_ip.get(ip, ()):
            if h.key == svc.key:
                continue
            if not svc.sharing_key or h.sharing_key != svc.sharing_key or h.ports & svc.ports:
                return False
            if (h.local or svc.local) and h.selector != svc.selector:
                return False
        return True

    def shared_candidates(self, svc: LBService, family: int) -> list[IPAddress]:
        """Addresses held by Services with svc's sharing key (MetalLB prefers them over a new one)."""
        if not svc.sharing_key:
            return []
        return sorted((ip for ip, hs in self.by_ip.items()
                       if ip.version == family and any(h.sharing_key == svc.sharing_key for h in hs)),
                      key=int)

    def take(self, ip: IPAddress, svc: LBService) -> None:
        self.by_ip.setdefault(ip, []).append(svc)
        self.used[ip.version].add(int(ip))

    def release(self, ip: IPAddress, svc: LBService) -> None:
        hs = self.by_ip.get(ip, [])
        hs[:] = [h for h in hs if h.key != svc.key]
        if not hs:
            self.by_ip.pop(ip, None)
            if ip not in self.nodes:
                self.used[ip.version].discard(int(ip))


def _serving(pools: Sequence[Pool], svc: LBService, *, explicit: bool) -> list[Pool]:
    """The pools svc may draw from; `explicit`: for an address it asked for (autoAssign ignored)."""
    out = []
    for p in pools:
        if svc.pool and p.name != svc.pool:
            continue
        if not p.selector.matches(svc.labels):
            continue
        if not (p.auto_assign or explicit or svc.pool):
            continue
        out.append(p)
    return out


def _skip_edges(p: Pool, family: int) -> set[int]:
    """A CIDR pool's network and broadcast (IPv4) or subnet-router anycast (IPv6) addresses
    (prefixes of 4 addresses or more: a /31, /32, /127 or /128 gives all it has)."""
    out: set[int] = set()
    for r in p.ranges:
        if r.cidr and r.version == family and r.size >= 4:
            out.add(int(r.first))
            if family == 4:
                out.add(int(r.last))
    return out


def _valid_current(ip: IPAddress, svc: LBService, pools: Sequence[Pool], holders: _Holders) -> bool:
    if ip.version not in svc.wanted_families():
        return False
    if svc.requested and ip not in svc.requested:
        return False
    explicit = ip in svc.requested
    if not any(ip in p and int(ip) not in _skip_edges(p, ip.version) for p in _serving(pools, svc, explicit=explicit)):
        # an address of a pool the Service may no longer use (pool deleted, selector changed)
        return False
    return holders.can_share(ip, svc)


def _claim(svc: LBService, family: int, pools: Sequence[Pool], holders: _Holders) -> tuple[IPAddress | None, str, str]:
    """One address of `family` for svc: (address, reason, message); address None on failure."""
    asked = [ip for ip in svc.requested if ip.version == family]
    if asked:
        ip = asked[0]
        if ip in holders.nodes:
            return None, NODE_ADDRESS, f"{ip} is the address of node {holders.nodes[ip]}"
        if not any(ip in p for p in _serving(pools, svc, explicit=True)):
            return None, NOT_IN_POOL, f"{ip} is in no pool this Service may use"
        if not holders.can_share(ip, svc):
            others = ", ".join(h.key for h in holders.by_ip.get(ip, []))
            return None, IN_USE, f"{ip} is used by {others}"
        return ip, ASSIGNED, ""
    serving = [p for p in _serving(pools, svc, explicit=False) if family in p.families()]
    if not serving:
        where = f"pool {svc.pool}" if svc.pool else "a pool"
        return None, NO_POOL, f"no {FAMILY[family]} addresses in {where} that serves this Service"
    for ip in holders.shared_candidates(svc, family):
        if any(ip in p for p in serving) and holders.can_share(ip, svc):
            return ip, ASSIGNED, ""
    for p in serving:
        skip = _skip_edges(p, family) | holders.used[family]
        for r in p.ranges:
            if r.version == family:
                for n in usable_addresses(r, skip):
                    return ipaddress.ip_address(n) if family == 4 else ipaddress.IPv6Address(n), ASSIGNED, ""
    names = ", ".join(p.name for p in serving)
    return None, EXHAUSTED, f"no free {FAMILY[family]} address in {names}"


def allocate(pools: Iterable[Pool], services: Iterable[LBService], cluster: ClusterAddresses = NO_CLUSTER
             ) -> tuple[dict[str, Decision], list[PoolProblem]]:
    """Every Service's decision (by namespace/name) and what is wrong with pools."""
    usable, problems = usable_pools(pools, cluster)
    services = sorted(services, key=lambda s: (s.created, s.key))
    holders = _Holders(cluster)
    kept: dict[str, list[IPAddress]] = {}
    for svc in services:  # pass 1: what Services already show stays theirs while it is valid
        if svc.request_error:
            continue
        mine: list[IPAddress] = []
        for ip in svc.current:
            if ip.version not in {m.version for m in mine} and _valid_current(ip, svc, usable, holders):
                holders.take(ip, svc)
                mine.append(ip)
        kept[svc.key] = mine
    decisions: dict[str, Decision] = {}
    for svc in services:  # pass 2: the missing families, oldest Service first
        if svc.request_error:
            decisions[svc.key] = Decision(svc.key, (), False, INVALID, svc.request_error)
            continue
        got: dict[int, IPAddress] = {ip.version: ip for ip in kept[svc.key]}
        failures: list[tuple[int, str, str]] = []
        for family in svc.wanted_families():
            if family in got:
                continue
            claimed, reason, message = _claim(svc, family, usable, holders)
            if claimed is None:
                failures.append((family, reason, message))
            else:
                holders.take(claimed, svc)
                got[family] = claimed
        missing_required = [f for f in failures if f[0] in svc.required_families()]
        if missing_required:  # all or nothing: give back what this Service holds
            for ip in got.values():
                holders.release(ip, svc)
            _, reason, message = missing_required[0]
            decisions[svc.key] = Decision(svc.key, (), False, reason, message)
            continue
        addresses = tuple(got[f] for f in svc.wanted_families() if f in got)
        if failures:
            _, _, message = failures[0]
            decisions[svc.key] = Decision(svc.key, addresses, True, PARTLY, message)
        else:
            decisions[svc.key] = Decision(svc.key, addresses, True, ASSIGNED,
                                          "assigned " + ", ".join(map(str, addresses)))
    return decisions, problems
