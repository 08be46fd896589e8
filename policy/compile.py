"""compile_node(): a Cluster snapshot -> this node's Ruleset (isolated pods and allows per direction).

Ingress is enforced on the node of the destination pod, egress on the node of the source pod, so a
node compiles only its own pods as subjects; every policed pod of the cluster can be a peer. The
semantics are policy.verdict's (its helpers are used, not re-implemented); the property test in
tests/unit/test_policy_compile.py checks flow by flow that `flowcheck` over the compiled rulesets
agrees with `verdict`.

An address belongs to the pod that owns it in `Cluster.pods_by_ip` (the dataplane sees addresses
only): a pod that lost an address conflict is neither subject nor peer at that address.

A pod may always reach itself (see policy.verdict): every isolated pod gets, in each direction it
is isolated in, Allow(ip, ip/32 or /128, every protocol) for each address it owns — and, should it
own several of one family, for each pair of them — so a hairpin through a Service to itself passes.

Named ports resolve on the destination: for ingress the selected local pod; for egress each
destination pod separately — also when the rule's peer is an ipBlock or absent, since a flow to an
address that is a pod's is a flow to that pod (verdict does the same). A named port towards an
address that is no pod allows nothing. Cost: selector peers are resolved once per (namespace,
peer) through the namespace index, named ports through a (name, protocol) index of the cluster's
pods, so a node's compile is linear in its subjects' rules times their peers.
"""
from __future__ import annotations

import bisect
import ipaddress
from itertools import chain
from typing import Iterable, NamedTuple

from policy.model import EGRESS, INGRESS, Cluster, IPAddress, IPNetwork, NetworkPolicy, Peer, Pod, Port
from policy.ruleset import Allow, LogConfig, Ruleset
from policy.verdict import isolating, peer_pods, port_range

_EVERYWHERE: dict[int, tuple[IPNetwork, ...]] = {
    4: (ipaddress.IPv4Network("0.0.0.0/0"),), 6: (ipaddress.IPv6Network("::/0"),)}
_ANY_PORT: tuple[tuple[str | None, int, int], ...] = ((None, 1, 65535),)


def _host(ip: IPAddress) -> IPNetwork:
    """ip/32 or ip/128, built from the integer (the tuple form goes through text)."""
    return ipaddress.IPv4Network(int(ip)) if ip.version == 4 else ipaddress.IPv6Network(int(ip))


