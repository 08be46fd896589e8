"""policy.compile + policy.flowcheck: the compiler implements verdict's semantics.

Golden cases pin the Allow records the compiler emits for each feature; the property test proves
the compiler right flow by flow: on seeded random clusters built from a grammar covering every
feature, `verdict()` (the reference semantics) equals `flowcheck` over the compiled rulesets of
both nodes (egress with the source's node, ingress with the destination's).
"""
from __future__ import annotations

import ipaddress
import random
import time

import pytest

from policy.compile import compile_node
from policy.flowcheck import FlowCheck, allows
from policy.model import (
    EGRESS,
    INGRESS,
    NAMESPACE_NAME_LABEL,
    Cluster,
    IPBlock,
    NamedPort,
    NamedPorts,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    Port,
    Rule,
)
from policy.ruleset import Allow, LogConfig, Ruleset, elements
from policy.selector import EVERYTHING, LabelSelector, Requirement, intern_labels
from policy.verdict import verdict

A = ipaddress.ip_address
N = ipaddress.ip_network


def pod(ns: str, name: str, node: str, *ips: str, labels: dict | None = None, ports=(), host: bool = False,
        phase: str = "Running") -> Pod:
    return Pod(ns, name, node=node, ips=tuple(A(i) for i in ips), labels=intern_labels(labels or {}),
               named_ports=NamedPorts(tuple(NamedPort(n, pr, num) for n, pr, num in ports)),
               host_network=host, phase=phase)


def ns(name: str, **labels: str) -> Namespace:
    return Namespace(name, intern_labels({**labels, NAMESPACE_NAME_LABEL: name}))


def sel(**labels: str) -> LabelSelector:
    return LabelSelector(tuple(Requirement(k, "In", frozenset((v,))) for k, v in sorted(labels.items())))


def pol(namespace: str, name: str, selector: LabelSelector = EVERYTHING, types=(INGRESS,), ingress=(),
        egress=()) -> NetworkPolicy:
    return NetworkPolicy(namespace, name, selector, tuple(types), tuple(ingress), tuple(egress))


def cluster(pods, policies, namespaces=("x", "y")) -> Cluster:
    return Cluster.build(pods, [ns(n, team=n) for n in namespaces], policies)


X_A = pod("x", "a", "n1", "10.0.1.1", labels={"app": "web"}, ports=[("http", "TCP", 80)])
X_B = pod("x", "b", "n1", "10.0.1.2", labels={"app": "db"}, ports=[("http", "TCP", 8080), ("db", "TCP", 5432)])
Y_C = pod("y", "c", "n2", "10.0.2.3", labels={"app": "web"}, ports=[("db", "TCP", 3306)])
PODS = (X_A, X_B, Y_C)


def ip(p: Pod, v: int = 4):
    return p.ip_of(v)


def itself(*addresses) -> frozenset[Allow]:
    """The allows every isolated pod gets per isolated direction: a pod may always reach itself."""
    return frozenset(Allow(a, N(a)) for a in addresses)


def test_default_deny_isolates_without_allows():
    rs = compile_node(cluster(PODS, [pol("x", "deny")]), "n1")
    assert rs == Ruleset(isolated_ingress=frozenset({ip(X_A), ip(X_B)}), ingress=itself(ip(X_A), ip(X_B)))
    assert not allows(rs, ip(Y_C), ip(X_A), "tcp", 80)
    assert allows(rs, ip(X_A), ip(Y_C), "tcp", 80)  # egress not isolated, Y_C not on n1
    assert compile_node(cluster(PODS, [pol("x", "deny")]), "n2") == Ruleset()  # no subject on n2
    assert compile_node(cluster(PODS, [pol("x", "deny")]), "n1", log=LogConfig(rate=3)).log.rate == 3


