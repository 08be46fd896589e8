"""Services + EndpointSlices + this node -> the desired nftables table of one IP family.

Pure: no I/O, no clock. The layout follows kube-proxy's nftables mode: one table per
family, verdict-map dispatch on `daddr . l4proto . dport` (per-packet cost constant in the
number of Services), one chain per service port and policy, `numgen random` endpoint
choice. Every name derives from stable keys, so a diff between two plans touches only what
changed. Two measured departures, both to keep syncs fast at 10k+ Services:
  * endpoint chains exist only where a rule per endpoint is needed (ClientIP affinity, or
    more than VMAP_MIN_ENDPOINTS endpoints); otherwise the service chain DNATs directly.
    Each chain costs on every later sync: nft lists all chains before an `add rule`.
  * hairpin masquerade is one postrouting lookup in a set of `ip . ip` pairs instead of a
    rule per endpoint chain.

NodePorts match `fib daddr type local` minus loopback rather than a set of node addresses:
it follows address changes with no resync (a DHCP renew, a new secondary IP) and needs no
Node watch to be correct, while loopback is excluded so NodePorts never answer on 127.0.0.1
(that needed route_localnet, the CVE-2020-8558 trap).
"""
from __future__ import annotations

import base64
import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from proxy.endpoints import Categorized, PortEndpoint, categorize, local_ready_endpoints, port_endpoints
from proxy.model import EndpointSlice, IPAddress, NodeInfo, ProxyConfig, Service, ServicePort
from proxy.nft import Chain, Hook, Map, Set, Table

FAMILIES = (4, 6)
NFT_FAMILY = {4: "ip", 6: "ip6"}
ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
LOOPBACK = {4: "127.0.0.0/8", 6: "::1"}
MAX_NAME = 96  # nft allows 256; short names keep `nft list` readable and the text small
# Endpoint choice: kube-proxy writes `numgen random mod N vmap { ... }`, an anonymous set
# per service. The kernel names each anonymous set by scanning every set of the table
# (nf_tables_set_alloc_name), so N services cost O(N^2): 31 s for 10k services here. Up to
# this many endpoints we use a cascade of `numgen random mod K == 0 goto ep` rules instead
# (same uniform choice, no set, a few rules on a connection's first packet only).
VMAP_MIN_ENDPOINTS = 32

# Fixed objects.
SERVICES, NODEPORTS = "service-ips", "service-nodeports"
NOEP_SERVICES, NOEP_NODEPORTS = "no-endpoint-services", "no-endpoint-nodeports"
FIREWALL, CLUSTER_IPS, LB_IPS = "firewall-ips", "cluster-ips", "load-balancer-ips"
MARK_MASQ, REJECT = "mark-for-masquerade", "reject-chain"
HAIRPIN = "hairpin-endpoints"


@dataclass(frozen=True)
class PortPlan:
    """What conntrack cleanup and the diff need to know about one service port."""
    service: tuple[str, str]
    protocol: str
    cluster_ip: IPAddress
    port: int
    external_ips: tuple[IPAddress, ...]  # externalIPs and LB ingress IPs
    node_port: int
    endpoints: frozenset[tuple[IPAddress, int]]  # every endpoint some traffic can reach


@dataclass
class Fragment:
    """Everything one Service contributes to a family's table.

    Fragments are cached per Service (see Planner) and compared by identity first, so a
    sync at 30k Services only looks inside the Services that changed.
    """
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, Set] = field(default_factory=dict)
    elements: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    ports: dict[str, PortPlan] = field(default_factory=dict)

    def add_chain(self, chain: Chain) -> None:
        self.chains[chain.name] = chain


