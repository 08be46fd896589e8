"""loadbalancer.allocate and loadbalancer.from_api: pure, no root."""
from __future__ import annotations

import ipaddress
import random

import pytest

from loadbalancer.allocate import allocate
from loadbalancer.from_api import Invalid, Release, parse_entry, pool_from_api, service_from_api
from loadbalancer.model import (
    ANN_IPS,
    ANN_POOL,
    ANN_SHARING,
    CONDITION,
    EXHAUSTED,
    FINALIZER,
    IN_USE,
    INVALID,
    NO_POOL,
    NOT_IN_POOL,
    PARTLY,
    LBService,
)

ip = ipaddress.ip_address


def pool(name, *addresses, selector=None, auto=True, created="2026-01-01T00:00:00Z"):
    spec = {"addresses": list(addresses), "autoAssign": auto}
    if selector is not None:
        spec["serviceSelector"] = selector
    return pool_from_api({"metadata": {"name": name, "creationTimestamp": created}, "spec": spec})


def svc(name, ns="default", *, families=("IPv4",), policy=None, ann=None, labels=None, ports=((80, "TCP"),),
        local=False, selector=None, current=(), created="2026-01-02T00:00:00Z", lb_ip=None, **spec_extra):
    spec = {"type": "LoadBalancer", "ipFamilies": list(families),
            "ports": [{"port": p, "protocol": pr} for p, pr in ports],
            "selector": selector or {"app": name}, **spec_extra}
    if policy:
        spec["ipFamilyPolicy"] = policy
    if local:
        spec["externalTrafficPolicy"] = "Local"
    if lb_ip:
        spec["loadBalancerIP"] = lb_ip
    obj = {"metadata": {"name": name, "namespace": ns, "labels": labels or {}, "annotations": ann or {},
                        "creationTimestamp": created},
           "spec": spec, "status": {"loadBalancer": {"ingress": [{"ip": a} for a in current]}}}
    out = service_from_api(obj)
    assert isinstance(out, LBService)
    return out


def addrs(decisions, key):
    return [str(a) for a in decisions[key].addresses]


def test_auto_assign_skips_cidr_edges_and_is_lowest_first():
    d, problems = allocate([pool("p", "10.0.0.0/29")], [svc("a"), svc("b", created="2026-01-03T00:00:00Z")])
    assert not problems
    assert addrs(d, "default/a") == ["10.0.0.1"] and addrs(d, "default/b") == ["10.0.0.2"]
    assert d["default/a"].ok and d["default/a"].reason == "Assigned"


def test_range_form_gives_every_address_and_small_prefixes_are_whole():
    d, _ = allocate([pool("p", "10.0.0.0-10.0.0.1")], [svc("a"), svc("b", created="2026-01-03T00:00:00Z")])
    assert addrs(d, "default/a") == ["10.0.0.0"] and addrs(d, "default/b") == ["10.0.0.1"]
    d, _ = allocate([pool("p", "10.0.0.8/31")], [svc("a")])
    assert addrs(d, "default/a") == ["10.0.0.8"]


def test_exhausted_pool_is_reported_and_older_service_wins():
    older, newer = svc("old", created="2026-01-01T00:00:00Z"), svc("new", created="2026-01-05T00:00:00Z")
    d, _ = allocate([pool("p", "10.0.0.7")], [newer, older])
    assert addrs(d, "default/old") == ["10.0.0.7"]
    assert not d["default/new"].ok and d["default/new"].reason == EXHAUSTED and "p" in d["default/new"].message


def test_current_address_is_kept_even_if_a_lower_one_is_free():
    """A restarted or failed-over allocator changes no address."""
    d, _ = allocate([pool("p", "10.0.0.0/28")], [svc("a", current=("10.0.0.9",))])
    assert addrs(d, "default/a") == ["10.0.0.9"]


def test_current_address_outside_every_pool_is_replaced():
    d, _ = allocate([pool("p", "10.0.0.0/28")], [svc("a", current=("192.0.2.1",))])
    assert addrs(d, "default/a") == ["10.0.0.1"]


def test_current_address_held_by_an_older_service_goes_to_the_older():
    a = svc("a", current=("10.0.0.3",), created="2026-01-01T00:00:00Z")
    b = svc("b", current=("10.0.0.3",), created="2026-01-02T00:00:00Z")
    d, _ = allocate([pool("p", "10.0.0.0/28")], [b, a])
    assert addrs(d, "default/a") == ["10.0.0.3"] and addrs(d, "default/b") == ["10.0.0.1"]