def test_with_local_cidrs_every_local_pod_is_known_policed_or_not():
    """Ruleset.known: the local pods the daemon classified (a forwarded packet to or from another
    address of the node's pod CIDRs is dropped); other nodes' pods and unselected ones alike."""
    local = (N("10.0.1.0/24"),)
    free = compile_node(cluster(PODS, []), "n1", local=local)
    on_n1 = {ip for p in PODS if p.node == "n1" and not p.host_network and not p.terminal for ip in p.ips}
    assert free.known == frozenset(on_n1) and free.local == local and not free.isolated_ingress
    assert compile_node(cluster(PODS, []), "n1").known == frozenset()  # without local: no backstop
    els = elements(free)
    assert els["local4"] == {"10.0.1.0/24"} and els["known4"] == {str(a) for a in on_n1 if a.version == 4}


def test_allow_from_namespace_lists_peer_pods_only():
    p = pol("x", "from-y", sel(app="db"), ingress=[Rule(peers=(Peer(namespace_selector=sel(team="y")),))])
    rs = compile_node(cluster(PODS, [p]), "n1")
    assert rs.isolated_ingress == {ip(X_B)}
    assert rs.ingress == {Allow(ip(X_B), N("10.0.2.3/32"))} | itself(ip(X_B))  # every port: a rule without ports


def test_named_port_resolves_on_each_selected_pod():
    p = pol("x", "http", ingress=[Rule(ports=(Port("TCP", "http"), Port("TCP", "db"), Port("UDP", "http")))])
    rs = compile_node(cluster(PODS, [p]), "n1")
    assert rs.ingress == {Allow(ip(X_A), N("0.0.0.0/0"), "tcp", 80, 80),
                          Allow(ip(X_B), N("0.0.0.0/0"), "tcp", 8080, 8080),
                          Allow(ip(X_B), N("0.0.0.0/0"), "tcp", 5432, 5432)} | itself(ip(X_A), ip(X_B))
    # UDP http: nobody has it
    # a named port no selected pod has: isolated, no allow
    rs = compile_node(cluster(PODS, [pol("x", "none", ingress=[Rule(ports=(Port("TCP", "nope"),))])]), "n1")
    assert rs.isolated_ingress == {ip(X_A), ip(X_B)} and rs.ingress == itself(ip(X_A), ip(X_B))


def test_end_port_range_and_whole_protocol():
    p = pol("x", "range", sel(app="web"), ingress=[Rule(ports=(Port("TCP", 1000, 2000), Port("SCTP"),
                                                                Port("UDP", 53)))])
    rs = compile_node(cluster(PODS, [p]), "n1")
    assert rs.ingress == {Allow(ip(X_A), N("0.0.0.0/0"), "tcp", 1000, 2000),
                          Allow(ip(X_A), N("0.0.0.0/0"), "sctp", 1, 65535),
                          Allow(ip(X_A), N("0.0.0.0/0"), "udp", 53, 53)} | itself(ip(X_A))
    fc = FlowCheck(rs)
    assert [fc.allows(A("1.2.3.4"), ip(X_A), "TCP", port) for port in (999, 1000, 2000, 2001)] == [
        False, True, True, False]


def test_ip_block_minus_except():
    block = IPBlock(N("10.0.0.0/16"), (N("10.0.5.0/24"), N("10.0.5.128/25")))
    p = pol("x", "blk", sel(app="web"), types=(EGRESS,), egress=[Rule(peers=(Peer(ip_block=block),),
                                                                      ports=(Port("UDP", 53),))])
    rs = compile_node(cluster(PODS, [p]), "n1")
    assert rs.isolated_egress == {ip(X_A)}
    assert rs.egress - itself(ip(X_A)) == {Allow(ip(X_A), net, "udp", 53, 53) for net in block.nets()}
    assert len(block.nets()) == 8 and itself(ip(X_A)) <= rs.egress
    fc = FlowCheck(rs)
    assert fc.allows(ip(X_A), A("10.0.4.255"), "udp", 53)
    assert not fc.allows(ip(X_A), A("10.0.5.1"), "udp", 53)
    assert fc.allows(ip(X_A), A("10.0.6.0"), "udp", 53)
    assert not fc.allows(ip(X_A), A("10.0.6.0"), "udp", 54)


