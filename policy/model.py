"""What NetworkPolicy enforcement needs to know about pods, namespaces and policies.

Frozen, slotted records with `ipaddress` values and interned label sets / named-port tables, so a
150k-pod snapshot stays small (pods of one template share their `Labels` and `NamedPorts`).
The API's empty-vs-absent rules are kept where they change meaning and folded where the API
defines them as equal:
- `from`/`to` absent or `[]`: every peer -> `Rule.peers == ()`; `ports` absent or `[]`: every
  port -> `Rule.ports == ()`;
- `ingress`/`egress` absent or `[]`: no rule -> `()`; the direction still isolates if its type is
  in `policy_types`;
- `policyTypes` absent or `[]`: Ingress, plus Egress iff there is at least one egress rule;
- peer `namespaceSelector` absent: the policy's own namespace (`None`); `{}`: every namespace;
  peer `podSelector` absent: every pod of the selected namespaces (`None`); `{}`: the same.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Union

from policy.selector import EMPTY_LABELS, Labels, LabelSelector, intern_labels

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PROTOCOLS = ("TCP", "UDP", "SCTP")
INGRESS, EGRESS = "Ingress", "Egress"
TERMINAL_PHASES = ("Succeeded", "Failed")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True, slots=True)
class NamedPort:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True, slots=True, weakref_slot=True)
class NamedPorts:
    """A pod's named container ports (containers and restartable init containers), shared by
    every pod with the same table."""

    ports: tuple[NamedPort, ...] = ()

    def lookup(self, name: str, protocol: str) -> int | None:
        for p in self.ports:
            if p.name == name and p.protocol == protocol:
                return p.port
        return None


NO_NAMED_PORTS = NamedPorts()


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    uid: str = ""
    node: str = ""
    ips: tuple[IPAddress, ...] = ()
    labels: Labels = EMPTY_LABELS
    named_ports: NamedPorts = NO_NAMED_PORTS
    host_network: bool = False
    phase: str = "Running"

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def terminal(self) -> bool:
        """Succeeded/Failed: its IP may already belong to another pod."""
        return self.phase in TERMINAL_PHASES

    @property
    def policed(self) -> bool:
        """Can be a policy subject or a selector peer (hostNetwork pods carry the node's IP)."""
        return not self.host_network and not self.terminal

    def ip_of(self, version: int | None) -> IPAddress | None:
        for ip in self.ips:
            if version is None or ip.version == version:
                return ip
        return None

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Labels = EMPTY_LABELS


@dataclass(frozen=True, slots=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()  # each strictly inside `cidr`, same family

    def contains(self, ip: IPAddress) -> bool:
        if ip.version != self.cidr.version or ip not in self.cidr:
            return False
        return not any(ip in e for e in self.excepts)

    def nets(self) -> tuple[IPNetwork, ...]:
        """`cidr` minus the excepts as disjoint CIDRs, sorted (what a set of prefixes can hold)."""
        out: list[IPNetwork] = [self.cidr]
        for hole in ipaddress.collapse_addresses(self.excepts):  # type: ignore[type-var]
            nxt: list[IPNetwork] = []
            for net in out:
                if hole.subnet_of(net):  # type: ignore[arg-type]
                    nxt.extend(net.address_exclude(hole))  # type: ignore[arg-type]
                elif not net.subnet_of(hole):  # type: ignore[arg-type]
                    nxt.append(net)
            out = nxt
        return tuple(sorted(out))

    def __str__(self) -> str:
        return str(self.cidr) + (f" except {', '.join(map(str, self.excepts))}" if self.excepts else "")


@dataclass(frozen=True, slots=True)
class Peer:
    """Exactly one of: ip_block; or pod_selector and/or namespace_selector (None = absent)."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def __str__(self) -> str:
        if self.ip_block is not None:
            return f"ipBlock {self.ip_block}"
        parts = []
        if self.namespace_selector is not None:
            parts.append(f"namespaces {self.namespace_selector}")
        if self.pod_selector is not None:
            parts.append(f"pods {self.pod_selector}")
        return " and ".join(parts)


@dataclass(frozen=True, slots=True)
class Port:
    """protocol + (number | name | None = every port of the protocol) + optional end of range."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None  # only with a numeric port; >= port

    def __str__(self) -> str:
        if self.port is None:
            return f"{self.protocol}/*"
        if self.end_port is not None:
            return f"{self.protocol}/{self.port}-{self.end_port}"
        return f"{self.protocol}/{self.port}"


@dataclass(frozen=True, slots=True)
class Rule:
    peers: tuple[Peer, ...] = ()  # () = every peer (field absent or [])
    ports: tuple[Port, ...] = ()  # () = every port (field absent or [])


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]  # subset of (INGRESS, EGRESS), after the API's defaulting
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def default_policy_types(policy_types: tuple[str, ...], has_egress_rules: bool) -> tuple[str, ...]:
    """The API server's defaulting: absent or empty -> Ingress, plus Egress iff egress rules exist."""
    if policy_types:
        return policy_types
    return (INGRESS, EGRESS) if has_egress_rules else (INGRESS,)


class Cluster:
    """An immutable snapshot of pods, namespaces and policies, with its indexes built once.

    `pods_by_ip` holds only pods that can be peers (not hostNetwork, not terminal); when two such
    pods claim one address (an IP reused before the old pod's deletion was seen) the one with the
    smaller (namespace, name) wins, so the answer does not depend on input order.
    """

    __slots__ = ("_pods", "_all", "namespaces", "policies", "pods_by_ip", "policies_by_namespace",
                 "pods_by_namespace", "ip_conflicts")
    _pods: tuple[Pod, ...] | None
    _all: dict | None

    def __init__(self, pods: tuple[Pod, ...] | None, namespaces: dict[str, Namespace],
                 policies: tuple[NetworkPolicy, ...], pods_by_ip: dict[IPAddress, Pod],
                 policies_by_namespace: dict[str, tuple[NetworkPolicy, ...]], ip_conflicts: tuple[IPAddress, ...],
                 pods_by_namespace: dict[str, tuple[Pod, ...]] | None = None, all_pods: dict | None = None):
        """Either `pods` (sorted by (namespace, name); the rest is derived), or `pods_by_namespace`
        with `all_pods` (key -> record, unordered; `pods` is then sorted on first use): what
        policy.store's incremental snapshot hands over, so a sync does not sort 150k pods."""
        object.__setattr__(self, "_pods", pods)
        object.__setattr__(self, "_all", all_pods)
        self.namespaces: Mapping[str, Namespace] = MappingProxyType(namespaces)
        self.policies = policies  # sorted by (namespace, name)
        self.pods_by_ip: Mapping[IPAddress, Pod] = MappingProxyType(pods_by_ip)
        self.policies_by_namespace: Mapping[str, tuple[NetworkPolicy, ...]] = MappingProxyType(policies_by_namespace)
        if pods_by_namespace is None:
            by_ns: dict[str, list[Pod]] = {}
            for pod in pods or ():
                if pod.policed:
                    by_ns.setdefault(pod.namespace, []).append(pod)
            pods_by_namespace = {ns: tuple(v) for ns, v in by_ns.items()}
        # policed pods only (the ones selectors can select), sorted by name
        self.pods_by_namespace: Mapping[str, tuple[Pod, ...]] = MappingProxyType(pods_by_namespace)
        self.ip_conflicts = ip_conflicts

    @property
    def pods(self) -> tuple[Pod, ...]:
        """Every pod (hostNetwork and terminal ones too), sorted by (namespace, name)."""
        found = self._pods
        if found is None:
            all_pods = self._all or {}
            found = tuple(all_pods[k] for k in sorted(all_pods))
            object.__setattr__(self, "_pods", found)
        return found

    @classmethod
    def build(cls, pods=(), namespaces=(), policies=()) -> "Cluster":
        """From iterables of Pod, Namespace and NetworkPolicy (later duplicates of a key win)."""
        pod_map = {p.key: p for p in pods}
        ns_map = {n.name: n for n in namespaces}
        pol_map = {p.key: p for p in policies}
        by_ip: dict[IPAddress, Pod] = {}
        conflicts = set()
        for key in sorted(pod_map):
            pod = pod_map[key]
            if not pod.policed:
                continue
            for ip in pod.ips:
                if ip in by_ip:
                    conflicts.add(ip)
                else:
                    by_ip[ip] = pod
        by_ns: dict[str, list[NetworkPolicy]] = {}
        for key in sorted(pol_map):
            by_ns.setdefault(key[0], []).append(pol_map[key])
        return cls(tuple(pod_map[k] for k in sorted(pod_map)), ns_map, tuple(pol_map[k] for k in sorted(pol_map)),
                   by_ip, {ns: tuple(v) for ns, v in by_ns.items()},
                   tuple(sorted(conflicts, key=lambda ip: (ip.version, ip))))

    def __setattr__(self, name, value):
        if name == "pods" or hasattr(self, name):
            raise AttributeError(f"Cluster is immutable: {name}")
        object.__setattr__(self, name, value)

    def namespace_labels(self, name: str) -> Labels:
        """A namespace's labels; one not (yet) seen has only the name label the API server sets."""
        ns = self.namespaces.get(name)
        if ns is not None:
            return ns.labels
        return intern_labels({NAMESPACE_NAME_LABEL: name})

    def pods_in(self, namespace: str) -> tuple[Pod, ...]:
        """The policed pods of a namespace (not hostNetwork, not terminal)."""
        return self.pods_by_namespace.get(namespace, ())

    def policies_in(self, namespace: str) -> tuple[NetworkPolicy, ...]:
        return self.policies_by_namespace.get(namespace, ())

    def pod_at(self, ip: IPAddress) -> Pod | None:
        return self.pods_by_ip.get(ip)
