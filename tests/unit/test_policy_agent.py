"""The policy feature's pure parts: Store (events -> records), PolicyAgent (sync against a fake nft
runner), the gate's request parsing and admission. The kernel side is in tests/integration."""
from __future__ import annotations

import ipaddress
import logging
import threading

import pytest

from policy.agent import PolicyAgent
from policy.compile import compile_node
from policy.gate import BadRequest, Gate, parse_request
from policy.ruleset import Ruleset
from policy.store import Store, slim_pod

A = ipaddress.ip_address


def pod(name, ip=None, labels=None, ns="x", node="n1", uid="u1", ports=()):
    status = {"phase": "Running"}
    if ip:
        status.update(podIP=ip, podIPs=[{"ip": ip}])
    return {"metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels or {}, "resourceVersion": "1",
                         "managedFields": [{"big": "x" * 1000}], "annotations": {"a": "b"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i", "env": [{"name": "E"}],
                                                       "ports": [{"name": n, "containerPort": p} for n, p in ports]}]},
            "status": status}


def policy(name, ns="x", spec=None):
    return {"metadata": {"name": name, "namespace": ns},
            "spec": spec if spec is not None else {"podSelector": {}, "policyTypes": ["Ingress"]}}


def node(name="n1", cidr="10.0.1.0/24"):
    return {"metadata": {"name": name}, "spec": {"podCIDRs": [cidr]}}


class Runner:
    def __init__(self):
        self.texts, self.fail = [], 0

    def apply(self, text):
        if self.fail:
            self.fail -= 1
            raise RuntimeError("refused")
        self.texts.append(text)


def test_slim_pod_keeps_what_policy_reads_and_survives_garbage():
    slim = slim_pod(pod("a", "10.0.1.2", {"app": "web"}, ports=[("http", 80)]))
    assert "managedFields" not in slim["metadata"] and "annotations" not in slim["metadata"]
    assert slim["spec"]["containers"] == [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]
    assert slim["metadata"]["resourceVersion"] == "1"
    for junk in (None, 3, "x", [], {"metadata": 5, "spec": [], "status": "s"}, {"spec": {"containers": 7}}):
        slim_pod(junk)  # never raises: the informer calls it on anything the API sends


def test_store_skips_bad_objects_and_keeps_a_policys_last_good_version(caplog):
    s = Store()
    assert s.on_policy(policy("p"), False)
    bad = policy("p", spec={"podSelector": {"matchLabels": {"bad key!": "v"}}})
    with caplog.at_level(logging.WARNING):
        assert not s.on_policy(bad, False)
    assert ("x", "p") in s.policies and "keeping its last good version" in caplog.text
    assert not s.on_policy(policy("q", spec={"policyTypes": ["Sideways"]}), False)  # new and bad: skipped
    assert ("x", "q") not in s.policies and ("NetworkPolicy", "x", "q") in s.invalid
    assert s.on_policy(policy("p"), True) and not s.policies


def test_store_pod_events_and_versions():
    s = Store()
    v0 = s.version
    assert s.on_pod(pod("a", "10.0.1.2"), False) and s.version == v0 + 1
    assert not s.on_pod(pod("a", "10.0.1.2"), False)  # same record: no sync needed
    assert s.on_pod(pod("a", "10.0.1.2"), True) and not s.pods
    assert not s.on_pod({"metadata": "garbage"}, False)


def test_cni_report_wins_an_address_over_a_stale_pod_and_ends_when_the_api_agrees():
    s = Store()
    s.on_pod(pod("old", "10.0.1.5", uid="u-old"), False)  # its DEL ran, the API has not caught up
    s.on_pod(pod("new", None, {"app": "db"}, uid="u-new"), False)
    s.report("x", "new", "u-new", (A("10.0.1.5"),), "n1")
    _, cluster = s.snapshot()
    assert cluster.pod_at(A("10.0.1.5")).name == "new"  # not "new" < "old" luck: the override wins
    s.on_pod(pod("new", "10.0.1.5", {"app": "db"}, uid="u-new"), False)
    assert not s.overrides