def test_egress_named_port_resolves_on_each_peer_pod():
    p = pol("x", "to-db", sel(app="web"), types=(EGRESS,), egress=[
        Rule(peers=(Peer(namespace_selector=EVERYTHING),), ports=(Port("TCP", "db"),))])
    rs = compile_node(cluster(PODS, [p]), "n1")
    assert rs.egress == {Allow(ip(X_A), N("10.0.1.2/32"), "tcp", 5432, 5432),
                         Allow(ip(X_A), N("10.0.2.3/32"), "tcp", 3306, 3306)} | itself(ip(X_A))  # Y_C: on n2
    # ipBlock + named port: only towards addresses that are pods declaring the name (verdict's reading)
    p = pol("x", "blk", sel(app="web"), types=(EGRESS,), egress=[
        Rule(peers=(Peer(ip_block=IPBlock(N("10.0.2.0/24"))),), ports=(Port("TCP", "db"),))])
    rs = compile_node(cluster(PODS, [p]), "n1")
    assert rs.egress == {Allow(ip(X_A), N("10.0.2.3/32"), "tcp", 3306, 3306)} | itself(ip(X_A))
    # no peers + named port: every pod of the cluster declaring it
    p = pol("x", "any", sel(app="web"), types=(EGRESS,), egress=[Rule(ports=(Port("TCP", "db"),))])
    assert len(compile_node(cluster(PODS, [p]), "n1").egress - itself(ip(X_A))) == 2


def test_egress_named_port_through_ip_block_edges():
    pods = [pod("x", f"d{i}", "n2", f"10.0.3.{i}", ports=[("db", "TCP", 1000 + i)]) for i in (7, 8, 15, 16)]
    src = pod("x", "s", "n1", "10.0.1.1")
    p = pol("x", "edge", types=(EGRESS,), egress=[
        Rule(peers=(Peer(ip_block=IPBlock(N("10.0.3.8/29"))),), ports=(Port("TCP", "db"),))])
    rs = compile_node(cluster([src, *pods], [p]), "n1")
    assert rs.egress == {Allow(A("10.0.1.1"), N("10.0.3.8/32"), "tcp", 1008, 1008),
                         Allow(A("10.0.1.1"), N("10.0.3.15/32"), "tcp", 1015, 1015)} | itself(A("10.0.1.1"))


def test_dual_stack_pairs_families():
    d1 = pod("x", "d1", "n1", "10.0.1.9", "fd00::9", labels={"app": "web"})
    d2 = pod("x", "d2", "n2", "fd00::10", "10.0.2.10", labels={"app": "db"})
    p = pol("x", "ds", sel(app="web"), ingress=[
        Rule(peers=(Peer(pod_selector=sel(app="db")),)),
        Rule(peers=(Peer(ip_block=IPBlock(N("192.168.0.0/24"))),), ports=(Port("TCP", 22),)),
        Rule(ports=(Port("UDP", 53),))])
    rs = compile_node(cluster([d1, d2], [p]), "n1")
    assert rs.isolated_ingress == {A("10.0.1.9"), A("fd00::9")}
    assert rs.ingress == {Allow(A("10.0.1.9"), N("10.0.2.10/32")), Allow(A("fd00::9"), N("fd00::10/128")),
                          Allow(A("10.0.1.9"), N("192.168.0.0/24"), "tcp", 22, 22),
                          Allow(A("10.0.1.9"), N("0.0.0.0/0"), "udp", 53, 53),
                          Allow(A("fd00::9"), N("::/0"), "udp", 53, 53)} | itself(A("10.0.1.9"), A("fd00::9"))