class _Compiler:
    """Caches over one snapshot: owned addresses, selector peers, the named-port index."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._owned: dict[tuple[str, str], tuple[IPAddress, ...]] = {}
        self._peers: dict[tuple[str | None, Peer], tuple[Pod, ...]] = {}
        self._named: dict[tuple[str, str], tuple[tuple[Pod, int], ...]] | None = None
        self._named_sorted: dict[tuple[str, str, int], tuple[list[int], list[tuple[IPAddress, int]]]] = {}
        self._hosts: dict[IPAddress, IPNetwork] = {}
        self._rule_nets: dict[tuple, list[IPNetwork]] = {}
        self._rule_named: dict[tuple, list[tuple[IPNetwork, int]]] = {}

    def owned(self, pod: Pod) -> tuple[IPAddress, ...]:
        """The pod's addresses that are its own in the snapshot (not lost to an IP conflict)."""
        found = self._owned.get(pod.key)
        if found is None:
            at = self.cluster.pod_at
            found = self._owned[pod.key] = tuple(ip for ip in pod.ips if at(ip) is pod or at(ip) == pod)
        return found

    def self_allows(self, ips: tuple[IPAddress, ...]) -> Iterable[Allow]:
        """A pod may always reach itself: each owned address with each owned address of its family."""
        for ip in ips:
            for other in ips:
                if other.version == ip.version:
                    yield Allow(ip, self.host(other))

    def peer_pods(self, policy: NetworkPolicy, peer: Peer) -> tuple[Pod, ...]:
        key = (policy.namespace if peer.namespace_selector is None else None, peer)
        found = self._peers.get(key)
        if found is None:
            found = self._peers[key] = peer_pods(self.cluster, policy, peer)
        return found

    def host(self, ip: IPAddress) -> IPNetwork:
        found = self._hosts.get(ip)
        if found is None:
            found = self._hosts[ip] = _host(ip)
        return found

    def named(self, name: str, protocol: str) -> tuple[tuple[Pod, int], ...]:
        """Every policed pod declaring this named port, with its number there."""
        if self._named is None:
            index: dict[tuple[str, str], list[tuple[Pod, int]]] = {}
            for pods in self.cluster.pods_by_namespace.values():
                for pod in pods:
                    for np in pod.named_ports.ports:
                        if pod.named_ports.lookup(np.name, np.protocol) == np.port:  # first declaration wins
                            index.setdefault((np.name, np.protocol), []).append((pod, np.port))
            self._named = {k: tuple(v) for k, v in index.items()}
        return self._named.get((name, protocol), ())

    def named_in(self, name: str, protocol: str, version: int, net: IPNetwork) -> list[tuple[IPAddress, int]]:
        """(address, number) of the pods declaring the named port whose own address lies in `net`."""
        key = (name, protocol, version)
        found = self._named_sorted.get(key)
        if found is None:
            pairs = sorted(((ip, number) for pod, number in self.named(name, protocol)
                            for ip in self.owned(pod) if ip.version == version), key=lambda p: int(p[0]))
            found = self._named_sorted[key] = ([int(ip) for ip, _ in pairs], pairs)
        keys, pairs = found
        lo = bisect.bisect_left(keys, int(net.network_address))
        hi = bisect.bisect_right(keys, int(net.broadcast_address))
        return pairs[lo:hi]

    def peer_nets(self, policy: NetworkPolicy, direction: str, index: int, version: int) -> list[IPNetwork]:
        """Where a rule's peers are, in one family (ipBlock: cidr minus excepts; pods: their own /32 or /128)."""
        key = (policy.key, direction, index, version)
        found = self._rule_nets.get(key)
        if found is not None:
            return found
        rule = policy.rules(direction)[index]
        out: list[IPNetwork] = []
        if not rule.peers:
            out.extend(_EVERYWHERE[version])
        for peer in rule.peers:
            if peer.ip_block is not None:
                if peer.ip_block.cidr.version == version:
                    out.extend(peer.ip_block.nets())
                continue
            for pod in self.peer_pods(policy, peer):
                out.extend(self.host(ip) for ip in self.owned(pod) if ip.version == version)
        self._rule_nets[key] = out
        return out

    def named_destinations(self, policy: NetworkPolicy, index: int, rule_port: Port,
                           version: int) -> list[tuple[IPNetwork, int]]:
        """Egress with a named port: (destination /32 or /128, number) for every destination pod the rule's
        peers admit that declares the name."""
        assert isinstance(rule_port.port, str)
        key = (policy.key, index, rule_port, version)
        found = self._rule_named.get(key)
        if found is not None:
            return found
        name, proto = rule_port.port, rule_port.protocol
        rule = policy.egress[index]
        pairs: list[tuple[IPAddress, int]] = []
        if not rule.peers:
            pairs.extend(self.named_in(name, proto, version, _EVERYWHERE[version][0]))
        for peer in rule.peers:
            if peer.ip_block is not None:
                if peer.ip_block.cidr.version == version:
                    for net in peer.ip_block.nets():
                        pairs.extend(self.named_in(name, proto, version, net))
                continue
            for pod in self.peer_pods(policy, peer):
                number = pod.named_ports.lookup(name, proto)
                if number is not None:
                    pairs.extend((ip, number) for ip in self.owned(pod) if ip.version == version)
        found = self._rule_named[key] = [(self.host(ip), number) for ip, number in pairs]
        return found

    def ingress_allows(self, policy: NetworkPolicy, index: int, pod: Pod, ip: IPAddress) -> Iterable[Allow]:
        rule = policy.ingress[index]
        ports: list[tuple[str | None, int, int]] = []
        if not rule.ports:
            ports.extend(_ANY_PORT)
        for rp in rule.ports:
            r = port_range(rp, pod)  # named ports resolve on the selected (destination) pod
            if r is not None:
                ports.append((r[0].lower(), r[1], r[2]))
        if not ports:
            return
        for net in self.peer_nets(policy, INGRESS, index, ip.version):
            for proto, lo, hi in ports:
                yield Allow(ip, net, proto, lo, hi)

    def egress_allows(self, policy: NetworkPolicy, index: int, ip: IPAddress) -> Iterable[Allow]:
        rule = policy.egress[index]
        fixed: list[tuple[str | None, int, int]] = []
        if not rule.ports:
            fixed.extend(_ANY_PORT)
        for rp in rule.ports:
            if isinstance(rp.port, str):
                named_proto = rp.protocol.lower()
                for net, number in self.named_destinations(policy, index, rp, ip.version):
                    yield Allow(ip, net, named_proto, number, number)
            else:
                r = port_range(rp, None)
                assert r is not None
                fixed.append((r[0].lower(), r[1], r[2]))
        if fixed:
            for net in self.peer_nets(policy, EGRESS, index, ip.version):
                for proto, lo, hi in fixed:
                    yield Allow(ip, net, proto, lo, hi)