@dataclass
class DesiredState:
    """One family's table: the fixed skeleton plus one fragment per Service."""
    family: int
    base: Table  # fixed chains, and the dispatch maps/sets declared empty
    fragments: dict[tuple[str, str], Fragment] = field(default_factory=dict)
    _elements: dict | None = field(default=None, repr=False, compare=False)  # merged, computed once
    # Set by Planner: the state planned just before this one, the Services whose fragments
    # differ from it, and the element changes (deleted keys, added key->value) per map/set.
    prev: "DesiredState | None" = field(default=None, repr=False, compare=False)
    changed: frozenset = frozenset()
    delta: tuple[dict[str, set], dict[str, dict]] | None = field(default=None, repr=False, compare=False)

    def changed_since(self, old: "DesiredState") -> "set | frozenset":
        """Service keys whose fragments may differ between `old` and this state."""
        if self.prev is old and old is not None:
            return self.changed
        return self.fragments.keys() | old.fragments.keys()

    def elements(self) -> dict[str, dict[str, str]]:
        if self._elements is None:
            self._elements = self._merge()
        return self._elements

    def _merge(self) -> dict[str, dict[str, str]]:
        """Merged map/set contents (set members map to ""); the first Service in key order
        keeps a key two Services claim (e.g. one externalIP:port on both)."""
        merged: dict[str, dict[str, str]] = {n: {} for n in (*self.base.maps, *self.base.sets)}
        for key in sorted(self.fragments, reverse=True):
            for name, elems in self.fragments[key].elements.items():
                merged[name].update(elems)
        return merged

    def table(self) -> Table:
        """The flat table (for rendering a full sync, golden tests and flowcheck)."""
        t = Table(self.base.family, self.base.name, dict(self.base.chains))
        for key in sorted(self.fragments):
            f = self.fragments[key]
            t.chains.update(f.chains)
            t.sets.update(f.sets)
        t.sets.update(self.base.sets)
        elems = self.elements()
        for n, s in self.base.sets.items():
            t.sets[n] = Set(s.name, s.type, s.flags, s.timeout, frozenset(elems[n]))
        for n, m in self.base.maps.items():
            t.maps[n] = Map(m.name, m.type, elems[n])
        return t


def _hash(key: str) -> str:
    return base64.b32encode(hashlib.sha256(key.encode()).digest())[:8].decode()


_UNSAFE = re.compile(r"[^A-Za-z0-9/_.\-]")


def object_name(prefix: str, key: str) -> str:
    """`prefix-HASH-readable`: unique by the hash, bounded, valid as an nft identifier."""
    return f"{prefix}-{_hash(key)}-{_UNSAFE.sub('.', key)}"[:MAX_NAME]