def test_host_network_terminal_and_addressless_pods_are_neither_subject_nor_peer():
    host = pod("x", "h", "n1", "192.168.0.1", labels={"app": "web"}, host=True)
    done = pod("x", "done", "n1", "10.0.1.7", labels={"app": "web"}, phase="Succeeded")
    fresh = pod("x", "fresh", "n1", labels={"app": "web"})
    p = pol("x", "p", ingress=[Rule(peers=(Peer(pod_selector=EVERYTHING),))])
    rs = compile_node(cluster([X_A, host, done, fresh], [p]), "n1")
    assert rs.isolated_ingress == {ip(X_A)}
    assert rs.ingress == {Allow(ip(X_A), N("10.0.1.1/32"))}


def test_other_nodes_pods_are_peers_not_subjects():
    p = pol("x", "p", ingress=[Rule(peers=(Peer(namespace_selector=EVERYTHING, pod_selector=sel(app="web")),))])
    c = cluster(PODS, [p, pol("y", "q")])
    n1, n2 = compile_node(c, "n1"), compile_node(c, "n2")
    assert n1.isolated_ingress == {ip(X_A), ip(X_B)} and n2.isolated_ingress == {ip(Y_C)}
    assert n1.ingress == {Allow(a, N(b)) for a in (ip(X_A), ip(X_B))
                          for b in ("10.0.1.1", "10.0.2.3")} | itself(ip(X_A), ip(X_B))
    assert n2.ingress == itself(ip(Y_C))


def test_address_conflict_belongs_to_the_winning_pod():
    old = pod("x", "a-old", "n2", "10.0.1.1", labels={"app": "db"})  # sorts before x/b... and wins the IP
    new = pod("x", "b-new", "n1", "10.0.1.1", labels={"app": "web"})
    c = cluster([old, new], [pol("x", "p", sel(app="web"))])
    assert c.pod_at(A("10.0.1.1")) is old
    assert compile_node(c, "n1") == Ruleset()  # b-new does not own its address: not compiled
    assert verdict(c, A("1.1.1.1"), A("10.0.1.1"), 80).allowed


def test_compile_is_deterministic_and_order_free():
    policies = [pol("x", "p", ingress=[Rule((Peer(namespace_selector=EVERYTHING),), (Port("TCP", "http"),))]),
                pol("y", "q", types=(EGRESS,), egress=[Rule(ports=(Port("TCP", "db"),))])]
    one = cluster(PODS, policies)
    other = Cluster.build(reversed(PODS), [ns(n, team=n) for n in ("y", "x")], reversed(policies))
    for node in ("n1", "n2"):
        assert compile_node(one, node) == compile_node(one, node) == compile_node(other, node)


def test_a_pod_cannot_block_access_to_itself():
    """Every isolated pod gets Allow(ip, ip/32 or /128, every protocol) per isolated direction, so a hairpin
    through a Service to itself (src == dst after DNAT, crossing forward) passes; verdict agrees."""
    dual = pod("x", "d", "n1", "10.0.1.4", "fd00::4", labels={"app": "dual"})
    c = cluster([*PODS, dual], [pol("x", "deny", types=(INGRESS, EGRESS)), pol("y", "in", types=(INGRESS,))])
    n1, n2 = compile_node(c, "n1"), compile_node(c, "n2")
    mine = itself(ip(X_A), ip(X_B), A("10.0.1.4"), A("fd00::4"))
    assert n1 == Ruleset(isolated_ingress=frozenset({ip(X_A), ip(X_B), A("10.0.1.4"), A("fd00::4")}),
                         isolated_egress=frozenset({ip(X_A), ip(X_B), A("10.0.1.4"), A("fd00::4")}),
                         ingress=mine, egress=mine)
    assert Allow(A("fd00::4"), N("fd00::4/128")) in mine  # /128 for IPv6, proto None: every protocol and port
    assert n2 == Ruleset(isolated_ingress=frozenset({ip(Y_C)}), ingress=itself(ip(Y_C)))  # only the isolated way
    fc1, fc2 = FlowCheck(n1), FlowCheck(n2)
    for a, fc in ((ip(X_A), fc1), (A("10.0.1.4"), fc1), (A("fd00::4"), fc1), (ip(Y_C), fc2)):
        for proto, port in (("tcp", 80), ("udp", 53), ("sctp", 65535)):
            assert fc.allows(a, a, proto, port) and verdict(c, a, a, port, proto.upper()).allowed
    assert not fc1.allows(ip(X_A), ip(X_B), "tcp", 80) and not verdict(c, ip(X_A), ip(X_B), 80).allowed
    assert not fc2.allows(ip(X_A), ip(Y_C), "tcp", 80)  # Y_C's ingress: only itself
    assert verdict(c, X_A, X_A, 80).because == "x/a -> x/a: a pod may always reach itself, whatever policies select it"