def test_node_cidrs_make_local_pods_known():
    s = Store()
    assert s.on_node(node(), False, "n1") and not s.on_node(node("n2", "10.0.2.0/24"), False, "n1")
    s.on_pod(pod("a", "10.0.1.2"), False)
    _, cluster, local = s.snapshot_all()
    rs = compile_node(cluster, "n1", local=local)
    assert rs.known == {A("10.0.1.2")} and str(rs.local[0]) == "10.0.1.0/24"
    assert not s.on_node({"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["nonsense"]}}, True, "n1")


def agent_with(*policies, pods=()):
    s = Store()
    for p in pods:
        s.on_pod(p, False)
    for p in policies:
        s.on_policy(p, False)
    r = Runner()
    return s, r, PolicyAgent("n1", s, r)


def test_first_sync_is_full_then_diffs_then_full_after_a_refusal():
    s, r, agent = agent_with(pods=[pod("a", "10.0.1.2")])
    agent.sync()
    assert r.texts[-1].startswith("add table inet podwire-policy")
    s.on_policy(policy("deny"), False)
    agent.sync()
    assert "add element inet podwire-policy ingress-isolated4 { 10.0.1.2 }" in r.texts[-1]
    assert "add table" not in r.texts[-1]
    n = len(r.texts)
    agent.sync()
    assert len(r.texts) == n  # nothing changed: nft is not run
    s.on_policy(policy("deny"), True)
    r.fail = 1  # the diff is refused (table edited behind our back): a full rewrite follows
    agent.sync()
    assert r.texts[-1].startswith("add table")
    s.on_policy(policy("deny"), False)
    r.fail = 2  # the diff and the full rewrite both refused: the sync fails, the runner retries
    with pytest.raises(RuntimeError):
        agent.sync()
    assert agent.applied is None  # unknown kernel state: the next sync writes everything


def test_bad_input_never_blocks_the_other_policies():
    huge_ports = [{"port": p, "protocol": "TCP"} for p in range(1000, 3000, 2)]  # 1,000 ports
    excepts = [f"10.{i}.0.0/16" for i in range(1, 101)]
    s, r, agent = agent_with(
        policy("nothing", spec={"podSelector": {"matchLabels": {"app": "nobody"}}}),  # selects nothing
        policy("named", spec={"podSelector": {"matchLabels": {"app": "web"}},
                              "ingress": [{"ports": [{"port": "no-such-port"}]}]}),
        policy("huge", ns="big", spec={"podSelector": {}, "ingress": [{
            "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": excepts}}], "ports": huge_ports}]}),
        policy("gone", ns="vanished"),
        pods=[pod("w", "10.0.1.2", {"app": "web"}), pod("b", "10.0.1.3", ns="big")])
    agent.sync()
    rs = agent.applied
    # the named port no pod has: web isolated, nothing allowed but itself
    assert A("10.0.1.2") in rs.isolated_ingress
    assert {(a.pod, a.peer.prefixlen) for a in rs.ingress if a.pod == A("10.0.1.2")} == {(A("10.0.1.2"), 32)}
    # 1,000 ports over an ipBlock with 100 excepts: applied exactly (within the per-pod budget)
    b = [a for a in rs.ingress if a.pod == A("10.0.1.3") and a.proto == "tcp"]
    nets = {a.peer for a in b}
    assert len(b) == 1000 * len(nets) and {a.first_port for a in b} == set(range(1000, 3000, 2))
    assert not any(n.overlaps(ipaddress.ip_network("10.5.0.0/16")) for n in nets)


def test_a_pod_over_the_allow_budget_stays_isolated_with_itself_only():
    s, r, agent = agent_with(
        policy("wide", spec={"podSelector": {}, "ingress": [{"ports": [{"port": p} for p in range(1, 300, 2)]}]}),
        pods=[pod("a", "10.0.1.2")])
    overflows: list = []
    _, cluster = s.snapshot()
    rs = compile_node(cluster, "n1", overflows=overflows, max_allows=100)
    assert [(o.pod, o.direction, o.policies) for o in overflows] == [("x/a", "Ingress", ("x/wide",))]
    assert rs.isolated_ingress == {A("10.0.1.2")} and len(rs.ingress) == 1  # itself
    assert len(compile_node(cluster, "n1").ingress) == 151  # the default budget holds 150 ports + itself


def test_wait_committed_releases_waiters_after_the_sync():
    s, r, agent = agent_with(policy("deny"), pods=[pod("a", None)])
    agent.sync()
    version = s.report("x", "a", "u1", (A("10.0.1.9"),), "n1")
    assert not agent.wait_committed(version, 0.05)
    threading.Timer(0.05, agent.sync).start()
    assert agent.wait_committed(version, 5)
    assert A("10.0.1.9") in agent.applied.isolated_ingress