def test_requested_address_annotation_and_legacy_field():
    d, _ = allocate([pool("p", "10.0.0.0/28")], [svc("a", ann={ANN_IPS: "10.0.0.12"}), svc("b", lb_ip="10.0.0.5")])
    assert addrs(d, "default/a") == ["10.0.0.12"] and addrs(d, "default/b") == ["10.0.0.5"]


def test_requested_address_outside_pools_or_taken():
    a = svc("a", ann={ANN_IPS: "10.9.9.9"})
    b = svc("b", current=("10.0.0.4",), created="2026-01-09T00:00:00Z")
    c = svc("c", ann={ANN_IPS: "10.0.0.4"}, created="2026-01-01T00:00:00Z")
    d, _ = allocate([pool("p", "10.0.0.0/28")], [a, b, c])
    assert d["default/a"].reason == NOT_IN_POOL and not d["default/a"].addresses
    # c is older but b already shows the address: an address in use is never taken away
    assert d["default/c"].reason == IN_USE and "default/b" in d["default/c"].message
    assert addrs(d, "default/b") == ["10.0.0.4"]


def test_request_can_use_a_manual_pool_auto_cannot():
    manual = pool("manual", "10.1.0.0/30", auto=False)
    d, _ = allocate([manual], [svc("a"), svc("b", ann={ANN_IPS: "10.1.0.2"}), svc("c", ann={ANN_POOL: "manual"})])
    assert d["default/a"].reason == NO_POOL
    assert addrs(d, "default/b") == ["10.1.0.2"]
    assert addrs(d, "default/c") == ["10.1.0.1"]


def test_named_pool_only():
    d, _ = allocate([pool("a-pool", "10.0.0.0/30"), pool("b-pool", "10.0.1.0/30")],
                    [svc("x", ann={ANN_POOL: "b-pool"}), svc("y", ann={ANN_POOL: "nope"})])
    assert addrs(d, "default/x") == ["10.0.1.1"]
    assert d["default/y"].reason == NO_POOL and "nope" in d["default/y"].message


def test_service_selector():
    p = pool("team", "10.0.0.0/30", selector={"matchLabels": {"team": "blue"}})
    d, _ = allocate([p], [svc("a", labels={"team": "blue"}), svc("b", labels={"team": "red"})])
    assert addrs(d, "default/a") == ["10.0.0.1"] and d["default/b"].reason == NO_POOL


def test_current_address_dropped_when_selector_no_longer_matches():
    p = pool("team", "10.0.0.0/30", selector={"matchLabels": {"team": "blue"}})
    d, _ = allocate([p], [svc("a", labels={"team": "red"}, current=("10.0.0.1",))])
    assert not d["default/a"].addresses and d["default/a"].reason == NO_POOL


def test_sharing_needs_same_key_and_disjoint_ports():
    shared = {ANN_SHARING: "k1"}
    a = svc("a", ann=shared, ports=((80, "TCP"),), created="2026-01-01T00:00:00Z")
    b = svc("b", ann=shared, ports=((443, "TCP"),), created="2026-01-02T00:00:00Z")
    c = svc("c", ann=shared, ports=((80, "TCP"),), created="2026-01-03T00:00:00Z")  # port clash
    e = svc("e", ann={ANN_SHARING: "k2"}, ports=((53, "UDP"),), created="2026-01-04T00:00:00Z")
    d, _ = allocate([pool("p", "10.0.0.0/29")], [a, b, c, e])
    assert addrs(d, "default/a") == addrs(d, "default/b") == ["10.0.0.1"]
    assert addrs(d, "default/c") == ["10.0.0.2"]
    assert addrs(d, "default/e") == ["10.0.0.3"]


def test_sharing_same_port_number_other_protocol_is_disjoint():
    shared = {ANN_SHARING: "dns"}
    d, _ = allocate([pool("p", "10.0.0.0/29")], [svc("t", ann=shared, ports=((53, "TCP"),)),
                                                 svc("u", ann=shared, ports=((53, "UDP"),))])
    assert addrs(d, "default/t") == addrs(d, "default/u")


def test_sharing_under_local_needs_same_selector():
    shared = {ANN_SHARING: "k"}
    a = svc("a", ann=shared, ports=((80, "TCP"),), local=True, selector={"app": "x"}, created="2026-01-01T00:00:00Z")
    b = svc("b", ann=shared, ports=((81, "TCP"),), local=True, selector={"app": "y"}, created="2026-01-02T00:00:00Z")
    c = svc("c", ann=shared, ports=((82, "TCP"),), local=True, selector={"app": "x"}, created="2026-01-03T00:00:00Z")
    d, _ = allocate([pool("p", "10.0.0.0/29")], [a, b, c])
    assert addrs(d, "default/a") == addrs(d, "default/c") != addrs(d, "default/b")