def test_a_pod_owning_two_addresses_of_a_family_reaches_itself_between_them():
    """from_api refuses two pod IPs of one family, but the model allows it; verdict says "same pod", so the
    compiler allows each pair of the pod's own addresses of a family (the usual case is just ip -> ip)."""
    two = pod("x", "t", "n1", "10.0.1.5", "10.0.1.6")
    c = cluster([two, X_B], [pol("x", "deny", types=(INGRESS, EGRESS))])
    rs = compile_node(c, "n1")
    pairs = {Allow(A(a), N(b)) for a in ("10.0.1.5", "10.0.1.6") for b in ("10.0.1.5", "10.0.1.6")}
    assert rs.ingress == rs.egress == pairs | itself(ip(X_B))
    fc = FlowCheck(rs)
    for s, d in (("10.0.1.5", "10.0.1.6"), ("10.0.1.6", "10.0.1.5"), ("10.0.1.6", "10.0.1.6")):
        assert fc.allows(A(s), A(d), "udp", 9) and verdict(c, A(s), A(d), 9, "UDP").allowed
    assert not fc.allows(A("10.0.1.5"), ip(X_B), "udp", 9) and not verdict(c, A("10.0.1.5"), ip(X_B), 9, "UDP").allowed


# ---- the property test ---------------------------------------------------------------------

NAMES = ("x", "y", "z")
LABEL_VALUES = {"app": ("web", "db", "api"), "tier": ("fe", "be")}
NS_LABELS = {"team": ("red", "blue"), "env": ("prod", "dev")}
PORT_NAMES = ("http", "dns", "metrics")
PORT_NUMBERS = (53, 80, 81, 8080)
PROTOS = ("TCP", "UDP", "SCTP")
WEIGHTED_PROTOS = ("TCP", "TCP", "TCP", "UDP", "SCTP")  # more TCP: more named ports meet a rule and a flow
OUTSIDE = ("10.0.0.200", "172.16.0.5", "8.8.8.8", "fd00::c8", "2001:db8::1")
BLOCKS = ("10.0.0.0/24", "10.0.0.0/28", "0.0.0.0/0", "172.16.0.0/16", "fd00::/64", "::/0", "10.0.0.8/29")
SAMPLE_PORTS = {"TCP": (53, 80, 81, 82, 1500, 8080), "UDP": (53, 80, 8080), "SCTP": (80, 1001)}


def _labels(rng: random.Random, vocab: dict) -> dict:
    return {k: rng.choice(v) for k, v in vocab.items() if rng.random() < 0.7}


def _selector(rng: random.Random, vocab: dict) -> LabelSelector:
    if rng.random() < 0.25:
        return EVERYTHING
    reqs = set()
    for _ in range(rng.randint(1, 2)):
        key = rng.choice(sorted(vocab))
        op = rng.choice(("In", "In", "NotIn", "Exists", "DoesNotExist"))
        values = frozenset(rng.sample(vocab[key], rng.randint(1, 2))) if op in ("In", "NotIn") else frozenset()
        reqs.add(Requirement(key, op, values))
    return LabelSelector(tuple(sorted(reqs, key=str)))


