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

A daemon compiles with one NodeCompiler across syncs: the same result as compile_node, but only the
local pods whose inputs changed are recompiled, and within a pod only the rules whose peers changed
(what changed is told by object identity; tests/unit/test_policy_incremental.py proves the equality
over random histories).
"""
from __future__ import annotations

import bisect
import ipaddress
from itertools import chain, count
from typing import Iterable, NamedTuple

from policy.model import EGRESS, INGRESS, Cluster, IPAddress, IPNetwork, NetworkPolicy, Peer, Pod, Port
from policy.ruleset import Allow, LogConfig, Ruleset, trusted_allow, trusted_allows
from policy.verdict import isolating, peer_pods, port_range, selects

_EVERYWHERE: dict[int, tuple[IPNetwork, ...]] = {
    4: (ipaddress.IPv4Network("0.0.0.0/0"),), 6: (ipaddress.IPv6Network("::/0"),)}
_ANY_PORT: tuple[tuple[str | None, int, int], ...] = ((None, 1, 65535),)


_DELTA_ABOVE = 16  # peer addresses in a rule above which a change is applied as a delta
_EPOCHS = count()  # a _Compiler that starts over gets a new epoch: generations before it mean nothing


def _host(ip: IPAddress) -> IPNetwork:
    """ip/32 or ip/128, built from the integer (the tuple form goes through text)."""
    return ipaddress.IPv4Network(int(ip)) if ip.version == 4 else ipaddress.IPv6Network(int(ip))


class _Compiler:
    """The pieces of a compile, cached across snapshots (see NodeCompiler): selector peers per
    (namespace scope, peer) while the namespaces they read are unchanged, a rule's peer addresses
    and named destinations while the policy and those peers are the very same objects, the
    named-port index while no pod changed. Owned addresses are per snapshot.

    Change detection is by identity: the Store converts an object once per event and a snapshot
    reuses the records of unchanged objects, so a namespace whose policed pods are the same objects
    in the same order (Cluster sorts them by name) is unchanged."""

    def __init__(self) -> None:
        self.epoch = next(_EPOCHS)
        self.cluster: Cluster = Cluster.build()
        self._gen: dict[str, int] = {}  # per namespace: bumped when its policed pods change
        self._ns_gen = 0  # bumped when namespace labels (or the namespaces holding pods) change
        self._all_gen = 0  # bumped when any pod changes (the named-port index)
        self._prev_pods: dict[str, tuple[Pod, ...]] = {}
        self._prev_namespaces: dict[str, object] = {}
        self._conflicts = False
        self._owned: dict[tuple[str, str], tuple[IPAddress, ...]] = {}
        self._peers: dict[tuple[str | None, Peer], tuple[tuple, tuple[Pod, ...]]] = {}  # -> (deps, pods)
        # the same, by the Peer object (no hashing of selectors) while no pod or namespace changed
        self._peers_by_id: dict[tuple[str | None, int], tuple[Peer, tuple[int, int], tuple[Pod, ...]]] = {}
        self._named: dict[tuple[str, str], tuple[tuple[Pod, int], ...]] | None = None
        self._named_gen = -1
        self._named_sorted: dict[tuple[str, str, int], tuple[list[int], list[tuple[IPAddress, int]]]] = {}
        self._hosts: dict[IPAddress, IPNetwork] = {}
        self._rule_nets: dict[tuple, tuple[NetworkPolicy, tuple, list[IPNetwork]]] = {}
        self._rule_named: dict[tuple, tuple[NetworkPolicy, tuple, list[tuple[IPNetwork, int]]]] = {}
        self._this_sync: dict[tuple, tuple[NetworkPolicy, list[IPNetwork]]] = {}  # peer_nets within one snapshot
        self._pod_hosts: dict[tuple[tuple[str, str], int], tuple[Pod, tuple[IPNetwork, ...]]] = {}
        self._reads: dict[tuple[int, str], tuple[NetworkPolicy, int, tuple[frozenset[str], bool, bool]]] = {}

    def begin(self, cluster: Cluster) -> None:
        """Take a new snapshot: bump the generations of what changed since the last one."""
        conflicts = bool(cluster.ip_conflicts)
        if conflicts or self._conflicts:  # an address conflict moves ownership across namespaces: start over
            self.__init__()  # type: ignore[misc]
        self._conflicts = conflicts
        self.cluster = cluster
        self._owned = {}
        self._this_sync = {}
        self._hosts_this_sync: dict[tuple[int, int], tuple[tuple[Pod, ...], list[IPNetwork]]] = {}
        self._delta_this_sync: dict[tuple[int, int], tuple[list, list, tuple[list, list]]] = {}
        now = cluster.pods_by_namespace
        changed = False
        for ns in set(now) | set(self._prev_pods):
            new, old = now.get(ns, ()), self._prev_pods.get(ns, ())
            if not _identical(new, old):
                self._gen[ns] = self._gen.get(ns, 0) + 1
                changed = True
        if changed:
            self._all_gen += 1
        if now.keys() != self._prev_pods.keys() or cluster.namespaces.keys() != self._prev_namespaces.keys() \
                or any(v is not self._prev_namespaces[k] for k, v in cluster.namespaces.items()):
            self._ns_gen += 1
        self._prev_pods = dict(now)
        self._prev_namespaces = dict(cluster.namespaces)
        if len(self._hosts) > 1_000_000:  # addresses come and go: bound the memos
            self._hosts.clear()
        if len(self._pod_hosts) > 2 * len(cluster.pods_by_ip) + 1000:
            self._pod_hosts.clear()

    def reads(self, policy: NetworkPolicy, direction: str) -> tuple[frozenset[str], bool, bool]:
        """What a policy's rules in one direction read of the cluster: (the namespaces whose pods
        its selector peers see, whether that set comes from namespace labels, whether it reads the
        cluster-wide named-port index). Valid while namespace labels are unchanged (`_ns_gen`)."""
        key = (id(policy), direction)
        hit = self._reads.get(key)
        if hit is not None and hit[0] is policy and hit[1] == self._ns_gen:
            return hit[2]
        spaces: set[str] = set()
        by_labels = everything = False
        for rule in policy.rules(direction):
            for peer in rule.peers:
                if peer.ip_block is not None:
                    continue
                sel = peer.namespace_selector
                if sel is None:
                    spaces.add(policy.namespace)
                else:
                    by_labels = True
                    labels = self.cluster.namespace_labels
                    spaces.update(ns for ns in self.cluster.pods_by_namespace if sel.matches(labels(ns)))
            if direction == EGRESS and any(isinstance(rp.port, str) for rp in rule.ports) \
                    and (not rule.peers or any(peer.ip_block is not None for peer in rule.peers)):
                everything = True
        found = (frozenset(spaces), by_labels, everything)
        self._reads[key] = (policy, self._ns_gen, found)
        return found

    def stamp(self, policies: tuple[NetworkPolicy, ...], direction: str) -> tuple:
        """The generations a local pod's allows from `policies` depend on (besides the pod record
        and the policies themselves); `fresh(stamp)` tells whether they still hold."""
        spaces: set[str] = set()
        by_labels = everything = False
        for policy in policies:
            s, b, e = self.reads(policy, direction)
            spaces |= s
            by_labels |= b
            everything |= e
        gen = self._gen
        return (self.epoch, self._ns_gen if by_labels else -1, self._all_gen if everything else -1,
                tuple((ns, gen.get(ns, 0)) for ns in spaces))

    def fresh(self, stamp: tuple) -> bool:
        epoch, ns_gen, all_gen, spaces = stamp
        if epoch != self.epoch or self._conflicts:
            return False
        if ns_gen != -1 and ns_gen != self._ns_gen or all_gen != -1 and all_gen != self._all_gen:
            return False
        gen = self._gen
        return all(gen.get(ns, 0) == g for ns, g in spaces)

    def prune(self, cluster: Cluster) -> None:
        """Forget entries of policies that are gone or replaced (the caches are keyed by name)."""
        current = {id(p) for p in cluster.policies}
        for memo in (self._rule_nets, self._rule_named):
            for key in [k for k, hit in memo.items() if id(hit[0]) not in current]:
                del memo[key]
        if len(self._peers) > 4 * sum(len(r.peers) for p in cluster.policies
                                      for d in (INGRESS, EGRESS) for r in p.rules(d)) + 1000:
            self._peers.clear()
        if len(self._peers_by_id) > len(self._peers) + 1000:
            self._peers_by_id.clear()
        for key in [k for k, hit in self._reads.items() if id(hit[0]) not in current]:
            del self._reads[key]

    def owned(self, pod: Pod) -> tuple[IPAddress, ...]:
        """The pod's addresses that are its own in the snapshot (not lost to an IP conflict)."""
        if not self._conflicts and pod.policed:  # every address of a policed pod is its own
            return pod.ips
        found = self._owned.get(pod.key)
        if found is None:
            at = self.cluster.pod_at
            found = self._owned[pod.key] = tuple(ip for ip in pod.ips if at(ip) is pod or at(ip) == pod)
        return found

    def pod_hosts(self, pod: Pod, version: int) -> tuple[IPNetwork, ...]:
        """The pod's own addresses of one family as /32 or /128, the same objects while the record is
        (so a rebuilt peer list compares equal to the old one at identity speed)."""
        key = (pod.key, version)
        hit = self._pod_hosts.get(key)
        if hit is not None and hit[0] is pod and not self._conflicts:
            return hit[1]
        found = tuple(self.host(ip) for ip in self.owned(pod) if ip.version == version)
        self._pod_hosts[key] = (pod, found)
        return found

    def self_allows(self, ips: tuple[IPAddress, ...]) -> Iterable[Allow]:
        """A pod may always reach itself: each owned address with each owned address of its family."""
        for ip in ips:
            for other in ips:
                if other.version == ip.version:
                    yield Allow(ip, self.host(other))

    def peer_pods(self, policy: NetworkPolicy, peer: Peer) -> tuple[Pod, ...]:
        """verdict.peer_pods, the same tuple object while the namespaces it read are unchanged."""
        scope = policy.namespace if peer.namespace_selector is None else None
        fast = self._peers_by_id.get((scope, id(peer)))
        stamp = (self._all_gen, self._ns_gen)
        if fast is not None and fast[0] is peer and fast[1] == stamp:  # no pod or namespace changed since
            return fast[2]
        key = (scope, peer)
        hit = self._peers.get(key)
        deps: tuple
        if hit is not None:
            deps, found = hit
            if scope is not None:
                if deps[0] == self._gen.get(scope, 0):
                    self._peers_by_id[(scope, id(peer))] = (peer, stamp, found)
                    return found
            elif deps[0] == self._ns_gen and all(self._gen.get(ns, 0) == g for ns, g in deps[1]):
                self._peers_by_id[(scope, id(peer))] = (peer, stamp, found)
                return found
        found = peer_pods(self.cluster, policy, peer)
        if hit is not None and _identical(hit[1], found):
            found = hit[1]  # the same pods: keep the object, so what was built from it stays valid
        if scope is not None:
            deps = (self._gen.get(scope, 0),)
        else:
            sel = peer.namespace_selector
            assert sel is not None
            spaces = [ns for ns in self.cluster.pods_by_namespace if sel.matches(self.cluster.namespace_labels(ns))]
            deps = (self._ns_gen, tuple((ns, self._gen.get(ns, 0)) for ns in spaces))
        self._peers[key] = (deps, found)
        self._peers_by_id[(scope, id(peer))] = (peer, stamp, found)
        return found

    def _peer_deps(self, policy: NetworkPolicy, rule) -> tuple:
        """The peer results a rule's addresses come from (identity tells a change)."""
        return tuple(self.peer_pods(policy, peer) for peer in rule.peers if peer.ip_block is None)

    def host(self, ip: IPAddress) -> IPNetwork:
        found = self._hosts.get(ip)
        if found is None:
            found = self._hosts[ip] = _host(ip)
        return found

    def named(self, name: str, protocol: str) -> tuple[tuple[Pod, int], ...]:
        """Every policed pod declaring this named port, with its number there."""
        if self._named is None or self._named_gen != self._all_gen:
            self._named_sorted = {}
            self._named_gen = self._all_gen
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
        self.named(name, protocol)  # (re)builds the index and clears this memo when pods changed
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
        memo = self._this_sync.get(key)
        if memo is not None and memo[0] is policy:  # every local pod a policy selects asks again
            return memo[1]
        rule = policy.rules(direction)[index]
        deps = self._peer_deps(policy, rule)
        hit = self._rule_nets.get(key)
        if hit is not None and hit[0] is policy and _identical(hit[1], deps):
            self._this_sync[key] = (policy, hit[2])
            return hit[2]
        out: list[IPNetwork] = []
        if not rule.peers:
            out.extend(_EVERYWHERE[version])
        elif len(deps) == len(rule.peers) == 1:  # one selector peer, as most rules: shared with every
            out = self._hosts_of(deps[0], version)  # rule whose peer selects the same pods
        for peer in rule.peers if len(deps) != 1 or len(rule.peers) != 1 else ():
            if peer.ip_block is not None:
                if peer.ip_block.cidr.version == version:
                    out.extend(peer.ip_block.nets())
                continue
            for pod in self.peer_pods(policy, peer):
                out.extend(self.pod_hosts(pod, version))
        if hit is not None and hit[2] == out:
            out = hit[2]  # the same addresses (e.g. a peer pod's labels changed, not its address): keep the object
        self._rule_nets[key] = (policy, deps, out)
        self._this_sync[key] = (policy, out)
        return out

    def single_peer(self, policy: NetworkPolicy, direction: str, index: int) -> bool:
        """The rule's addresses come from one selector peer (peer_nets shares _hosts_of's list):
        one object per address, no address twice, so a change is told by the objects' ids."""
        peers = policy.rules(direction)[index].peers
        return len(peers) == 1 and peers[0].ip_block is None

    def nets_delta(self, old: list[IPNetwork], new: list[IPNetwork]) -> tuple[list[IPNetwork], list[IPNetwork]]:
        """(in old only, in new only) by object identity, once per sync for every local pod whose
        rule went from `old` to `new`."""
        key = (id(old), id(new))
        hit = self._delta_this_sync.get(key)
        if hit is not None and hit[0] is old and hit[1] is new:
            return hit[2]
        in_old, in_new = set(map(id, old)), set(map(id, new))
        found = ([n for n in old if id(n) not in in_new], [n for n in new if id(n) not in in_old])
        self._delta_this_sync[key] = (old, new, found)
        return found

    def _hosts_of(self, pods: tuple[Pod, ...], version: int) -> list[IPNetwork]:
        """The own addresses of `pods` in one family, built once per sync per peer result (many
        policies' rules name the same peer: every namespace's `from: team=x` rule, say)."""
        key = (id(pods), version)
        hit = self._hosts_this_sync.get(key)
        if hit is not None and hit[0] is pods:
            return hit[1]
        out: list[IPNetwork] = []
        for pod in pods:
            out.extend(self.pod_hosts(pod, version))
        self._hosts_this_sync[key] = (pods, out)
        return out

    def named_destinations(self, policy: NetworkPolicy, index: int, rule_port: Port,
                           version: int) -> list[tuple[IPNetwork, int]]:
        """Egress with a named port: (destination /32 or /128, number) for every destination pod the rule's
        peers admit that declares the name."""
        assert isinstance(rule_port.port, str)
        key = (policy.key, index, rule_port, version)
        rule = policy.egress[index]
        deps = self._peer_deps(policy, rule)
        if not rule.peers or any(peer.ip_block is not None for peer in rule.peers):
            deps += (self._all_gen,)  # reads the cluster-wide named-port index
        hit = self._rule_named.get(key)
        if hit is not None and hit[0] is policy and len(hit[1]) == len(deps) \
                and all(a is b or a == b for a, b in zip(hit[1], deps, strict=True)):
            return hit[2]
        name, proto = rule_port.port, rule_port.protocol
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
        found = [(self.host(ip), number) for ip, number in pairs]
        if hit is not None and hit[2] == found:
            found = hit[2]
        self._rule_named[key] = (policy, deps, found)
        return found

    def pod_deps(self, policy: NetworkPolicy, direction: str, ips: tuple[IPAddress, ...]) -> tuple:
        """What a local pod's allows from one policy are made of besides the pod and the policy: the
        cached peer addresses and named destinations it reads (the same objects: nothing changed)."""
        out: list = []
        versions = {ip.version for ip in ips}
        for index, rule in enumerate(policy.rules(direction)):
            for v in versions:
                out.append(self.peer_nets(policy, direction, index, v))
                if direction == EGRESS:
                    for rp in rule.ports:
                        if isinstance(rp.port, str):
                            out.append(self.named_destinations(policy, index, rp, v))
        return tuple(out)

    def rule_ports(self, policy: NetworkPolicy, direction: str, index: int,
                   pod: Pod) -> tuple[tuple[tuple[str | None, int, int], ...], tuple[Port, ...]]:
        """(the rule's (protocol, first, last) towards every peer, its egress named ports). Ingress
        named ports resolve on the selected (destination) pod; egress ones per destination pod
        (named_destinations). A rule without ports: every protocol and port."""
        rule = policy.rules(direction)[index]
        if not rule.ports:
            return _ANY_PORT, ()
        fixed: list[tuple[str | None, int, int]] = []
        named: list[Port] = []
        for rp in rule.ports:
            if direction == EGRESS and isinstance(rp.port, str):
                named.append(rp)
                continue
            r = port_range(rp, pod if direction == INGRESS else None)
            if r is not None:
                fixed.append((r[0].lower(), r[1], r[2]))
        return tuple(fixed), tuple(named)