@pytest.mark.parametrize("data", [
    b"", b"nonsense", b"[]", b'"x"', b"[" * 100000,
    b'{"namespace": "x", "name": "a", "ips": []}',
    b'{"namespace": "x", "name": "a", "ips": ["10.0.0.1", "10.0.0.2"]}',
    b'{"namespace": "x", "name": "a", "ips": ["10.0.0.1", "fd00::1", "10.0.0.2"]}',
    b'{"namespace": "x", "name": "a", "ips": ["fe80::1%eth0"]}',
    b'{"namespace": "x", "name": "a", "ips": ["localhost"]}',
    b'{"namespace": "X;drop", "name": "a", "ips": ["10.0.0.1"]}',
    b'{"namespace": "x", "name": "../a", "ips": ["10.0.0.1"]}',
    b'{"namespace": "x", "name": "a", "uid": "u\\nx", "ips": ["10.0.0.1"]}',
    b'{"namespace": 5, "name": "a", "ips": ["10.0.0.1"]}',
])
def test_gate_refuses_bad_requests(data):
    with pytest.raises(BadRequest):
        parse_request(data)


def test_gate_parses_a_good_request():
    ns, name, uid, ips = parse_request(b'{"namespace": "x", "name": "a", "uid": "1-2", "ips": ["10.0.0.1", "fd00::1"]}')
    assert (ns, name, uid, ips) == ("x", "a", "1-2", (A("10.0.0.1"), A("fd00::1")))


def test_gate_admission():
    s, r, agent = agent_with(pods=[pod("a", None)])
    agent.sync()
    triggered = []
    gate = Gate("/nonexistent/sock", "n1", s, agent, lambda: triggered.append(1), lambda ns, n: None, timeout=0.2)
    gate.trigger = agent.sync  # a sync runner that runs at once
    # no policy anywhere: admitted after one (cheap) sync, the address is known
    assert gate.admit("x", "a", "u1", (A("10.0.1.9"),))[0]
    # a pod the API does not show, in a namespace without policies: admitted, known as well
    assert gate.admit("y", "static", "", (A("10.0.1.11"),))[0]
    s.on_node(node(), False, "n1")
    agent.sync()
    assert {A("10.0.1.9"), A("10.0.1.11")} <= agent.applied.known
    gate.trigger = lambda: triggered.append(1)
    s.on_policy(policy("deny"), False)
    # a pod the API does not show, in a namespace with policies: refused (the plugin retries)
    ok, why = gate.admit("x", "ghost", "", (A("10.0.1.10"),))
    assert not ok and "not in the API" in why
    # in force only after a sync: nobody syncs here, so the bounded wait ends with a refusal
    ok, why = gate.admit("x", "a", "u1", (A("10.0.1.9"),))
    assert not ok and "not committed" in why
    gate.trigger = agent.sync  # a sync runner that runs at once
    assert gate.admit("x", "a", "u1", (A("10.0.1.9"),))[0]
    assert A("10.0.1.9") in agent.applied.isolated_ingress
    not_ready = Gate("/x", "n1", s, agent, agent.sync, lambda ns, n: None, timeout=0.1, ready=lambda: False)
    assert not not_ready.admit("x", "a", "u1", (A("10.0.1.9"),))[0]


def test_conntrack_worker_runs_off_the_sync_and_coalesces():
    import time

    from policy.agent import ConntrackWorker

    gate, calls = threading.Event(), []

    def cleaner(old, new):
        calls.append((old, new))
        gate.wait(5)
        return 2

    r0, r1, r2, r3 = (Ruleset(known=frozenset({ipaddress.ip_address(f"10.0.0.{i}")})) for i in range(4))
    w = ConntrackWorker(cleaner)
    try:
        assert w(r0, r1) == 0  # returns at once: the sync goes on
        for _ in range(100):
            if calls:
                break
            time.sleep(0.01)
        w(r1, r2)  # while the first runs: these two coalesce into one, from r1 to r3
        w(r2, r3)
        gate.set()
        assert w.idle(5)
        assert calls == [(r0, r1), (r1, r3)]
        assert w.deleted == 4
    finally:
        w.stop()
