"""loadbalancer.controller (writes), loadbalancer.announce (eligibility), loadbalancer.lease
(the lock's decisions against an in-memory API with resourceVersion checks). No root."""
from __future__ import annotations

import ipaddress
import json

import pytest
from kubernetes.client.exceptions import ApiException

from loadbalancer.announce import Announced, eligible, endpoint_nodes_from_slice, lease_name
from loadbalancer.controller import Allocator, Event, Finalizers, Status, pool_event, pool_status, service_writes
from loadbalancer.from_api import Release, cluster_addresses
from loadbalancer.lease import Leases
from loadbalancer.model import CONDITION, FINALIZER, Decision, PoolProblem

ip = ipaddress.ip_address
NOW = "2026-11-28T00:00:00Z"


def obj(**status):
    return {"metadata": {"name": "web", "namespace": "d", "resourceVersion": "7", "uid": "u1", "generation": 2,
                         "finalizers": ["other"]},
            "spec": {"type": "LoadBalancer"}, "status": status}


def test_first_assignment_adds_finalizer_status_and_event():
    w = service_writes(obj(), Decision("d/web", (ip("10.0.0.1"),), True, "Assigned", "assigned 10.0.0.1"), NOW)
    assert [type(x) for x in w] == [Finalizers, Status, Event]
    assert w[0].finalizers == ("other", FINALIZER) and w[0].version == "7"
    st = w[1].body["status"]
    assert st["loadBalancer"] == {"ingress": [{"ip": "10.0.0.1", "ipMode": "VIP"}]}
    assert st["conditions"] == [{"type": CONDITION, "status": "True", "reason": "Assigned",
                                 "message": "assigned 10.0.0.1", "lastTransitionTime": NOW, "observedGeneration": 2}]
    assert w[2].type == "Normal" and w[2].uid == "u1"


def test_nothing_to_write_when_the_object_shows_the_decision():
    d = Decision("d/web", (ip("10.0.0.1"),), True, "Assigned", "assigned 10.0.0.1")
    o = obj()
    for x in service_writes(o, d, NOW):
        if isinstance(x, Status):
            o = x.body
        if isinstance(x, Finalizers):
            o["metadata"]["finalizers"] = list(x.finalizers)
    assert service_writes(o, d, "2030-01-01T00:00:00Z") == []


def test_a_service_without_generation_is_not_rewritten_every_sync():
    """Services have no metadata.generation: the observedGeneration 0 we write is dropped by the API server
    (omitempty), so the stored condition has none. That must read as unchanged, not as a difference (it
    made every sync PUT every Service's status, found next to MetalLB: 1256 writes for 23 assignments)."""
    d = Decision("d/web", (ip("10.0.0.1"),), True, "Assigned", "assigned 10.0.0.1")
    o = obj(loadBalancer={"ingress": [{"ip": "10.0.0.1", "ipMode": "VIP"}]},
            conditions=[{"type": CONDITION, "status": "True", "reason": "Assigned", "message": "assigned 10.0.0.1",
                         "lastTransitionTime": NOW}])
    del o["metadata"]["generation"]
    o["metadata"]["finalizers"].append(FINALIZER)
    assert service_writes(o, d, "2030-01-01T00:00:00Z") == []


