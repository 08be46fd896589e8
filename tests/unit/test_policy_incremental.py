"""policy.compile.NodeCompiler + policy.ruleset.ElementCache: compiling a node incrementally gives
exactly what a fresh compile gives, over seeded random histories of the changes a cluster sees
(labels, addresses incl. conflicts, named ports, pods coming and going, namespace labels, policies
added, replaced and deleted), and a change recompiles only the pods it touches."""
from __future__ import annotations

import dataclasses
import random

import pytest

from policy import compile as compile_module
from policy.compile import NodeCompiler, compile_node
from policy.model import (
    EGRESS,
    INGRESS,
    NAMESPACE_NAME_LABEL,
    Cluster,
    NamedPort,
    NamedPorts,
    Namespace,
    NetworkPolicy,
    Peer,
    Port,
    Rule,
)
from policy.ruleset import Allow, ElementCache, elements, render_changes
from policy.selector import intern_labels
from tests.unit.test_policy_compile import (
    LABEL_VALUES,
    NAMES,
    NS_LABELS,
    PORT_NAMES,
    PORT_NUMBERS,
    WEIGHTED_PROTOS,
    _labels,
    _rule,
    _selector,
    cluster,
    ns,
    pod,
    pol,
    random_cluster,
    sel,
)

LOCAL = (__import__("ipaddress").ip_network("10.0.0.0/24"),)


def _mutate(rng: random.Random, pods: dict, namespaces: dict, policies: dict, step: int) -> str:
    kind = rng.choice(("relabel", "relabel", "address", "ports", "delete pod", "add pod", "ns labels",
                       "new policy", "replace policy", "delete policy", "nothing"))
    if kind in ("relabel", "address", "ports", "delete pod") and pods:
        key = rng.choice(sorted(pods))
        p = pods[key]
        if kind == "relabel":
            pods[key] = dataclasses.replace(p, labels=intern_labels(_labels(rng, LABEL_VALUES)))
        elif kind == "address":  # sometimes onto another pod's address: a conflict
            i = rng.randrange(1, 40)
            pods[key] = dataclasses.replace(p, ips=(__import__("ipaddress").ip_address(f"10.0.0.{i}"),))
        elif kind == "ports":
            pods[key] = dataclasses.replace(p, named_ports=NamedPorts(tuple(
                NamedPort(rng.choice(PORT_NAMES), rng.choice(WEIGHTED_PROTOS), rng.choice(PORT_NUMBERS))
                for _ in range(rng.randint(0, 2)))))
        else:
            del pods[key]
    elif kind == "add pod":
        name = f"q{step}"
        space = rng.choice(NAMES)
        pods[(space, name)] = pod(space, name, rng.choice(("n1", "n2")), f"10.0.0.{100 + step % 100}",
                                  labels=_labels(rng, LABEL_VALUES))
    elif kind == "ns labels":
        n = rng.choice(NAMES)
        namespaces[n] = Namespace(n, intern_labels({**_labels(rng, NS_LABELS), NAMESPACE_NAME_LABEL: n}))
    elif kind in ("new policy", "replace policy"):
        if kind == "replace policy" and policies:
            space, name = rng.choice(sorted(policies))
        else:
            space, name = rng.choice(NAMES), f"new{step}"
        types = rng.choice(((INGRESS,), (EGRESS,), (INGRESS, EGRESS)))
        policies[(space, name)] = NetworkPolicy(
            space, name, _selector(rng, LABEL_VALUES), types,
            tuple(_rule(rng) for _ in range(rng.randint(0, 2))) if INGRESS in types else (),
            tuple(_rule(rng) for _ in range(rng.randint(0, 2))) if EGRESS in types else ())
    elif kind == "delete policy" and policies:
        del policies[rng.choice(sorted(policies))]
    return kind


def _stable(c: Cluster, prev: Cluster | None) -> Cluster:
    """`c` as the Store hands it over: a namespace whose pods (or policies) are the very objects of
    the last snapshot keeps its tuple, which is what the compiler's identity fast paths key on."""
    def keep(now, before):
        out = {}
        for k, v in now.items():
            old = before.get(k) if before is not None else None
            same = old is not None and len(old) == len(v) and all(a is b for a, b in zip(old, v, strict=True))
            out[k] = old if same else v
        return out
    return Cluster(None, dict(c.namespaces), c.policies, dict(c.pods_by_ip),
                   keep(c.policies_by_namespace, prev and prev.policies_by_namespace), c.ip_conflicts,
                   pods_by_namespace=keep(c.pods_by_namespace, prev and prev.pods_by_namespace),
                   all_pods={p.key: p for p in c.pods})


def _apply(kernel: dict[str, set[str]], text: str) -> None:
    """Element lines as nft applies them (a delete of a missing element fails, as in the kernel)."""
    for line in text.splitlines():
        verb, _, _, _, name, rest = line.split(" ", 5)
        items = [x.strip() for x in rest.strip("{} ").split(",")]
        for x in items:
            if verb == "add":
                kernel.setdefault(name, set()).add(x)
            else:
                assert x in kernel.get(name, set()), f"delete of missing {name} {x}"
                kernel[name].discard(x)