# Allow entries one pod may have per direction (as Cilium's per-endpoint policy map, 16k by
# default). A policy is written by whoever may edit its namespace: 1,000 ports times an ipBlock with
# 100 excepts is ~100k entries per pod, seconds of compile and nft per sync for the whole node. A pod
# over the budget stays isolated with no allow but itself (fail closed), and the sync says so.
MAX_ALLOWS_PER_POD = 16384


class Overflow(NamedTuple):
    pod: str  # namespace/name
    direction: str
    policies: tuple[str, ...]


def compile_node(cluster: Cluster, node_name: str, log: LogConfig = LogConfig(),  # noqa: B008
                 local: tuple[IPNetwork, ...] = (), overflows: list[Overflow] | None = None,
                 max_allows: int = MAX_ALLOWS_PER_POD) -> Ruleset:
    """This node's Ruleset: its policed pods isolated per direction and what each may exchange.

    Pure and deterministic (the result is sets). Pieces that resolve to nothing (a named port no pod
    declares, a peer selecting no pod) simply add no allow; the isolation stays. `local`: the node's
    pod CIDRs; with them, every owned address of a local pod is `known` (Ruleset.local). A pod whose
    allows in one direction exceed `max_allows` gets none but itself; it is appended to `overflows`."""
    c = _Compiler(cluster)
    isolated: dict[str, set[IPAddress]] = {INGRESS: set(), EGRESS: set()}
    allows: dict[str, set[Allow]] = {INGRESS: set(), EGRESS: set()}
    known: set[IPAddress] = set()
    for pods in cluster.pods_by_namespace.values():
        for pod in pods:
            if pod.node != node_name:
                continue
            ips = c.owned(pod)
            if not ips:
                continue
            if local:
                known.update(ips)
            for direction in (INGRESS, EGRESS):
                policies = isolating(cluster, pod, direction)
                if not policies:
                    continue
                isolated[direction].update(ips)
                found = chain.from_iterable(
                    c.ingress_allows(policy, index, pod, ip) if direction == INGRESS
                    else c.egress_allows(policy, index, ip)
                    for policy in policies for index in range(len(policy.rules(direction))) for ip in ips)
                mine: set[Allow] = set()
                for allow in found:  # bounded work: reading stops once the pod is over budget
                    mine.add(allow)
                    if len(mine) > max_allows:
                        break
                if len(mine) > max_allows:
                    mine.clear()
                    if overflows is not None:
                        overflows.append(Overflow(str(pod), direction, tuple(str(p) for p in policies)))
                allows[direction].update(mine)
                allows[direction].update(c.self_allows(ips))
    return Ruleset(isolated_ingress=frozenset(isolated[INGRESS]), isolated_egress=frozenset(isolated[EGRESS]),
                   ingress=frozenset(allows[INGRESS]), egress=frozenset(allows[EGRESS]), log=log,
                   local=tuple(local), known=frozenset(known))