def _block(rng: random.Random) -> IPBlock:
    cidr = N(rng.choice(BLOCKS))
    if cidr.prefixlen + 2 <= cidr.max_prefixlen and rng.random() < 0.5:
        hole = N(str(rng.choice(list(cidr.subnets(prefixlen_diff=2)))))
        if cidr.prefixlen == 0:  # a quarter of everything would miss the pods: carve among them
            hole = N("10.0.0.0/29") if cidr.version == 4 else N("fd00::/125")
        return IPBlock(cidr, (hole,))
    return IPBlock(cidr)


def _peer(rng: random.Random) -> Peer:
    kind = rng.choice(("pod", "ns", "both", "block"))
    if kind == "block":
        return Peer(ip_block=_block(rng))
    return Peer(pod_selector=_selector(rng, LABEL_VALUES) if kind != "ns" else None,
                namespace_selector=_selector(rng, NS_LABELS) if kind != "pod" else None)


def _port(rng: random.Random) -> Port:
    proto = rng.choice(WEIGHTED_PROTOS)
    kind = rng.choice(("number", "number", "range", "name", "name", "all"))
    if kind == "number":
        return Port(proto, rng.choice(PORT_NUMBERS))
    if kind == "range":
        first = rng.choice((80, 1000))
        return Port(proto, first, first + rng.choice((1, 1000)))
    if kind == "name":
        return Port(proto, rng.choice(PORT_NAMES))
    return Port(proto)


def _rule(rng: random.Random) -> Rule:
    peers = () if rng.random() < 0.25 else tuple(_peer(rng) for _ in range(rng.randint(1, 2)))
    ports = () if rng.random() < 0.3 else tuple(_port(rng) for _ in range(rng.randint(1, 2)))
    return Rule(peers, ports)


def random_cluster(seed: int, n_pods: int = 12, n_policies: int = 8) -> tuple[Cluster, list]:
    rng = random.Random(seed)
    namespaces = [Namespace(n, intern_labels({**_labels(rng, NS_LABELS), NAMESPACE_NAME_LABEL: n})) for n in NAMES]
    pods, addresses = [], [A(a) for a in OUTSIDE]
    for i in range(1, n_pods + 1):
        family = rng.choice(("4", "4", "46", "64", "6"))
        ips = tuple({"4": f"10.0.0.{i}", "6": f"fd00::{i:x}"}[f] for f in family)
        if i > 1 and rng.random() < 0.1:  # an address reused before the old pod's deletion was seen
            ips = (f"10.0.0.{rng.randrange(1, i)}",)
        host = rng.random() < 0.1
        if host:
            ips = (f"192.168.0.{i}",)
        ports = []
        for _ in range(rng.randint(0, 3)):
            ports.append((rng.choice(PORT_NAMES), rng.choice(WEIGHTED_PROTOS), rng.choice(PORT_NUMBERS)))
        phase = "Failed" if rng.random() < 0.05 else "Running"
        pods.append(pod(rng.choice(NAMES), f"p{i}", rng.choice(("n1", "n2")), *ips, labels=_labels(rng, LABEL_VALUES),
                        ports=ports, host=host, phase=phase))
        addresses.extend(A(a) for a in ips if A(a) not in addresses)
    policies = []
    for j in range(n_policies):
        types = rng.choice(((INGRESS,), (EGRESS,), (INGRESS, EGRESS)))
        policies.append(NetworkPolicy(
            rng.choice(NAMES), f"pol{j}", _selector(rng, LABEL_VALUES), types,
            tuple(_rule(rng) for _ in range(rng.randint(0, 2))) if INGRESS in types else (),
            tuple(_rule(rng) for _ in range(rng.randint(0, 2))) if EGRESS in types else ()))
    return Cluster.build(pods, namespaces, policies), addresses


