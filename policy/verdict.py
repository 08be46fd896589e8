"""verdict(): would this connection's first packet pass NetworkPolicy, and why.

The reference semantics the compiled nft ruleset must agree with, as a pure function over a
`Cluster` snapshot (tests now, an `explain` command later). A connection passes iff its egress
side allows it (the source is not a policed pod, or is not isolated for egress, or some egress
rule of a policy selecting it allows the destination and port) and its ingress side allows it
(the same, seen from the destination). Replies and conntrack are dataplane matters, not modelled.

Endpoints are pods or addresses. An address that is a policed pod's IP *is* that pod (the
dataplane sees only addresses); a hostNetwork or terminal pod counts as its bare address.

A pod may always reach itself (the Kubernetes docs: "a pod cannot block access to itself"): when
both ends are the same policed pod — the pod itself, or addresses that pod owns on both sides — the
flow is allowed whatever policies select it. In podwire such a flow reaches the host only as a
hairpin through a Service (after DNAT, src == dst), which crosses the forward hook; the compiler
allows it with one Allow(ip, ip/32 or /128) per isolated direction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from policy.model import EGRESS, INGRESS, PROTOCOLS, Cluster, IPAddress, NetworkPolicy, Peer, Pod, Port, Rule

Endpoint = Union[Pod, IPAddress]


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    because: str
    policies: tuple[tuple[str, str], ...] = ()  # allowed: the allowing ones; denied: the isolating ones


@dataclass(frozen=True, slots=True)
class _Party:
    pod: Pod | None  # a policed pod, or None for a bare address
    ip: IPAddress | None  # the address the flow uses (None: a pod with no address of the family yet)

    def __str__(self) -> str:
        return str(self.pod) if self.pod is not None else str(self.ip)


def _family(src: Endpoint, dst: Endpoint) -> int | None:
    if not isinstance(dst, Pod):
        return dst.version
    if not isinstance(src, Pod):
        return src.version
    for ip in dst.ips:  # two pods: the first family both have
        if src.ip_of(ip.version) is not None:
            return ip.version
    return None


def _party(cluster: Cluster, end: Endpoint, family: int | None) -> _Party:
    if isinstance(end, Pod):
        if end.policed:
            return _Party(end, end.ip_of(family))
        ip = end.ip_of(family)
        if ip is None:
            return _Party(None, None)
        end = ip
    return _Party(cluster.pod_at(end), end)


def selects(policy: NetworkPolicy, pod: Pod) -> bool:
    """The policy applies to this pod (its namespace, its podSelector; never a hostNetwork or terminal pod)."""
    return pod.policed and pod.namespace == policy.namespace and policy.pod_selector.matches(pod.labels)


def selected_pods(cluster: Cluster, policy: NetworkPolicy) -> tuple[Pod, ...]:
    """The pods the policy applies to (for either of its policy types)."""
    return tuple(p for p in cluster.pods_in(policy.namespace) if policy.pod_selector.matches(p.labels))


def peer_selects(cluster: Cluster, policy: NetworkPolicy, peer: Peer, pod: Pod) -> bool:
    """A selector peer matches this pod (an ipBlock peer matches addresses, never a pod as such)."""
    if peer.ip_block is not None or not pod.policed:
        return False
    if peer.namespace_selector is None:
        if pod.namespace != policy.namespace:
            return False
    elif not peer.namespace_selector.matches(cluster.namespace_labels(pod.namespace)):
        return False
    return peer.pod_selector is None or peer.pod_selector.matches(pod.labels)


def peer_pods(cluster: Cluster, policy: NetworkPolicy, peer: Peer) -> tuple[Pod, ...]:
    """Every pod a selector peer matches, through the namespace index (() for an ipBlock peer)."""
    if peer.ip_block is not None:
        return ()
    if peer.namespace_selector is None:
        spaces: list[str] = [policy.namespace]
    else:
        sel = peer.namespace_selector
        spaces = [ns for ns in sorted(cluster.pods_by_namespace) if sel.matches(cluster.namespace_labels(ns))]
    out: list[Pod] = []
    for ns in spaces:
        pods = cluster.pods_in(ns)
        out.extend(pods if peer.pod_selector is None else (p for p in pods if peer.pod_selector.matches(p.labels)))
    return tuple(out)


def port_range(rule_port: Port, dst: Pod | None) -> tuple[str, int, int] | None:
    """(protocol, first, last) that a rule's port admits towards `dst` (the destination pod, None when the
    destination is no pod); None when it admits nothing there (a named port the pod does not have, or a
    named port towards an address that is no pod)."""
    if rule_port.port is None:
        return (rule_port.protocol, 1, 65535)
    if isinstance(rule_port.port, str):
        number = dst.named_ports.lookup(rule_port.port, rule_port.protocol) if dst is not None else None
        return None if number is None else (rule_port.protocol, number, number)
    return (rule_port.protocol, rule_port.port, rule_port.end_port or rule_port.port)


def _peer_matches(cluster: Cluster, policy: NetworkPolicy, peer: Peer, other: _Party) -> bool:
    if peer.ip_block is not None:
        return other.ip is not None and peer.ip_block.contains(other.ip)
    return other.pod is not None and peer_selects(cluster, policy, peer, other.pod)


def _port_matches(rule_port: Port, dst: _Party, port: int, proto: str) -> bool:
    r = port_range(rule_port, dst.pod)
    return r is not None and r[0] == proto and r[1] <= port <= r[2]


def rule_allows(cluster: Cluster, policy: NetworkPolicy, rule: Rule, other: _Party, dst: _Party,
                port: int, proto: str) -> bool:
    """`other` is the peer (ingress: the source; egress: the destination); `dst` the destination."""
    if rule.peers and not any(_peer_matches(cluster, policy, p, other) for p in rule.peers):
        return False
    return not rule.ports or any(_port_matches(p, dst, port, proto) for p in rule.ports)


def isolating(cluster: Cluster, pod: Pod, direction: str) -> tuple[NetworkPolicy, ...]:
    """The policies that select `pod` for `direction` (non-empty: the pod is isolated)."""
    return tuple(p for p in cluster.policies_in(pod.namespace) if direction in p.policy_types and selects(p, pod))


@dataclass(frozen=True, slots=True)
class _Side:
    allowed: bool
    because: str
    policies: tuple[tuple[str, str], ...]


def _side(cluster: Cluster, direction: str, subject: _Party, other: _Party, dst: _Party,
          port: int, proto: str) -> _Side:
    word, prep = ("ingress", "to") if direction == INGRESS else ("egress", "from")
    pod = subject.pod
    if pod is None:
        return _Side(True, f"{word} {prep} {subject}: not a pod, not policed", ())
    pols = isolating(cluster, pod, direction)
    if not pols:
        return _Side(True, f"{word} {prep} {pod}: no policy isolates it for {word}", ())
    allowing = []
    for pol in pols:
        for i, rule in enumerate(pol.rules(direction)):
            if rule_allows(cluster, pol, rule, other, dst, port, proto):
                allowing.append((pol, i))
                break
    if allowing:
        pol, i = allowing[0]
        also = "".join(f", {p} ({word} rule {j})" for p, j in allowing[1:])
        return _Side(True, f"{word} {prep} {pod} allowed by {pol} ({word} rule {i}){also}",
                     tuple(p.key for p, _ in allowing))
    names = ", ".join(str(p) for p in pols)
    return _Side(False, f"{word} {prep} {pod} denied: namespace {pod.namespace} pod {pod.name} is isolated for "
                        f"{word} by policies [{names}]; none allows {other} on {proto}/{port}",
                 tuple(p.key for p in pols))


def verdict(cluster: Cluster, src: Endpoint, dst: Endpoint, port: int, proto: str = "TCP") -> Verdict:
    """Would a new connection src -> dst:port/proto pass NetworkPolicy (after Service DNAT)?"""
    if proto not in PROTOCOLS:
        raise ValueError(f"protocol {proto!r} not one of {PROTOCOLS}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port {port!r} not in 1..65535")
    family = _family(src, dst)
    s, d = _party(cluster, src, family), _party(cluster, dst, family)
    if s.pod is not None and d.pod is not None and s.pod.key == d.pod.key:
        return Verdict(True, f"{s.pod} -> {d.pod}: a pod may always reach itself, whatever policies select it", ())
    egress = _side(cluster, EGRESS, s, d, d, port, proto)
    ingress = _side(cluster, INGRESS, d, s, d, port, proto)
    if egress.allowed and ingress.allowed:
        return Verdict(True, f"{egress.because}; {ingress.because}",
                       tuple(dict.fromkeys(egress.policies + ingress.policies)))
    denied = [side for side in (egress, ingress) if not side.allowed]
    return Verdict(False, "; ".join(side.because for side in denied),
                   tuple(dict.fromkeys(k for side in denied for k in side.policies)))