def test_requested_shared_address():
    a = svc("a", ann={ANN_SHARING: "k", ANN_IPS: "10.0.0.5"}, ports=((80, "TCP"),))
    b = svc("b", ann={ANN_SHARING: "k", ANN_IPS: "10.0.0.5"}, ports=((81, "TCP"),), created="2026-01-03T00:00:00Z")
    c = svc("c", ann={ANN_IPS: "10.0.0.5"}, ports=((82, "TCP"),), created="2026-01-04T00:00:00Z")
    d, _ = allocate([pool("p", "10.0.0.0/29")], [a, b, c])
    assert addrs(d, "default/a") == addrs(d, "default/b") == ["10.0.0.5"]
    assert d["default/c"].reason == IN_USE


DUAL = [pool("v4", "10.0.0.0/30"), pool("v6", "fd00::/126")]


def test_dual_stack_gets_both_in_family_order():
    d, _ = allocate(DUAL, [svc("a", families=("IPv6", "IPv4"), policy="RequireDualStack")])
    assert addrs(d, "default/a") == ["fd00::1", "10.0.0.1"]


def test_single_stack_gets_its_primary_family_only():
    d, _ = allocate(DUAL, [svc("a", families=("IPv6",), policy="SingleStack")])
    assert addrs(d, "default/a") == ["fd00::1"]


def test_require_dual_stack_is_all_or_nothing():
    d, _ = allocate([pool("v4", "10.0.0.0/30")],
                    [svc("a", families=("IPv4", "IPv6"), policy="RequireDualStack"),
                     svc("b", created="2026-01-09T00:00:00Z")])
    assert not d["default/a"].ok and d["default/a"].reason == NO_POOL and not d["default/a"].addresses
    assert addrs(d, "default/b") == ["10.0.0.1"]  # a gave back the IPv4 address it could have had


def test_prefer_dual_stack_settles_for_the_primary():
    d, _ = allocate([pool("v4", "10.0.0.0/30")], [svc("a", families=("IPv4", "IPv6"), policy="PreferDualStack")])
    assert d["default/a"].ok and d["default/a"].reason == PARTLY and addrs(d, "default/a") == ["10.0.0.1"]


def test_overlapping_pools_newer_conflicts():
    old = pool("old", "10.0.0.0/28", created="2026-01-01T00:00:00Z")
    new = pool("new", "10.0.0.8/29", created="2026-02-01T00:00:00Z")
    d, problems = allocate([new, old], [svc("a", ann={ANN_POOL: "new"})])
    assert [(p.pool, p.reason) for p in problems] == [("new", "Conflicting")]
    assert d["default/a"].reason == NO_POOL


def test_bad_request_is_reported_not_assigned():
    for ann in ({ANN_IPS: "10.0.0.1,10.0.0.2"}, {ANN_IPS: "nope"}, {ANN_IPS: "10.0.0.1,fd00::1,10.0.0.3"},
                {ANN_POOL: "Bad_Name"}, {ANN_SHARING: "x" * 80}, {ANN_SHARING: "a b"}):
        d, _ = allocate([pool("p", "10.0.0.0/28")], [svc("a", ann=ann, current=("10.0.0.1",))])
        assert d["default/a"].reason == INVALID and not d["default/a"].addresses, ann


def test_ipv6_range_and_huge_pool():
    d, _ = allocate([pool("p", "fd00::/64")], [svc("a", families=("IPv6",))])
    assert addrs(d, "default/a") == ["fd00::1"]
    d, _ = allocate([pool("p", "fd00::5-fd00::6")], [svc("a", families=("IPv6",))])
    assert addrs(d, "default/a") == ["fd00::5"]


def test_allocation_does_not_depend_on_input_order():
    services = [svc(f"s{i}", created=f"2026-01-01T00:00:{i:02d}Z",
                    ann={ANN_SHARING: "k"} if i % 3 == 0 else {}, ports=((80 + i, "TCP"),)) for i in range(20)]
    pools = [pool("a", "10.0.0.0/28"), pool("b", "10.0.1.0/29", created="2026-01-01T00:00:01Z")]
    want, _ = allocate(pools, services)
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(services)
        rng.shuffle(pools)
        got, _ = allocate(pools, services)
        assert got == want