def test_failure_keeps_transition_time_while_reason_holds_and_warns_once():
    fail = Decision("d/web", (), False, "PoolExhausted", "no free IPv4 address in lan")
    o = obj(conditions=[{"type": CONDITION, "status": "False", "reason": "PoolExhausted",
                         "message": "old text", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2}])
    o["metadata"]["finalizers"].append(FINALIZER)
    w = service_writes(o, fail, NOW)
    assert [type(x) for x in w] == [Status]  # message changed, reason did not: no new event
    assert w[0].body["status"]["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_release_clears_address_and_condition_then_finalizer():
    o = obj(loadBalancer={"ingress": [{"ip": "10.0.0.1"}]},
            conditions=[{"type": "Other", "status": "True"}, {"type": CONDITION, "status": "True"}])
    o["metadata"]["finalizers"].append(FINALIZER)
    w = service_writes(o, Release("d", "web", False), NOW)
    assert [type(x) for x in w] == [Status, Finalizers]
    assert w[0].body["status"]["loadBalancer"] == {}
    assert w[0].body["status"]["conditions"] == [{"type": "Other", "status": "True"}]
    assert w[1].finalizers == ("other",)
    assert o["status"]["loadBalancer"]["ingress"]  # the cached object is never modified


def test_pool_status():
    assert pool_status({}, None, [PoolProblem("p", "Conflicting", "overlaps q")], 0)["conditions"][0]["reason"] \
        == "Conflicting"
    # a pool that keeps node addresses back still serves, and says what it keeps back
    st = pool_status({}, None, [PoolProblem("p", "ContainsNodeAddresses", "10.0.0.5 (node n1)", fatal=False)], 3)
    assert [(c["type"], c["status"], c["reason"]) for c in st["conditions"]] == [
        ("Ready", "True", "Serving"), ("Degraded", "True", "ContainsNodeAddresses")]
    assert st["assigned"] == 3


def test_pool_events_on_change_only():
    serving = pool_status({}, None, [], 0)
    overlaps = pool_status({}, None, [PoolProblem("p", "OverlapsCluster", "overlaps the Service CIDR")], 0)
    nodes = pool_status({}, None, [PoolProblem("p", "ContainsNodeAddresses", "10.0.0.5 (node n1)", fatal=False)], 0)
    assert pool_event({}, serving) is None  # a new pool that serves: no news
    assert pool_event({}, overlaps) == ("Warning", "OverlapsCluster", "overlaps the Service CIDR")
    assert pool_event(overlaps, overlaps) is None
    assert pool_event(overlaps, serving) == ("Normal", "Serving", "the pool serves again")
    assert pool_event(serving, nodes) == ("Warning", "ContainsNodeAddresses", "10.0.0.5 (node n1)")
    assert pool_event({"conditions": "junk"}, nodes)[0] == "Warning"


class Listed:
    def __init__(self, items):
        self.items = items

    def list(self):
        return self.items


class RecordingWriter:
    def __init__(self):
        self.statuses, self.events, self.services = [], [], []

    def apply(self, writes):
        self.services.append(writes)
        return None

    def pool_status(self, obj, status):
        self.statuses.append((obj["metadata"]["name"], status))
        return True

    def event(self, e, kind="Service"):
        self.events.append((kind, e.name, e.type, e.reason, e.message))


def test_allocator_refuses_pools_inside_the_cluster_and_keeps_node_addresses_back():
    """The controller's sync over cached objects: a pool overlapping the Service CIDR is refused with
    a status and an Event, a pool holding a node's address serves without it."""
    nodes = [{"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]},
              "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.10"},
                                       {"type": "Hostname", "address": "n1"}]}}]
    cidrs = [{"metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16"]}}]
    pools = [{"metadata": {"name": "bad", "uid": "u-bad", "creationTimestamp": "2026-01-01T00:00:00Z"},
              "spec": {"addresses": ["10.96.200.0/28"]}},
             {"metadata": {"name": "lan", "uid": "u-lan", "creationTimestamp": "2026-01-01T00:00:00Z"},
              "spec": {"addresses": ["172.18.0.10-172.18.0.11"]}}]
    svc = {"metadata": {"name": "web", "namespace": "d", "uid": "s", "resourceVersion": "1",
                        "creationTimestamp": "2026-01-02T00:00:00Z"},
           "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}, "status": {}}
    writer = RecordingWriter()
    Allocator(Listed([svc]), Listed(pools), writer, lambda: cluster_addresses(nodes, cidrs)).sync()
    status = dict(writer.statuses)
    assert status["bad"]["conditions"][0]["reason"] == "OverlapsCluster"
    assert "Service CIDR (ServiceCIDR kubernetes) 10.96.0.0/16" in status["bad"]["conditions"][0]["message"]
    assert status["lan"]["conditions"][1]["reason"] == "ContainsNodeAddresses"
    assert ("LoadBalancerPool", "bad", "Warning", "OverlapsCluster") in [e[:4] for e in writer.events]
    [writes] = writer.services
    shown = next(w for w in writes if isinstance(w, Status)).body["status"]["loadBalancer"]
    assert shown == {"ingress": [{"ip": "172.18.0.11", "ipMode": "VIP"}]}  # .10 is node n1's


def test_eligibility_under_local_prefers_nodes_with_endpoints():
    a = Announced("d/a", (ip("10.0.0.1"),), local=True)
    c = Announced("d/c", (ip("10.0.0.2"),), local=False)
    eps = {"d/a": frozenset({"n2"})}
    assert eligible([a, c], eps, "n1") == {ip("10.0.0.1"): False, ip("10.0.0.2"): True}
    assert eligible([a, c], eps, "n2") == {ip("10.0.0.1"): True, ip("10.0.0.2"): True}
    assert eligible([a], {}, "n1") == {ip("10.0.0.1"): True}  # no endpoints anywhere: anyone answers
    assert eligible([a, c], eps, "n2", excluded=True) == {ip("10.0.0.1"): False, ip("10.0.0.2"): False}


def test_endpoint_nodes_and_lease_names():
    sl = {"metadata": {"namespace": "d", "labels": {"kubernetes.io/service-name": "a"}},
          "endpoints": [{"nodeName": "n1", "conditions": {"ready": True}},
                        {"nodeName": "n2", "conditions": {"ready": False}}, "junk", {"nodeName": 5}]}
    assert endpoint_nodes_from_slice(sl) == ("d/a", frozenset({"n1"}))
    assert endpoint_nodes_from_slice({"metadata": None}) is None
    assert lease_name(ip("10.0.0.5")) == "podwire-lb-10-0-0-5"
    assert lease_name(ip("fd00::")) == "podwire-lb-fd00-0000-0000-0000-0000-0000-0000-0000"


class Reply:
    def __init__(self, body):
        self.data = json.dumps(body).encode()


class FakeLeaseAPI:
    """Just enough of coordination.k8s.io: resourceVersion checks on replace, 409 on create."""

    def __init__(self):
        self.store: dict[str, dict] = {}
        self.rv = 0

    def _put(self, body):
        self.rv += 1
        body = json.loads(json.dumps(body))
        body["metadata"]["resourceVersion"] = str(self.rv)
        self.store[body["metadata"]["name"]] = body
        return Reply(body)

    def create_namespaced_lease(self, ns, body, **_):
        if body["metadata"]["name"] in self.store:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._put(body)

    def replace_namespaced_lease(self, name, ns, body, **_):
        cur = self.store.get(name)
        if cur is None:
            raise ApiException(status=404, reason="NotFound")
        if body["metadata"].get("resourceVersion") != cur["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        return self._put(body)

    def read_namespaced_lease(self, name, ns, **_):
        if name not in self.store:
            raise ApiException(status=404, reason="NotFound")
        return Reply(self.store[name])


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def pair():
    api, clock = FakeLeaseAPI(), Clock()
    a = Leases(api, "podwire", "n1", duration=6, renew_every=2, clock=clock)
    b = Leases(api, "podwire", "n2", duration=6, renew_every=2, clock=clock)
    return api, clock, a, b


def feed(api, *sides):  # what the informer would deliver
    for s in sides:
        for o in api.store.values():
            s.observe(o)


def test_one_holder_renewal_and_takeover_after_expiry():
    api, clock, a, b = pair()
    assert a.hold("x", "address")
    feed(api, b)
    assert not b.hold("x", "address")
    for _ in range(5):  # a keeps renewing: b never takes it
        clock.t += 2
        assert a.hold("x", "address")
        feed(api, a, b)
        assert not b.hold("x", "address")
    writes = api.rv
    clock.t += 1
    assert a.hold("x", "address") and api.rv == writes  # young lease: nothing written
    clock.t += 6.5  # a died (no renewals seen for longer than the duration)
    assert b.hold("x", "address")
    assert api.store["x"]["spec"]["holderIdentity"] == "n2" and api.store["x"]["spec"]["leaseTransitions"] == 1
    assert not a.held("x")  # a's own claim has lapsed too


def test_both_see_it_expired_only_one_wins():
    api, clock, a, b = pair()
    c = Leases(api, "podwire", "n3", duration=6, renew_every=2, clock=clock)
    assert a.hold("x", "address")
    feed(api, b, c)
    clock.t += 7
    assert b.hold("x", "address")
    assert not c.hold("x", "address")  # its write carried the old resourceVersion: 409, re-read
    assert c.holder("x") == "n2"


def test_release_hands_over_at_once():
    api, clock, a, b = pair()
    assert a.hold("x", "address")
    a.release("x", "address")
    feed(api, b)
    assert b.hold("x", "address")


def test_holder_that_cannot_renew_stops_claiming():
    api, clock, a, _ = pair()
    assert a.hold("x", "address")

    def down(*_a, **_k):
        raise ConnectionError("api down")
    api.replace_namespaced_lease = down
    clock.t += 4
    assert a.hold("x", "address")  # last good write 4 s ago, the lease lasts 6
    clock.t += 3
    assert not a.hold("x", "address")


@pytest.mark.parametrize("junk", [None, 5, {"metadata": "x"}, {"metadata": {"name": 3}},
                                  {"metadata": {"name": "x"}, "spec": {"leaseDurationSeconds": "9"}}])
def test_observe_ignores_junk(junk):
    _, _, a, _ = pair()
    a.observe(junk)


def test_an_address_is_answered_on_the_link_whose_subnet_holds_it():
    from loadbalancer.feature import Responders

    r = Responders()
    r._links = [("eth0", ipaddress.ip_interface("172.30.0.11/24")), ("podwire0", ipaddress.ip_interface("10.0.0.1/8")),
                ("eth1", ipaddress.ip_interface("10.1.0.1/16")), ("eth0", ipaddress.ip_interface("fd00::b/64"))]
    assert r.interface_for(ip("172.30.0.241")) == "eth0"
    assert r.interface_for(ip("10.1.2.3")) == "eth1"  # the most specific subnet
    assert r.interface_for(ip("fd00::f1")) == "eth0"
    assert r.interface_for(ip("192.0.2.1")) is None  # behind a router: ARP cannot reach it
    assert r.interface_for(ip("172.30.0.11")) is None  # the node's own address is not a LoadBalancer's