SEEDS = range(30)


@pytest.mark.parametrize("seed", SEEDS)
def test_compiled_rulesets_agree_with_verdict(seed):
    c, addresses = random_cluster(seed)
    rulesets = {node: compile_node(c, node) for node in ("n1", "n2")}
    for node, rs in rulesets.items():  # subjects are this node's pods, at the addresses they own
        local = {ip for p in c.pods if p.node == node for ip in p.ips if c.pod_at(ip) is p}
        assert rs.isolated_ingress | rs.isolated_egress <= local
    checks = {node: FlowCheck(rs) for node, rs in rulesets.items()}
    nobody = FlowCheck(Ruleset())

    def node_check(address) -> FlowCheck:
        owner = c.pod_at(address)
        return checks[owner.node] if owner is not None else nobody

    n1, n2 = rulesets["n1"], rulesets["n2"]
    union = FlowCheck(Ruleset(n1.isolated_ingress | n2.isolated_ingress, n1.isolated_egress | n2.isolated_egress,
                              n1.ingress | n2.ingress, n1.egress | n2.egress))
    rng = random.Random(seed)
    flows = [(s, d, proto, port) for s in addresses for d in addresses if s.version == d.version
             for proto in PROTOS for port in SAMPLE_PORTS[proto]]
    flows = rng.sample(flows, min(len(flows), 800))
    # every address to itself: a pod may always reach itself (the sample above rarely draws s == d)
    flows += [(a, a, proto, port) for a in addresses for proto in PROTOS for port in SAMPLE_PORTS[proto][:2]]
    for s, d, proto, port in flows:
        expected = verdict(c, s, d, port, proto)
        got = (node_check(s).passes("egress", s, d, proto.lower(), port)
               and node_check(d).passes("ingress", d, s, proto.lower(), port))
        assert got == expected.allowed, f"seed {seed}: {s} -> {d} {proto}/{port}: verdict says {expected}"
        assert union.allows(s, d, proto, port) == got


def test_property_grammar_reaches_every_feature():
    """The random clusters do exercise what the property test claims to cover."""
    seen = set()
    for seed in SEEDS:
        c, _ = random_cluster(seed)
        for p in c.pods:
            seen.add("hostNetwork" if p.host_network else "terminal" if p.terminal else f"ips{len(p.ips)}")
        for policy in c.policies:
            for rule in policy.ingress + policy.egress:
                seen.add("no-peers" if not rule.peers else "peers")
                seen.add("no-ports" if not rule.ports else "ports")
                for peer in rule.peers:
                    if peer.ip_block is not None:
                        seen.add("except" if peer.ip_block.excepts else "block")
                    else:
                        seen.add(("pod" if peer.pod_selector is not None else "") +
                                 ("ns" if peer.namespace_selector is not None else ""))
                for port in rule.ports:
                    seen.add(type(port.port).__name__ + ("-range" if port.end_port else ""))
        rs = [compile_node(c, n) for n in ("n1", "n2")]
        if any(r.isolated_ingress for r in rs) and any(r.isolated_egress for r in rs):
            seen.add("isolated")  # the property test's self-flows meet isolated pods
        if any(a.proto is not None and a.first_port == a.last_port and a.first_port in (53, 80, 81, 8080)
               for r in rs for a in r.egress):
            seen.add("egress-allows")
    assert seen >= {"hostNetwork", "terminal", "ips1", "ips2", "no-peers", "peers", "no-ports", "ports", "except",
                    "block", "pod", "ns", "podns", "int", "int-range", "str", "NoneType", "egress-allows",
                    "isolated"}


# ---- scale ---------------------------------------------------------------------------------