class _RuleResult(NamedTuple):
    """One rule's allows for one local pod address, kept per peer network so that a change of the
    rule's peers rebuilds only the allows of the peers that came or went."""
    pod: Pod
    policy: NetworkPolicy
    ports: tuple
    nets: list  # the peer_nets object it was built from
    named: tuple  # the named_destinations lists it was built from
    by_net: dict
    allows: frozenset


# Allow entries one pod may have per direction (as Cilium's per-endpoint policy map, 16k by
# default). A policy is written by whoever may edit its namespace: 1,000 ports times an ipBlock with
# 100 excepts is ~100k entries per pod, seconds of compile and nft per sync for the whole node. A pod
# over the budget stays isolated with no allow but itself (fail closed), and the sync says so.
MAX_ALLOWS_PER_POD = 16384


class Overflow(NamedTuple):
    pod: str  # namespace/name
    direction: str
    policies: tuple[str, ...]


class _PodResult(NamedTuple):
    """One local pod's compiled policy in one direction, with what it was made of."""
    pod: Pod
    policies: tuple[NetworkPolicy, ...]
    deps: tuple
    groups: dict[IPAddress, frozenset[Allow]]  # per owned address (Ruleset.groups)
    overflow: Overflow | None


class NodeCompiler:
    """compile_node with a memory: `compile(cluster)` returns what compile_node returns, but
    recomputes only the local pods whose inputs changed since the previous call — the pod record,
    the policies selecting it, and the peer addresses and named destinations their rules read (all
    compared by identity; see _Compiler). An unchanged pod keeps its very allow frozensets, which
    lets policy.ruleset.ElementCache reuse its rendered elements. One instance per agent; not
    thread-safe (the agent's sync lock serialises it)."""

    def __init__(self, node_name: str, max_allows: int = MAX_ALLOWS_PER_POD):
        self.node_name, self.max_allows = node_name, max_allows
        self._c = _Compiler()
        self._isolating: dict[tuple[tuple[str, str], str], tuple[Pod, tuple, tuple[NetworkPolicy, ...]]] = {}
        self._pods: dict[tuple[tuple[str, str], str], _PodResult] = {}
        # (pod key, direction) -> (policy key, rule index, address) -> that rule's allows
        self._rules: dict[tuple[tuple[str, str], str], dict[tuple, _RuleResult]] = {}
        # per namespace: (its pods tuple, the local ones): a sync walks only namespaces that changed
        self._local: dict[str, tuple[tuple[Pod, ...], tuple[Pod, ...]]] = {}
        # (pod key, direction) -> (pod, policies of its namespace, stamp, result or None if not
        # isolated): the pod is skipped while all three are unchanged (no pod_deps walk at all)
        self._fast: dict[tuple[tuple[str, str], str], tuple[Pod, tuple, tuple, _PodResult | None]] = {}
        self._syncs = 0
        self.recompiled = 0  # pods (per direction) compiled afresh by the last call, for tests and metrics

    def _isolating_for(self, cluster: Cluster, pod: Pod, direction: str) -> tuple[NetworkPolicy, ...]:
        key = (pod.key, direction)
        in_ns = cluster.policies_in(pod.namespace)
        hit = self._isolating.get(key)
        if hit is not None and hit[0] is pod:
            if _identical(hit[1], in_ns):
                return hit[2]
            # the namespace's policies changed, the pod did not: only the policies that came need
            # a selector match (one created among 50 re-matched all 50 for every local pod there)
            before, had = set(map(id, hit[1])), set(map(id, hit[2]))
            found = tuple(p for p in in_ns if (id(p) in had if id(p) in before else
                                               direction in p.policy_types and selects(p, pod)))
        else:
            found = isolating(cluster, pod, direction)
        self._isolating[key] = (pod, in_ns, found)
        return found

    def _rule(self, pod: Pod, ip: IPAddress, direction: str, policy: NetworkPolicy, index: int,
              budget: int, before: dict, after: dict) -> frozenset[Allow] | None:
        """One rule's allows for `ip`; None when they would exceed `budget` (not built: a hostile
        policy's 1,000 ports x 100 excepts is computed as a size first)."""
        c = self._c
        ports, named_ports = c.rule_ports(policy, direction, index, pod)
        nets = c.peer_nets(policy, direction, index, ip.version) if ports else []
        named = tuple(c.named_destinations(policy, index, rp, ip.version) for rp in named_ports)
        key = (policy.key, index, ip)
        prev = before.get(key)
        if prev is not None and prev.pod is pod and prev.policy is policy and prev.nets is nets \
                and _identical(prev.named, named):
            after[key] = prev
            return prev.allows
        if len(nets) * len(ports) + sum(len(x) for x in named) > budget:
            return None
        if prev is not None and prev.policy is policy and prev.ports == ports and not named_ports \
                and not prev.named and len(nets) > _DELTA_ABOVE and c.single_peer(policy, direction, index):
            # a peer pod came or went among hundreds: change the allows by those alone
            removed, added = c.nets_delta(prev.nets, nets)
            by_net: dict = dict(prev.by_net)
            gone: list[Allow] = []
            for net in removed:
                gone.extend(by_net.pop(id(net), ()))
            came: list[Allow] = []
            for net in added:
                fresh = by_net[id(net)] = trusted_allows(ip, net, ports)
                came.extend(fresh)
            found = prev.allows.difference(gone).union(came) if gone or came else prev.allows
            after[key] = _RuleResult(pod, policy, ports, nets, named, by_net, found)
            return found
        old = prev.by_net if prev is not None and prev.policy is policy and prev.ports == ports else {}
        by_net = {}  # id(net) -> its allows: the nets are the same objects while unchanged (pod_hosts)
        for net in nets:
            made = old.get(id(net))
            if made is None:
                made = trusted_allows(ip, net, ports)
            by_net[id(net)] = made
        allows: set[Allow] = set(chain.from_iterable(by_net.values()))
        for rp, pairs in zip(named_ports, named, strict=True):
            proto = rp.protocol.lower()
            allows.update(trusted_allow(ip, net, proto, number, number) for net, number in pairs)
        found = frozenset(allows)
        if prev is not None and prev.allows == found:
            found = prev.allows
        after[key] = _RuleResult(pod, policy, ports, nets, named, by_net, found)
        return found

    def _compile_pod(self, pod: Pod, ips: tuple[IPAddress, ...], direction: str,
                     policies: tuple[NetworkPolicy, ...], deps: tuple) -> _PodResult:
        parts: list[frozenset[Allow]] = []
        total = 0
        over = False
        before = self._rules.get((pod.key, direction), {})
        after: dict = {}
        for policy in policies:
            for index in range(len(policy.rules(direction))):
                for ip in ips:
                    got = self._rule(pod, ip, direction, policy, index, self.max_allows - total, before, after)
                    if got is None:
                        over = True
                        break
                    parts.append(got)
                    total += len(got)  # an upper bound of the union: overlaps count twice
                if over:
                    break
            if over:
                break
        self._rules[(pod.key, direction)] = after  # the rules it has now; the others' results go
        mine: set[Allow] = set()
        overflow = None
        if not over:
            mine = set().union(*parts)  # from sets: their stored hashes, no rehash
            over = len(mine) > self.max_allows
        if over:
            mine = set()
            overflow = Overflow(str(pod), direction, tuple(str(p) for p in policies))
        mine.update(self._c.self_allows(ips))
        if len(ips) == 1:  # the usual case: every allow is of that address (no regrouping, no rehash)
            return _PodResult(pod, policies, deps, {ips[0]: frozenset(mine)}, overflow)
        by_ip: dict[IPAddress, list[Allow]] = {}
        for al in mine:
            by_ip.setdefault(al.pod, []).append(al)
        return _PodResult(pod, policies, deps, {ip: frozenset(v) for ip, v in by_ip.items()}, overflow)

    def compile(self, cluster: Cluster, log: LogConfig = LogConfig(),  # noqa: B008
                local: tuple[IPNetwork, ...] = (), overflows: list[Overflow] | None = None) -> Ruleset:
        c = self._c
        c.begin(cluster)
        self._syncs += 1
        if self._syncs % 100 == 0:
            c.prune(cluster)
        self.recompiled = 0
        isolated: dict[str, set[IPAddress]] = {INGRESS: set(), EGRESS: set()}
        groups: dict[str, dict[IPAddress, frozenset[Allow]]] = {INGRESS: {}, EGRESS: {}}
        known: set[IPAddress] = set()
        seen: set[tuple[tuple[str, str], str]] = set()  # local pods isolated, per direction
        alive: set[tuple[tuple[str, str], str]] = set()  # every local pod, per direction
        fast, fresh = self._fast, c.fresh
        for ns, pods in self._local_pods(cluster):
            in_ns = cluster.policies_in(ns)
            for pod in pods:
                ips = c.owned(pod)
                if not ips:
                    continue
                if local:
                    known.update(ips)
                for direction in (INGRESS, EGRESS):
                    key = (pod.key, direction)
                    alive.add(key)
                    f = fast.get(key)
                    if f is not None and f[0] is pod and f[1] is in_ns and fresh(f[2]):
                        hit = f[3]  # nothing it reads changed: not even its dependencies are walked
                        if hit is None:
                            continue
                    else:
                        policies = self._isolating_for(cluster, pod, direction)
                        if not policies:
                            fast[key] = (pod, in_ns, (c.epoch, -1, -1, ()), None)
                            continue
                        stamp = c.stamp(policies, direction)
                        deps = tuple(c.pod_deps(policy, direction, ips) for policy in policies)
                        hit = self._pods.get(key)
                        if hit is None or hit.pod is not pod or not _identical(hit.policies, policies) \
                                or not _same(hit.deps, deps):
                            hit = self._pods[key] = self._compile_pod(pod, ips, direction, policies, deps)
                            self.recompiled += 1
                        fast[key] = (pod, in_ns, stamp, hit)
                    seen.add(key)
                    isolated[direction].update(ips)
                    groups[direction].update(hit.groups)
                    if hit.overflow is not None and overflows is not None:
                        overflows.append(hit.overflow)
        if len(self._pods) != len(seen):
            for key in [k for k in self._pods if k not in seen]:
                del self._pods[key]
                self._rules.pop(key, None)
        if len(fast) != len(alive):
            for key in [k for k in fast if k not in alive]:
                del fast[key]
                self._isolating.pop(key, None)
        return Ruleset(isolated_ingress=frozenset(isolated[INGRESS]), isolated_egress=frozenset(isolated[EGRESS]),
                       ingress=None, egress=None, log=log,  # type: ignore[arg-type] # the groups' union, lazily
                       local=tuple(local), known=frozenset(known),
                       groups={"ingress": groups[INGRESS], "egress": groups[EGRESS]})  # ruleset's names


    def _local_pods(self, cluster: Cluster) -> list[tuple[str, tuple[Pod, ...]]]:
        """(namespace, its pods on this node) for the namespaces that have some; a namespace whose
        pods tuple is the one of the last sync is not walked again."""
        before, now = self._local, {}
        out = []
        node = self.node_name
        for ns, pods in cluster.pods_by_namespace.items():
            hit = before.get(ns)
            if hit is None or hit[0] is not pods:
                hit = (pods, tuple(p for p in pods if p.node == node))
            now[ns] = hit
            if hit[1]:
                out.append((ns, hit[1]))
        self._local = now
        return out


def _identical(a, b) -> bool:
    """Same length, and the very same objects in order (what tells 'unchanged' here: records are
    converted once per event, so an equal-but-new object is a change)."""
    return a is b or len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _same(a: tuple, b: tuple) -> bool:
    """Two pods' dependency tuples (per policy, per rule and family) hold the very same objects."""
    return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b, strict=True))


def compile_node(cluster: Cluster, node_name: str, log: LogConfig = LogConfig(),  # noqa: B008
                 local: tuple[IPNetwork, ...] = (), overflows: list[Overflow] | None = None,
                 max_allows: int = MAX_ALLOWS_PER_POD) -> Ruleset:
    """This node's Ruleset: its policed pods isolated per direction and what each may exchange.

    Pure and deterministic (the result is sets). Pieces that resolve to nothing (a named port no pod
    declares, a peer selecting no pod) simply add no allow; the isolation stays. `local`: the node's
    pod CIDRs; with them, every owned address of a local pod is `known` (Ruleset.local). A pod whose
    allows in one direction exceed `max_allows` gets none but itself; it is appended to `overflows`.
    A daemon compiles with one NodeCompiler across syncs (the same result, computed incrementally)."""
    return NodeCompiler(node_name, max_allows).compile(cluster, log, local, overflows)
