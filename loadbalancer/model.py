"""LoadBalancer address management as plain data: pools, the Services that draw from them, and
the allocator's decisions. Frozen records built at the edge (loadbalancer.from_api) from API
objects nobody vetted; everything past the edge is typed (ipaddress objects, ints, checked names).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterator, Union

from policy.selector import EVERYTHING, LabelSelector

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# spec.loadBalancerClass values we serve: ours, or none (the cluster's default implementation)
OUR_CLASS = "podwire.io/loadbalancer"
# Service annotations (MetalLB's and Cilium's equivalents: metallb.io/loadBalancerIPs,
# metallb.io/allow-shared-ip, lbipam.cilium.io/ips, lbipam.cilium.io/sharing-key)
ANN_IPS = "podwire.io/loadbalancer-ips"  # requested addresses, comma separated, one per family
ANN_POOL = "podwire.io/loadbalancer-pool"  # draw from this pool only
ANN_SHARING = "podwire.io/allow-shared-ip"  # Services with the same key and disjoint ports may share
# The cloud providers' finalizer (upstream e2e checks it): the Service is not gone before its
# address is released.
FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
CONDITION = "podwire.io/AddressAssigned"  # the Service's status condition (metav1.Condition)

# Condition reasons
ASSIGNED = "Assigned"
PARTLY = "PartlyAssigned"  # PreferDualStack with one family only
NO_POOL = "NoPool"  # no pool serves this Service (selector, family, named pool)
EXHAUSTED = "PoolExhausted"
IN_USE = "AddressInUse"  # requested address held by a Service it cannot share with
NOT_IN_POOL = "AddressNotInPool"  # requested address outside every pool this Service may use
INVALID = "InvalidRequest"  # the annotations cannot be read
NODE_ADDRESS = "AddressOfNode"  # requested address is a node's own
# Pool problems: Invalid, Conflicting (overlaps an older pool), OverlapsCluster (a Service or pod
# CIDR: such an address is routed inside the cluster) make a pool unusable; ContainsNodeAddresses
# does not: those addresses are only never handed out (two hosts answering ARP for one address)
POOL_INVALID, POOL_CONFLICTING, POOL_OVERLAPS_CLUSTER = "Invalid", "Conflicting", "OverlapsCluster"
POOL_HAS_NODE_ADDRESSES = "ContainsNodeAddresses"


@dataclass(frozen=True)
class AddressRange:
    """first..last inclusive, one family."""

    first: IPAddress
    last: IPAddress
    cidr: bool = False  # written as a prefix (its edge addresses are skipped: loadbalancer.allocate)

    def __post_init__(self):
        if self.first.version != self.last.version or int(self.first) > int(self.last):
            raise ValueError(f"{self.first}-{self.last}: not a range")

    @property
    def version(self) -> int:
        return self.first.version

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, ip: object) -> bool:
        return (isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and ip.version == self.version
                and int(self.first) <= int(ip) <= int(self.last))

    def overlaps(self, other: AddressRange) -> bool:
        return (self.version == other.version and int(self.first) <= int(other.last)
                and int(other.first) <= int(self.last))

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True)
class Pool:
    """A LoadBalancerPool (podwire.io/v1alpha1), cluster scoped."""

    name: str
    ranges: tuple[AddressRange, ...]
    selector: LabelSelector = EVERYTHING  # which Services may draw from it
    auto_assign: bool = True  # False: only Services that ask for it (pool annotation or address)
    created: str = ""  # creationTimestamp (RFC 3339 sorts as text): the older of two overlapping pools wins

    def families(self) -> set[int]:
        return {r.version for r in self.ranges}

    def __contains__(self, ip: object) -> bool:
        return any(ip in r for r in self.ranges)


@dataclass(frozen=True)
class LBService:
    """A Service of type LoadBalancer that is ours to serve (class ours or unset)."""

    namespace: str
    name: str
    families: tuple[int, ...]  # spec.ipFamilies in order (the first is the primary)
    family_policy: str = "SingleStack"  # spec.ipFamilyPolicy
    labels: dict = field(default_factory=dict, hash=False, compare=False)
    created: str = ""
    requested: tuple[IPAddress, ...] = ()  # annotation or spec.loadBalancerIP
    pool: str = ""  # annotation: this pool only
    sharing_key: str = ""
    ports: frozenset[tuple[str, int]] = frozenset()  # (protocol, port)
    local: bool = False  # externalTrafficPolicy: Local
    selector: tuple[tuple[str, str], ...] = ()  # spec.selector, sorted (sharing under eTP=Local)
    current: tuple[IPAddress, ...] = ()  # status.loadBalancer.ingress[].ip as found
    request_error: str = ""  # unreadable annotations: reported as InvalidRequest, nothing assigned

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def wanted_families(self) -> tuple[int, ...]:
        """The families to assign: the primary only for SingleStack, else all of spec.ipFamilies."""
        return self.families[:1] if self.family_policy == "SingleStack" else self.families

    def required_families(self) -> tuple[int, ...]:
        """PreferDualStack is satisfied by its primary family alone."""
        return self.families[:1] if self.family_policy != "RequireDualStack" else self.families


@dataclass(frozen=True)
class Decision:
    """The allocator's answer for one Service: its addresses (primary family first) and the
    condition to show."""

    key: str
    addresses: tuple[IPAddress, ...]
    ok: bool
    reason: str
    message: str


@dataclass(frozen=True)
class PoolProblem:
    pool: str
    reason: str  # one of the POOL_* reasons
    message: str
    fatal: bool = True  # the pool serves nothing (False: it serves, minus what the message names)


IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class ClusterAddresses:
    """What a pool must not hand out: networks routed inside the cluster (Service CIDRs, pod
    CIDRs), each with what it is, and the nodes' own addresses, each with its node's name."""

    networks: tuple[tuple[IPNetwork, str], ...] = ()
    nodes: tuple[tuple[IPAddress, str], ...] = ()

    def node_of(self, ip: IPAddress) -> str | None:
        return next((n for a, n in self.nodes if a == ip), None)


def usable_addresses(r: AddressRange, used: set[int]) -> Iterator[int]:
    """The free addresses of a range, lowest first, as ints (skips `used`)."""
    lo, hi = int(r.first), int(r.last)
    for u in sorted(u for u in used if lo <= u <= hi):
        while lo < u:
            yield lo
            lo += 1
        lo = u + 1
    while lo <= hi:
        yield lo
        lo += 1