def fmt_addr(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _set_literal(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def skeleton(family: int, config: ProxyConfig) -> Table:
    """The fixed part of the table: base chains, dispatch chains, empty maps and sets."""
    p, a, mark = NFT_FAMILY[family], ADDR_TYPE[family], f"0x{config.masquerade_mark:x}"
    local_dst = f"fib daddr type local {p} daddr != {LOOPBACK[family]}"
    t = Table(p, config.table_name)
    add = t.add_chain
    # Firewall (loadBalancerSourceRanges) runs before DNAT, on the original daddr.
    add(Chain("filter-prerouting", ("ct state new jump firewall-check",), Hook("filter", "prerouting", -110)))
    add(Chain("filter-output", ("ct state new jump firewall-check",), Hook("filter", "output", -110)))
    add(Chain("nat-prerouting", ("jump services",), Hook("nat", "prerouting", -100)))
    add(Chain("nat-output", ("jump services",), Hook("nat", "output", -100)))
    # Rejects run right after DNAT (-90): a new flow still addressed to a Service was not
    # DNATed. Still in prerouting, so the refusal needs no route to the Service address.
    add(Chain("filter-prerouting-post-dnat", ("ct state new jump endpoints-check",),
              Hook("filter", "prerouting", -90)))
    add(Chain("filter-output-post-dnat", ("ct state new jump endpoints-check",), Hook("filter", "output", -90)))
    # Hairpin (a pod reaching itself through a Service: after DNAT saddr == daddr) is one set
    # lookup here instead of a rule per endpoint, so endpoints need no chain of their own.
    add(Chain("nat-postrouting", (f"ct status dnat {p} saddr . {p} daddr @{HAIRPIN} jump {MARK_MASQ}",
                                  "jump masquerading"), Hook("nat", "postrouting", 100)))
    add(Chain("firewall-check", (f"{p} daddr . meta l4proto . th dport vmap @{FIREWALL}",)))
    add(Chain("services", (
        f"{p} daddr . meta l4proto . th dport vmap @{SERVICES}",
        f"{local_dst} meta l4proto . th dport vmap @{NODEPORTS}",
    )))
    add(Chain("endpoints-check", (
        "ct status dnat return",
        f"{p} daddr . meta l4proto . th dport vmap @{NOEP_SERVICES}",
        f"{local_dst} meta l4proto . th dport vmap @{NOEP_NODEPORTS}",
        f"{p} daddr @{CLUSTER_IPS} reject",  # a live ClusterIP, on a port it does not serve
        # A LoadBalancer address on a port no Service serves: dropped, not routed (the node that
        # answers ARP for it would send it back out of the link it came from). Never when the
        # address is the node's own (k3s-style LBs report node addresses as ingress IPs).
        f"{p} daddr @{LB_IPS} fib daddr type != local drop",
    )))
    add(Chain(MARK_MASQ, (f"mark set mark or {mark}",)))
    add(Chain("masquerading", (
        f"mark and {mark} == 0 return",
        f"mark set mark xor {mark}",
        "masquerade fully-random",
    )))
    # TCP gets a reset; everything else ICMP port-unreachable: both read as ECONNREFUSED.
    add(Chain(REJECT, ("meta l4proto tcp reject with tcp reset", "reject")))
    t.add_map(Map(SERVICES, f"{a} . inet_proto . inet_service : verdict"))
    t.add_map(Map(NODEPORTS, "inet_proto . inet_service : verdict"))
    t.add_map(Map(NOEP_SERVICES, f"{a} . inet_proto . inet_service : verdict"))
    t.add_map(Map(NOEP_NODEPORTS, "inet_proto . inet_service : verdict"))
    t.add_map(Map(FIREWALL, f"{a} . inet_proto . inet_service : verdict"))
    t.add_set(Set(CLUSTER_IPS, a))
    t.add_set(Set(LB_IPS, a))
    t.add_set(Set(HAIRPIN, f"{a} . {a}"))
    return t


class _ServicePlanner:
    """Builds one Service's fragment for one family; one method per kind of chain."""

    def __init__(self, svc: Service, node: NodeInfo, config: ProxyConfig, family: int):
        self.svc, self.node, self.config, self.family = svc, node, config, family
        self.p = NFT_FAMILY[family]
        self.f = Fragment()

    def build(self, slices: list[EndpointSlice]) -> Fragment:
        cips = [ip for ip in self.svc.cluster_ips if ip.version == self.family]
        if cips:
            self.f.elements[CLUSTER_IPS][str(cips[0])] = ""
            for sp in self.svc.ports:
                eps = port_endpoints(sp, slices, self.family, self.node)
                self.service_port(sp, cips[0], categorize(self.svc, eps, self.node))
        self.f.elements = dict(self.f.elements)
        return self.f

    def service_port(self, sp: ServicePort, cip: IPAddress, cat: Categorized) -> None:
        svc, fam, proto = self.svc, self.family, sp.protocol.lower()
        key = f"{svc.namespace}/{svc.name}/{proto}/{sp.name or sp.port}"
        ext_ips = [ip for ip in svc.external_ips if ip.version == fam]
        lb_ips = [i.ip for i in svc.lb_ingress if i.ip.version == fam and i.ip_mode != "Proxy"]
        node_port = sp.node_port if svc.type in ("NodePort", "LoadBalancer") else 0
        has_external = bool(ext_ips or lb_ips or node_port)

        internal = cat.local if svc.internal_local else cat.cluster
        reachable = set(internal)
        if has_external:
            reachable |= set(cat.cluster)  # eTP=Local still sends pod/node traffic cluster-wide
        self.f.ports[key] = PortPlan(svc.key, sp.protocol, cip, sp.port, tuple(ext_ips + lb_ips),
                                     node_port, frozenset((e.ip, e.port) for e in reachable))

        cluster_chain, local_chain = object_name("svc", key), object_name("svl", key)
        internal_chain = local_chain if svc.internal_local else cluster_chain
        # Endpoint chains only where a rule per endpoint is needed: the affinity set update,
        # or a vmap arm. Otherwise the policy chain DNATs directly: every chain costs on each
        # later sync, because nft lists all chains of the table before an `add rule`.
        chained = svc.session_affinity == "ClientIP" or len(cat.cluster) > VMAP_MIN_ENDPOINTS
        ep_chains: dict[PortEndpoint, tuple[str, str]] = {}  # shared by the svc and svl chains

        def policy_chain(name: str, eps: tuple[PortEndpoint, ...]) -> str:
            if name not in self.f.chains:
                rules = self.masq_clusterip_rules(cip, proto, sp.port) if name == internal_chain else []
                for e in eps:
                    self.f.elements[HAIRPIN][f"{e.ip} . {e.ip}"] = ""
                    if chained and e not in ep_chains:
                        ep_chains[e] = self.endpoint_chain(key, proto, e)
                if chained:
                    rules += self.pick_rules([ep_chains[e] for e in eps])
                else:
                    rules += self.pick_rules([(f"meta l4proto {proto} dnat to {fmt_addr(e.ip, e.port)}", "")
                                              for e in eps], direct=True)
                self.f.add_chain(Chain(name, tuple(rules)))
            return name

        services = self.f.elements[SERVICES]
        noep = self.f.elements[NOEP_SERVICES]
        # Internal (ClusterIP) traffic.
        elem = f"{cip} . {proto} . {sp.port}"
        if internal:
            services[elem] = f"goto {policy_chain(internal_chain, internal)}"
        else:
            # No usable endpoint anywhere: refuse at once. Endpoints exist but none here under
            # internalTrafficPolicy=Local: drop, as kube-proxy does.
            noep[elem] = "drop" if cat.cluster else f"goto {REJECT}"

        # External traffic (NodePort, externalIPs, LB ingress).
        if not has_external:
            return
        if cat.cluster:
            ext = self.external_chain(key, cat, lambda: policy_chain(cluster_chain, cat.cluster),
                                      lambda: policy_chain(local_chain, cat.local))
            target = f"goto {ext}"
            dst, dst_np = services, self.f.elements[NODEPORTS]
        else:
            target, dst, dst_np = f"goto {REJECT}", noep, self.f.elements[NOEP_NODEPORTS]
        for ip in ext_ips + lb_ips:
            dst[f"{ip} . {proto} . {sp.port}"] = target
        for ip in lb_ips:
            self.f.elements[LB_IPS][str(ip)] = ""
        if node_port:
            dst_np[f"{proto} . {node_port}"] = target
        if lb_ips and svc.lb_source_ranges:
            fw = self.firewall_chain(key)
            for ip in lb_ips:
                self.f.elements[FIREWALL][f"{ip} . {proto} . {sp.port}"] = f"goto {fw}"

    def masq_clusterip_rules(self, cip: IPAddress, proto: str, port: int) -> list[str]:
        p = self.p
        match = f"{p} daddr {cip} {proto} dport {port}"
        if self.config.masquerade_all:
            return [f"{match} jump {MARK_MASQ}"]
        cidrs = self.config.cidrs(self.family)
        if not cidrs:
            return []  # no way to tell pod traffic from the rest: leave sources alone
        return [f"{match} {p} saddr != {_set_literal(str(c) for c in cidrs)} jump {MARK_MASQ}"]

    def pick_rules(self, eps: list[tuple[str, str]], direct: bool = False) -> list[str]:
        """Rules choosing one endpoint; `eps` are (chain, affinity set), or with `direct`
        (the DNAT statement, "")."""
        rules = []
        if self.svc.session_affinity == "ClientIP":
            rules += [f"{self.p} saddr @{aff} goto {chain}" for chain, aff in eps]
        n = len(eps)
        if direct:
            rules += [f"numgen random mod {n - i} == 0 {stmt}" for i, (stmt, _) in enumerate(eps[:-1])]
            return rules + [eps[-1][0]]
        if n > VMAP_MIN_ENDPOINTS:
            arms = ", ".join(f"{i} : goto {chain}" for i, (chain, _) in enumerate(eps))
            rules.append(f"numgen random mod {n} vmap {{ {arms} }}")
            return rules
        # A cascade: endpoint i is taken with 1/(n-i) of what reaches it, i.e. 1/n overall.
        for i, (chain, _) in enumerate(eps[:-1]):
            rules.append(f"numgen random mod {n - i} == 0 goto {chain}")
        rules.append(f"goto {eps[-1][0]}")
        return rules

    def endpoint_chain(self, key: str, proto: str, e: PortEndpoint) -> tuple[str, str]:
        ep_key = f"{key}__{e.ip}/{e.port}"
        name, p, aff = object_name("ep", ep_key), self.p, ""
        rules = []
        if self.svc.session_affinity == "ClientIP":
            # The timeout is part of a set's definition, so it is part of the name too: a new
            # timeout is a new set, and the diff never has to redefine a set in place.
            timeout = self.svc.affinity_timeout
            aff = object_name("aff", f"{ep_key}/t{timeout}")
            self.f.sets[aff] = Set(aff, ADDR_TYPE[self.family], ("dynamic", "timeout"), timeout)
            rules.append(f"update @{aff} {{ {p} saddr }}")
        rules.append(f"meta l4proto {proto} dnat to {fmt_addr(e.ip, e.port)}")
        self.f.add_chain(Chain(name, tuple(rules)))
        return name, aff

    def external_chain(self, key: str, cat: Categorized, to_cluster, to_local) -> str:
        name, p = object_name("ext", key), self.p
        if not self.svc.external_local:
            rules = [f"jump {MARK_MASQ}", f"goto {to_cluster()}"]
        else:
            cluster = to_cluster()
            rules = []
            cidrs = self.config.cidrs(self.family)
            if cidrs:  # pods reaching an external address count as internal: all endpoints
                rules.append(f"{p} saddr {_set_literal(str(c) for c in cidrs)} goto {cluster}")
            rules += [f"fib saddr type local jump {MARK_MASQ}", f"fib saddr type local goto {cluster}"]
            # From outside: local endpoints only, source left alone (the client IP is kept);
            # none here: drop, so the LB's health check moves traffic to other nodes.
            rules.append(f"goto {to_local()}" if cat.local else "drop")
        self.f.add_chain(Chain(name, tuple(rules)))
        return name

    def firewall_chain(self, key: str) -> str:
        name = object_name("fw", key)
        ranges = [str(r) for r in self.svc.lb_source_ranges if r.version == self.family]
        rules = [f"{self.p} saddr {_set_literal(ranges)} return"] if ranges else []
        self.f.add_chain(Chain(name, tuple(rules + ["drop"])))
        return name


def group_slices(slices: Iterable[EndpointSlice]) -> dict[tuple[str, str], list[EndpointSlice]]:
    by_svc: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
    for sl in sorted(slices, key=lambda s: s.key):
        by_svc[sl.service_key].append(sl)
    return by_svc


class Planner:
    """plan_family, incrementally: a per-Service cache of fragments and of merged elements.

    The result equals plan_family's; the cache only saves work. Given `dirty` (the Service
    keys whose Service or slices may have changed since the last call), only those are
    looked at, so a sync at 30k Services costs in proportion to what changed.
    """

    def __init__(self, family: int):
        self.family = family
        self._reset(None)

    def _reset(self, ctx) -> None:
        self._ctx = ctx
        self._base: Table | None = None
        self._cache: dict[tuple[str, str], tuple[Service, tuple, Fragment]] = {}
        self._owners: dict[str, dict[str, dict[tuple[str, str], str]]] = defaultdict(dict)
        self._merged: dict[str, dict[str, str]] = {}
        self._last: DesiredState | None = None

    def plan(self, services, slices, node: NodeInfo, config: ProxyConfig,
             dirty: Iterable[tuple[str, str]] | None = None) -> DesiredState:
        """services: Services, or a mapping key -> Service; slices: EndpointSlices, or a
        mapping Service key -> its slices."""
        if self._ctx != (node, config):
            self._reset((node, config))
            dirty = None
        if self._base is None:
            self._base = skeleton(self.family, config)
            self._merged = {n: {} for n in (*self._base.maps, *self._base.sets)}
        svc_map = services if isinstance(services, Mapping) else {s.key: s for s in services}
        by_svc = slices if isinstance(slices, Mapping) else group_slices(slices)
        keys = (svc_map.keys() | self._cache.keys()) if dirty is None else set(dirty)

        changes: list[tuple[tuple[str, str], Fragment | None, Fragment | None]] = []  # (key, old, new)
        for k in keys:
            svc, hit = svc_map.get(k), self._cache.get(k)
            if svc is None:
                if hit:
                    del self._cache[k]
                    changes.append((k, hit[2], None))
                continue
            sl = tuple(by_svc.get(k, ()))
            if hit and (hit[0] is svc or hit[0] == svc) and hit[1] == sl:
                continue
            frag = _ServicePlanner(svc, node, config, self.family).build(list(sl))
            self._cache[k] = (svc, sl, frag)
            changes.append((k, hit[2] if hit else None, frag))

        prev = self._last
        fragments = dict(prev.fragments) if prev else {}
        for k, _, new in changes:
            if new is None:
                fragments.pop(k, None)
            else:
                fragments[k] = new
        delta = self._merge_elements(changes)
        state = DesiredState(self.family, self._base, fragments,
                             {n: d.copy() for n, d in self._merged.items()},
                             prev, frozenset(k for k, _, _ in changes), delta)
        if prev is not None:
            prev.prev = None  # keep one step of history, not a chain of every state
        self._last = state
        return state

    def _merge_elements(self, changes) -> tuple[dict[str, set], dict[str, dict]]:
        """Apply fragment changes to the merged elements. Two Services claiming one key
        (an externalIP:port on both): the smaller Service key wins, deterministically."""
        touched = set()
        for k, old, new in changes:
            for name, elems in (old.elements.items() if old else ()):
                own = self._owners[name]
                for e in elems:
                    own[e].pop(k, None)
                    touched.add((name, e))
            for name, elems in (new.elements.items() if new else ()):
                own = self._owners[name]
                for e, v in elems.items():
                    own.setdefault(e, {})[k] = v
                    touched.add((name, e))
        dels: dict[str, set] = defaultdict(set)
        adds: dict[str, dict] = defaultdict(dict)
        for name, e in touched:
            claims = self._owners[name].get(e)
            new_v = claims[min(claims)] if claims else None
            if not claims:
                self._owners[name].pop(e, None)
            old_v = self._merged[name].get(e)
            if old_v == new_v:
                continue
            if old_v is not None:
                dels[name].add(e)
            if new_v is None:
                del self._merged[name][e]
            else:
                self._merged[name][e] = new_v
                adds[name][e] = new_v
        return dict(dels), dict(adds)


def plan_family(services: Iterable[Service], slices: Iterable[EndpointSlice], node: NodeInfo,
                config: ProxyConfig, family: int) -> DesiredState:
    return Planner(family).plan(services, slices, node, config)


def plan(services: Iterable[Service], slices: Iterable[EndpointSlice], node: NodeInfo,
         config: ProxyConfig, families: Iterable[int] = FAMILIES) -> dict[int, DesiredState]:
    services, slices = list(services), list(slices)
    return {f: plan_family(services, slices, node, config, f) for f in families}


@dataclass(frozen=True)
class HealthCheck:
    namespace: str
    name: str
    local_endpoints: int


def health_checks(services: Iterable[Service], slices: Iterable[EndpointSlice],
                  node: NodeInfo) -> dict[int, HealthCheck]:
    """healthCheckNodePort -> local endpoint count, for eTP=Local Services."""
    by_svc = group_slices(slices)
    out = {}
    for svc in services:
        if not (svc.external_local and svc.health_check_node_port):
            continue
        # ready local endpoints only: a node left with terminating ones answers 503 so load balancers
        # drain it (kube-proxy's LocalReadyEndpoints), though its dataplane still falls back to them
        local = local_ready_endpoints(by_svc.get(svc.key, []), node.name)
        out[svc.health_check_node_port] = HealthCheck(svc.namespace, svc.name, local)
    return out