def test_stable_after_applying_its_own_result():
    """Fed back its own addresses as status, the allocator keeps every one (a fixed point)."""
    services = [svc(f"s{i}", created=f"2026-01-01T00:00:{i:02d}Z") for i in range(12)]
    first, _ = allocate([pool("p", "10.0.0.0/28")], services)
    again = [svc(f"s{i}", created=f"2026-01-01T00:00:{i:02d}Z",
                 current=tuple(str(a) for a in first[f"default/s{i}"].addresses)) for i in range(12)]
    second, _ = allocate([pool("p", "10.0.0.0/28")], again)
    assert {k: v.addresses for k, v in first.items()} == {k: v.addresses for k, v in second.items()}


@pytest.mark.parametrize("bad", [
    None, 5, [], {"metadata": {"name": "x"}}, {"metadata": {"name": "x"}, "spec": {"addresses": []}},
    {"metadata": {"name": "x"}, "spec": {"addresses": ["10.0.0.1/24"]}},  # host bits
    {"metadata": {"name": "x"}, "spec": {"addresses": ["10.0.0.9-10.0.0.1"]}},
    {"metadata": {"name": "x"}, "spec": {"addresses": ["10.0.0.1-fd00::1"]}},
    {"metadata": {"name": "x"}, "spec": {"addresses": ["fe80::1%eth0"]}},
    {"metadata": {"name": "x"}, "spec": {"addresses": ["10.0.0.0/30", "10.0.0.2"]}},  # overlap inside
    {"metadata": {"name": "x"}, "spec": {"addresses": ["10.0.0.0/30"], "autoAssign": "yes"}},
    {"metadata": {"name": "x"}, "spec": {"addresses": ["10.0.0.0/30"], "serviceSelector": {"matchLabel": {}}}},
    {"metadata": {"name": "X;rm"}, "spec": {"addresses": ["10.0.0.0/30"]}},
    {"metadata": {"name": "x"}, "spec": {"addresses": ["10.0.0.0/30"] * 65}},
    {"metadata": {"name": "x"}, "spec": {"addresses": [{"cidr": "10.0.0.0/30"}]}},
])
def test_bad_pools_are_refused_with_a_reason(bad):
    with pytest.raises(Invalid):
        pool_from_api(bad)


def test_parse_entry_forms():
    assert str(parse_entry("10.0.0.0/30")) == "10.0.0.0-10.0.0.3"
    assert str(parse_entry(" 10.0.0.5 ")) == "10.0.0.5"
    assert parse_entry("fd00::1-fd00::ff").size == 255


def test_services_that_are_not_ours():
    base = {"metadata": {"name": "a", "namespace": "d"}, "spec": {"type": "LoadBalancer"}}
    assert isinstance(service_from_api(base), LBService)
    other_class = {**base, "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"}}
    assert service_from_api(other_class) is None
    cluster_ip = {**base, "spec": {"type": "ClusterIP"}}
    assert service_from_api(cluster_ip) is None
    # one we served (our condition is on it) that became a ClusterIP: release it
    served = {**cluster_ip, "status": {"conditions": [{"type": CONDITION, "status": "True"}]}}
    assert service_from_api(served) == Release("d", "a", False)
    deleting = {"metadata": {**base["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z",
                             "finalizers": [FINALIZER]}, "spec": base["spec"]}
    assert service_from_api(deleting) == Release("d", "a", True)


@pytest.mark.parametrize("bad", [
    None, {"metadata": {"name": "a"}}, {"metadata": {"name": "a", "namespace": "d"}, "spec": []},
    {"metadata": {"name": "a", "namespace": "d"}, "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv5"]}},
    {"metadata": {"name": "a", "namespace": "d"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 70000}]}},
    {"metadata": {"name": "a", "namespace": "d"}, "spec": {"type": "LoadBalancer", "ports": [{"port": True}]}},
    {"metadata": {"name": "a", "namespace": "d"}, "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "Maybe"}},
])
def test_malformed_services_are_invalid(bad):
    with pytest.raises(Invalid):
        service_from_api(bad)


def test_status_ingress_garbage_is_ignored():
    s = svc("a", current=("not-an-ip", "10.0.0.3"))
    assert [str(a) for a in s.current] == ["10.0.0.3"]


# -- pools and the cluster's own addresses --------------------------------------------------------

NODES = [{"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
          "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.5"},
                                   {"type": "ExternalIP", "address": "192.168.1.6"},
                                   {"type": "Hostname", "address": "n1"}]}},
         {"metadata": {"name": "n2"}, "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.7"}]}}]
