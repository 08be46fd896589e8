"""policy.store's incremental snapshot (policy/pod_index.py) equals the Cluster a full build gives
from the same records, over seeded random histories: pods added, changed (addresses shared to make
conflicts, hostNetwork, terminal phases), deleted; the CNI plugin's reports and their expiry; the
API confirming or contradicting them; policies and namespaces coming and going."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest

from policy.model import Cluster, Pod
from policy.store import OVERRIDE_TTL, Store
from tests.unit.test_policy_compile import A

NAMES = ("x", "y", "z")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pod_dict(ns: str, name: str, ips: list[str], uid: str, labels: dict, host: bool = False,
             phase: str = "Running", rv: int = 1) -> dict:
    status: dict = {"phase": phase}
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": i} for i in ips]
    return {"metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels, "resourceVersion": str(rv)},
            "spec": {"nodeName": "n1", "hostNetwork": host, "containers": [{"name": "c"}]}, "status": status}


def policy_dict(ns: str, name: str, app: str) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "uid": f"u-{ns}-{name}", "resourceVersion": "1"},
            "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"]}}


def reference(store: Store) -> Cluster:
    """The full build, as the Store made every snapshot before it was incremental."""
    pods = dict(store.pods)
    if store.overrides:
        fresh = {ip: key for key, o in store.overrides.items() if key in pods for ip in o[1]}
        for key, pod in store.pods.items():
            if key not in store.overrides and any(ip in fresh for ip in pod.ips):
                pods[key] = replace(pod, ips=tuple(ip for ip in pod.ips if ip not in fresh))
        for key, (uid, ips, node, _) in store.overrides.items():
            shown = pods.get(key)
            pods[key] = Pod(key[0], key[1], uid, node, ips) if shown is None else \
                replace(shown, ips=ips, node=shown.node or node)
    return Cluster.build(pods.values(), store.namespaces.values(), store.policies.values())


def same(a: Cluster, b: Cluster) -> bool:
    return (a.pods == b.pods and dict(a.pods_by_namespace) == dict(b.pods_by_namespace)
            and dict(a.pods_by_ip) == dict(b.pods_by_ip) and a.ip_conflicts == b.ip_conflicts
            and a.policies == b.policies and dict(a.policies_by_namespace) == dict(b.policies_by_namespace)
            and dict(a.namespaces) == dict(b.namespaces))


@pytest.mark.parametrize("seed", range(15))
def test_incremental_snapshot_equals_a_full_build(seed):
    rng = random.Random(seed)
    clock = Clock()
    store = Store(clock=clock)
    rv = [1]

    def address() -> str:
        return f"10.0.0.{rng.randrange(1, 12)}" if rng.random() < 0.85 else f"fd00::{rng.randrange(1, 6):x}"

    for step in range(150):
        kind = rng.choice(("pod", "pod", "pod", "delete", "report", "report", "tick", "policy", "namespace"))
        ns, name = rng.choice(NAMES), f"p{rng.randrange(8)}"
        rv[0] += 1
        if kind == "pod":
            store.on_pod(pod_dict(ns, name, [address() for _ in range(rng.choice((0, 1, 1, 1, 2)))],
                                  f"uid-{name}-{rng.randrange(2)}", {"app": rng.choice(("a", "b"))},
                                  host=rng.random() < 0.1, phase=rng.choice(("Running",) * 8 + ("Failed", "Pending")),
                                  rv=rv[0]), False)
        elif kind == "delete":
            store.on_pod(pod_dict(ns, name, [], "", {}), True)
        elif kind == "report":
            store.report(ns, name, f"uid-{name}-{rng.randrange(2)}", (A(address()),), "n1")
        elif kind == "tick":
            clock.now += rng.choice((1.0, OVERRIDE_TTL / 2, OVERRIDE_TTL + 1))
        elif kind == "policy":
            store.on_policy(policy_dict(ns, f"pol{rng.randrange(3)}", rng.choice(("a", "b"))), rng.random() < 0.3)
        else:
            store.on_namespace({"metadata": {"name": ns, "labels": {"team": rng.choice(("r", "b"))},
                                             "resourceVersion": str(rv[0])}}, False)
        if rng.random() < 0.6:  # snapshots now and then: changes accumulate between them too
            _, got, _ = store.snapshot_all()
            want = reference(store)
            assert same(got, want), f"seed {seed} step {step} after {kind}"


def test_a_snapshot_reuses_the_records_of_unchanged_pods():
    store = Store()
    for i in range(5):
        store.on_pod(pod_dict("x", f"p{i}", [f"10.0.0.{i + 1}"], f"u{i}", {"app": "a"}), False)
    _, first = store.snapshot()
    store.on_pod(pod_dict("x", "p0", ["10.0.0.1"], "u0", {"app": "b"}, rv=2), False)
    store.on_pod(pod_dict("x", "p1", ["10.0.0.2"], "u1", {"app": "a"}, rv=2), False)  # equal: no change
    _, second = store.snapshot()
    old, new = first.pods_in("x"), second.pods_in("x")
    assert old[0] is not new[0] and new[0].labels["app"] == "b"
    assert all(a is b for a, b in zip(old[1:], new[1:], strict=True))