@pytest.mark.parametrize("delta_above", [16, 0])  # 0: every rule change goes through the peer delta
@pytest.mark.parametrize("seed", range(12))
def test_incremental_compile_equals_a_fresh_one_over_random_histories(seed, delta_above, monkeypatch):
    monkeypatch.setattr(compile_module, "_DELTA_ABOVE", delta_above)
    rng = random.Random(1000 + seed)
    start, _ = random_cluster(seed, n_pods=16, n_policies=8)
    pods = {p.key: p for p in start.pods}
    namespaces = dict(start.namespaces)
    policies = {p.key: p for p in start.policies}
    compiler, cache = NodeCompiler("n1"), ElementCache()
    fast, fast_cache = NodeCompiler("n1"), ElementCache()  # fed snapshots that keep unchanged tuples
    prev: Cluster | None = None
    applied = None
    kernel: dict[str, set[str]] = {}
    for step in range(60):
        kind = _mutate(rng, pods, namespaces, policies, step)
        c = Cluster.build(pods.values(), namespaces.values(), policies.values())
        prev = stable = _stable(c, prev)
        over_inc: list = []
        over_new: list = []
        inc = compiler.compile(c, local=LOCAL, overflows=over_inc)
        fresh = compile_node(c, "n1", local=LOCAL, overflows=over_new)
        assert inc == fresh, f"seed {seed} step {step} after {kind}"
        assert over_inc == over_new
        quick = fast.compile(stable, local=LOCAL)
        assert quick == fresh, f"seed {seed} step {step} after {kind} (identity fast paths)"
        # the daemon's per-pod diff, applied to the table it came from, gives the new table
        text = render_changes(applied, quick, fast_cache) if applied is not None else None
        if text is None:
            kernel = {k: set(v) for k, v in elements(quick, fast_cache).items()}
        else:
            _apply(kernel, text)
            assert kernel == {k: set(v) for k, v in elements(fresh).items()}, f"seed {seed} step {step}"
        applied = quick
        for d in ("ingress", "egress"):  # the groups partition the allows by pod address
            groups = inc.by_pod(d)
            assert frozenset().union(*groups.values()) == inc.allows(d)
            assert all(a.pod == addr for addr, allows in groups.items() for a in allows)
        assert elements(inc, cache) == elements(fresh), f"seed {seed} step {step} after {kind}"
        for a in inc.ingress | inc.egress:  # the compiler skips Allow's checks: they must hold anyway
            assert Allow(a.pod, a.peer, a.proto, a.first_port, a.last_port) == a


def test_a_change_recompiles_only_the_pods_it_touches():
    web = [pod("x", f"w{i}", "n1", f"10.0.1.{i}", labels={"app": "web"}) for i in range(1, 21)]
    db = [pod("y", f"d{i}", "n1", f"10.0.2.{i}", labels={"app": "db"}) for i in range(1, 21)]
    clients = [pod("x", f"c{i}", "n2", f"10.0.3.{i}", labels={"app": "client"}) for i in range(1, 6)]
    policies = [pol("x", "web", sel(app="web"), ingress=[Rule((Peer(pod_selector=sel(app="client")),),
                                                              (Port("TCP", 80),))]),
                pol("y", "db", sel(app="db"), ingress=[Rule((Peer(pod_selector=sel(app="api")),),
                                                            (Port("TCP", 5432),))])]
    compiler = NodeCompiler("n1")
    everyone = web + db + clients
    compiler.compile(cluster(everyone, policies))
    assert compiler.recompiled == 40
    compiler.compile(cluster(everyone, policies))
    assert compiler.recompiled == 0  # nothing changed
    # a new client in x: every web pod's peers changed, no db pod's
    more = everyone + [pod("x", "c9", "n2", "10.0.3.9", labels={"app": "client"})]
    rs = compiler.compile(cluster(more, policies))
    assert compiler.recompiled == 20
    assert rs == compile_node(cluster(more, policies), "n1")
    # one db pod relabelled to web... in y, where no policy selects web: only that pod
    relabelled = [dataclasses.replace(p, labels=intern_labels({"app": "web"})) if p.name == "d1" else p for p in more]
    rs = compiler.compile(cluster(relabelled, policies))
    assert compiler.recompiled == 0  # d1 is now selected by nothing: dropped, none compiled
    assert rs == compile_node(cluster(relabelled, policies), "n1")
    # namespace labels changed: only namespaceSelector peers read them; here none do
    rs = compiler.compile(Cluster.build(relabelled, [ns("x", team="z"), ns("y", team="y")], policies))
    assert compiler.recompiled == 0


def test_unchanged_pods_keep_their_rendered_elements():
    web = [pod("x", f"w{i}", "n1", f"10.0.1.{i}", labels={"app": "web"}) for i in range(1, 4)]
    clients = [pod("x", f"c{i}", "n2", f"10.0.3.{i}", labels={"app": "client"}) for i in range(1, 3)]
    p = [pol("x", "web", sel(app="web"), ingress=[Rule((Peer(pod_selector=sel(app="client")),),
                                                       (Port("TCP", 80),))])]
    compiler, cache = NodeCompiler("n1"), ElementCache()
    first = compiler.compile(cluster(web + clients, p))
    elements(first, cache)
    before = dict(cache.entries)
    relabelled = [dataclasses.replace(w, labels=intern_labels({"app": "none"})) if w.name == "w1" else w for w in web]
    second = compiler.compile(cluster(relabelled + clients, p))
    els = elements(second, cache)
    assert "10.0.1.1 . 10.0.3.1 . tcp . 80" not in els["ingress-exact4"]
    assert "10.0.1.2 . 10.0.3.1 . tcp . 80" in els["ingress-exact4"]
    for key in (("ingress", w.ips[0]) for w in web[1:]):
        assert cache.entries[key] is before[key]  # the very same rendering, not redone
    assert ("ingress", web[0].ips[0]) not in cache.entries