SERVICE_CIDRS = [{"metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16", "fd00:10:96::/112"]}}]


def cluster(cluster_cidrs=("10.244.0.0/16",)):
    from loadbalancer.from_api import cluster_addresses

    return cluster_addresses(NODES, SERVICE_CIDRS, cluster_cidrs)


def test_cluster_addresses_read_from_nodes_servicecidrs_and_config():
    c = cluster()
    assert [what for _, what in c.networks] == [
        "pod CIDR (the cluster's) 10.244.0.0/16", "Service CIDR (ServiceCIDR kubernetes) 10.96.0.0/16",
        "pod CIDR of node n1 fd00:10:244:1::/64", "Service CIDR (ServiceCIDR kubernetes) fd00:10:96::/112"]
    assert c.nodes == ((ip("192.168.1.5"), "n1"), (ip("192.168.1.6"), "n1"), (ip("192.168.1.7"), "n2"))
    # node n1's IPv4 pod CIDR is inside the cluster's: the wider one names the clash


@pytest.mark.parametrize("junk", [None, "x", [None, 5, {"status": "x"}, {"metadata": {"name": "../x"},
                                  "spec": {"podCIDRs": ["not-a-cidr", 7]},
                                  "status": {"addresses": [{"type": "InternalIP", "address": "1.2.3.4%eth0"},
                                                           {"type": "InternalIP", "address": ["x"]}, "junk"]}}]])
def test_cluster_addresses_skip_what_does_not_parse(junk):
    from loadbalancer.from_api import cluster_addresses

    c = cluster_addresses(junk, junk, ())
    assert c.networks == () and c.nodes == ()
    assert cluster_addresses([{"metadata": {"name": "../x"}, "status": {"addresses": [
        {"type": "InternalIP", "address": "10.0.0.1"}]}}], [], ()).nodes == ((ip("10.0.0.1"), "?"),)


@pytest.mark.parametrize("entry, what", [
    ("10.96.10.0/24", "Service CIDR (ServiceCIDR kubernetes) 10.96.0.0/16"),
    ("10.95.255.250-10.96.0.3", "Service CIDR (ServiceCIDR kubernetes) 10.96.0.0/16"),
    ("10.244.7.1", "pod CIDR (the cluster's) 10.244.0.0/16"),
    ("fd00:10:244:1::10-fd00:10:244:1::20", "pod CIDR of node n1 fd00:10:244:1::/64"),
])
def test_pool_overlapping_a_cluster_network_is_refused_and_serves_nothing(entry, what):
    d, problems = allocate([pool("bad", entry, created="2026-01-01T00:00:00Z"), pool("lan", "192.168.1.200/30")],
                           [svc("a", families=("IPv4", "IPv6"), policy="PreferDualStack")], cluster())
    [problem] = problems
    assert (problem.pool, problem.reason, problem.fatal) == ("bad", "OverlapsCluster", True)
    assert what in problem.message
    assert addrs(d, "default/a") == ["192.168.1.201"]  # from lan only; other Services untouched


def test_node_addresses_in_a_pool_are_never_assigned_nor_kept_nor_granted():
    from loadbalancer.model import NODE_ADDRESS

    lan = pool("lan", "192.168.1.5-192.168.1.8")
    services = [svc("kept", current=["192.168.1.6"], created="2026-01-01T00:00:00Z"),  # now a node's: replaced
                svc("asks", ann={ANN_IPS: "192.168.1.7"}), svc("auto", created="2026-01-03T00:00:00Z"),
                svc("none", created="2026-01-04T00:00:00Z")]
    d, problems = allocate([lan], services, cluster())
    [problem] = problems
    assert (problem.reason, problem.fatal) == ("ContainsNodeAddresses", False)
    assert problem.message == ("holds node addresses, never assigned: 192.168.1.5 (node n1), 192.168.1.6 (node n1), "
                               "192.168.1.7 (node n2)")
    assert addrs(d, "default/kept") == ["192.168.1.8"]
    assert (d["default/asks"].ok, d["default/asks"].reason) == (False, NODE_ADDRESS)
    assert d["default/asks"].message == "192.168.1.7 is the address of node n2"
    assert d["default/auto"].reason == EXHAUSTED and d["default/none"].reason == EXHAUSTED


def test_without_cluster_knowledge_the_same_pool_hands_out_everything():
    d, problems = allocate([pool("lan", "192.168.1.5-192.168.1.8")], [svc("a")])
    assert problems == [] and addrs(d, "default/a") == ["192.168.1.5"]  # the guard above is what refuses