def scale_cluster(n_pods: int, n_nodes: int, n_policies: int, n_namespaces: int = 20, seed: int = 1) -> Cluster:
    """Pods spread over nodes and namespaces with app/tier labels and named ports; policies that select
    an app and allow from apps / namespaces / ipBlocks on numbers, ranges and names, both directions."""
    rng = random.Random(seed)
    spaces = [f"ns{i}" for i in range(n_namespaces)]
    apps = [f"app{i}" for i in range(50)]
    namespaces = [Namespace(n, intern_labels({NAMESPACE_NAME_LABEL: n, "team": f"t{i % 5}"}))
                  for i, n in enumerate(spaces)]
    pods = []
    for i in range(n_pods):
        addr = ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.128.0.0")) + i)
        pods.append(pod(spaces[i % n_namespaces], f"p{i}", f"node{i % n_nodes}", str(addr),
                        labels={"app": rng.choice(apps), "tier": rng.choice(("fe", "be"))},
                        ports=[("http", "TCP", rng.choice((80, 8080))), ("metrics", "TCP", 9090)]))
    policies = []
    for j in range(n_policies):
        peers = rng.choice((
            (Peer(pod_selector=sel(app=rng.choice(apps))),),
            (Peer(namespace_selector=sel(team=f"t{rng.randrange(5)}"), pod_selector=sel(tier="fe")),),
            (Peer(ip_block=IPBlock(N("10.0.0.0/8"), (N("10.128.0.0/16"),))),)))
        ports = rng.choice(((Port("TCP", "http"),), (Port("TCP", 80),), (Port("TCP", 8000, 8100),), ()))
        policies.append(NetworkPolicy(rng.choice(spaces), f"pol{j}", sel(app=rng.choice(apps)), (INGRESS, EGRESS),
                                      (Rule(peers, ports),), (Rule(peers[:1], (Port("TCP", "metrics"),)),)))
    return Cluster.build(pods, namespaces, policies)


def test_compile_scale_small():
    c = scale_cluster(2000, 10, 200)
    t = time.perf_counter()
    rs = compile_node(c, "node0")
    assert time.perf_counter() - t < 1.0
    assert rs.isolated_ingress and rs.ingress and rs.egress


@pytest.mark.slow
def test_compile_scale_10k_pods_1k_policies():
    c = scale_cluster(10_000, 50, 1000)
    t = time.perf_counter()
    rs = compile_node(c, "node0")
    took = time.perf_counter() - t
    print(f"compile node0 of 10k pods/50 nodes/1k policies: {took:.2f} s, {len(rs.isolated_ingress)} isolated "
          f"for ingress, {len(rs.isolated_egress)} for egress, {len(rs.ingress)} ingress + {len(rs.egress)} egress "
          f"allows")
    assert took < 5.0


def test_flowcheck_refuses_what_no_packet_is():
    rs = Ruleset()
    with pytest.raises(ValueError, match="mixed"):
        allows(rs, A("10.0.0.1"), A("fd00::1"), "tcp", 80)
    with pytest.raises(ValueError, match="protocol"):
        allows(rs, A("10.0.0.1"), A("10.0.0.2"), "icmp", 80)
    with pytest.raises(ValueError, match="port"):
        allows(rs, A("10.0.0.1"), A("10.0.0.2"), "tcp", 0)
    assert allows(rs, A("10.0.0.1"), A("10.0.0.2"), "TCP", 80)  # nobody isolated


def test_elements_of_many_peers_is_not_quadratic():
    pod_ip = A("10.0.0.1")
    base = int(A("10.128.0.0"))
    rs = Ruleset(isolated_ingress=frozenset({pod_ip}), ingress=frozenset(
        Allow(pod_ip, ipaddress.IPv4Network(base + 2 * i), "tcp", 80, 81) for i in range(1000)))
    t = time.perf_counter()
    assert len(elements(rs)["ingress-ports4"]) == 1000  # port ranges: the interval set, boxes
    assert time.perf_counter() - t < 0.25  # quadratic would be seconds; loose for a loaded CI machine
