"""Planner features, checked by walking packets through the planned ruleset (flowcheck).

API dicts in (as the API server sends them) -> plan -> packet outcomes. The builders here
are shared with the other proxy test modules.
"""
from __future__ import annotations

import ipaddress

import pytest

from proxy.flowcheck import Evaluator, UnknownRule, dnat_targets, outcomes
from proxy.from_api import service_from_api, slice_from_api
from proxy.model import NodeInfo, ProxyConfig
from proxy.plan import MAX_NAME, object_name, plan

NODE_IP = "172.18.0.2"
NODE = NodeInfo("n1", (ipaddress.ip_address(NODE_IP),), (("topology.kubernetes.io/zone", "zone-a"),))
CONFIG = ProxyConfig(cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd00:244::/48")))
LOCAL = (NODE_IP, "10.244.1.1", "127.0.0.1", "fd00:18::2")
POD = "10.244.2.9"  # a pod on another node
OUTSIDE = "203.0.113.9"  # a client outside the cluster


def port(name="http", proto="TCP", p=80, target="http", node_port=None) -> dict:
    d = {"name": name, "protocol": proto, "port": p, "targetPort": target}
    if node_port:
        d["nodePort"] = node_port
    return d


def svc(name="web", cip="10.96.0.10", ports=None, ns="default", type_="ClusterIP", labels=None,
        status=None, **spec) -> dict:
    cips = cip if isinstance(cip, list) else [cip]
    s = {"type": type_, "clusterIP": cips[0], "clusterIPs": cips,
         "ports": ports if ports is not None else [port()], **spec}
    obj = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"namespace": ns, "name": name, "labels": labels or {}}, "spec": s}
    if status:
        obj["status"] = status
    return obj


def ep(addr, node="n2", ready=True, serving=None, terminating=None, zone=None, hints=None) -> dict:
    cond = {"ready": ready}
    if serving is not None:
        cond["serving"] = serving
    if terminating is not None:
        cond["terminating"] = terminating
    d = {"addresses": [addr], "conditions": cond, "nodeName": node}
    if zone:
        d["zone"] = zone
    if hints is not None:
        d["hints"] = {"forZones": [{"name": z} for z in hints]}
    return d


def slc(service="web", endpoints=(), ports=None, name=None, ns="default", family="IPv4",
        annotations=None) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
            "metadata": {"namespace": ns, "name": name or f"{service}-abc",
                         "labels": {"kubernetes.io/service-name": service},
                         "annotations": annotations or {}},
            "endpoints": list(endpoints),
            "ports": ports if ports is not None else [{"name": "http", "protocol": "TCP", "port": 8080}]}


def build(services, slices, family=4, node=NODE, config=CONFIG):
    st = plan([service_from_api(s) for s in services], [slice_from_api(s) for s in slices],
              node, config, families=(family,))[family]
    return st.table()


def flows(table, src, proto, dst, dport, origin="network"):
    return outcomes(table, src, proto, dst, dport, origin, LOCAL)


TWO = [ep("10.244.1.5", "n1"), ep("10.244.2.5", "n2")]


def test_clusterip_from_a_pod_reaches_every_endpoint_without_masquerade():
    t = build([svc()], [slc(endpoints=TWO)])
    outs = flows(t, POD, "tcp", "10.96.0.10", 80)
    assert dnat_targets(outs) == {("10.244.1.5", 8080), ("10.244.2.5", 8080)}
    assert all(o.verdict == "accept" and not o.masquerade for o in outs)


def test_clusterip_from_outside_the_cluster_cidr_is_masqueraded():
    t = build([svc()], [slc(endpoints=TWO)])
    outs = flows(t, NODE_IP, "tcp", "10.96.0.10", 80, origin="node")
    assert dnat_targets(outs) == {("10.244.1.5", 8080), ("10.244.2.5", 8080)}
    assert all(o.masquerade for o in outs)


def test_masquerade_all_masquerades_pod_traffic_too():
    t = build([svc()], [slc(endpoints=TWO)], config=ProxyConfig(masquerade_all=True))
    assert all(o.masquerade for o in flows(t, POD, "tcp", "10.96.0.10", 80))


def test_nodeport_on_node_address_is_dnated_and_masqueraded_but_not_on_loopback():
    t = build([svc(type_="NodePort", ports=[port(node_port=30080)])], [slc(endpoints=TWO)])
    outs = flows(t, OUTSIDE, "tcp", NODE_IP, 30080)
    assert dnat_targets(outs) == {("10.244.1.5", 8080), ("10.244.2.5", 8080)}
    assert all(o.masquerade for o in outs)
    # also any other local address (fib daddr type local) ...
    assert dnat_targets(flows(t, POD, "tcp", "10.244.1.1", 30080))
    # ... but never 127.0.0.1 (no route_localnet games)
    assert flows(t, NODE_IP, "tcp", "127.0.0.1", 30080, origin="node") == {
        o for o in flows(t, NODE_IP, "tcp", "127.0.0.1", 30080, origin="node") if o.dnat is None}
    assert not dnat_targets(flows(t, NODE_IP, "tcp", "127.0.0.1", 30080, origin="node"))
    # a non-local address with that port is not a NodePort
    assert not dnat_targets(flows(t, OUTSIDE, "tcp", "198.51.100.7", 30080))


def test_clusterip_service_gets_no_nodeport():
    t = build([svc(ports=[port(node_port=30080)])], [slc(endpoints=TWO)])
    assert not dnat_targets(flows(t, OUTSIDE, "tcp", NODE_IP, 30080))


LB_STATUS = {"loadBalancer": {"ingress": [{"ip": "192.0.2.50"}, {"ip": "192.0.2.51", "ipMode": "Proxy"}]}}


def test_loadbalancer_ingress_with_source_ranges_and_proxy_mode_skipped():
    t = build([svc(type_="LoadBalancer", ports=[port(node_port=30080)], status=LB_STATUS,
                   loadBalancerSourceRanges=["198.51.100.0/24"])], [slc(endpoints=TWO)])
    allowed = flows(t, "198.51.100.7", "tcp", "192.0.2.50", 80)
    assert dnat_targets(allowed) == {("10.244.1.5", 8080), ("10.244.2.5", 8080)}
    assert {o.verdict for o in flows(t, OUTSIDE, "tcp", "192.0.2.50", 80)} == {"drop"}  # before DNAT
    assert not dnat_targets(flows(t, OUTSIDE, "tcp", "192.0.2.51", 80))  # ipMode Proxy: not ours
    # source ranges guard the LB IP, not the NodePort
    assert dnat_targets(flows(t, OUTSIDE, "tcp", NODE_IP, 30080))


def test_external_ips():
    t = build([svc(externalIPs=["192.0.2.77"])], [slc(endpoints=TWO)])
    outs = flows(t, OUTSIDE, "tcp", "192.0.2.77", 80)
    assert dnat_targets(outs) == {("10.244.1.5", 8080), ("10.244.2.5", 8080)}
    assert all(o.masquerade for o in outs)
    assert not dnat_targets(flows(t, OUTSIDE, "tcp", "192.0.2.77", 81))


def test_multiport_and_one_port_on_two_protocols_and_sctp():
    ports = [port("dns-tcp", "TCP", 53, 5353), port("dns-udp", "UDP", 53, 5353), port("sig", "SCTP", 3868, 3868)]
    sl_ports = [{"name": "dns-tcp", "protocol": "TCP", "port": 5353},
                {"name": "dns-udp", "protocol": "UDP", "port": 5354},
                {"name": "sig", "protocol": "SCTP", "port": 3869}]
    t = build([svc(ports=ports)], [slc(endpoints=[ep("10.244.1.5")], ports=sl_ports)])
    assert dnat_targets(flows(t, POD, "tcp", "10.96.0.10", 53)) == {("10.244.1.5", 5353)}
    assert dnat_targets(flows(t, POD, "udp", "10.96.0.10", 53)) == {("10.244.1.5", 5354)}
    assert dnat_targets(flows(t, POD, "sctp", "10.96.0.10", 3868)) == {("10.244.1.5", 3869)}


def test_named_target_port_resolved_per_endpoint_from_its_slice():
    a = slc(name="web-a", endpoints=[ep("10.244.1.5")], ports=[{"name": "http", "protocol": "TCP", "port": 8080}])
    b = slc(name="web-b", endpoints=[ep("10.244.2.5")], ports=[{"name": "http", "protocol": "TCP", "port": 9090}])
    t = build([svc()], [a, b])
    assert dnat_targets(flows(t, POD, "tcp", "10.96.0.10", 80)) == {("10.244.1.5", 8080), ("10.244.2.5", 9090)}


def test_client_ip_affinity_sticks_to_the_first_choice():
    t = build([svc(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}})],
              [slc(endpoints=TWO)])
    ev = Evaluator(t, LOCAL)
    first = ev.packet(POD, "tcp", "10.96.0.10", 80)
    assert len(dnat_targets(first)) == 2
    chosen = sorted(first, key=lambda o: o.dnat)[1]
    assert chosen.affinity_updates  # the endpoint chain records the client
    ev.remember(chosen)
    again = ev.packet(POD, "tcp", "10.96.0.10", 80)
    assert dnat_targets(again) == {chosen.dnat}
    other = ev.packet("10.244.3.3", "tcp", "10.96.0.10", 80)  # another client is free to go anywhere
    assert len(dnat_targets(other)) == 2
    assert any(s.timeout == 30 and "dynamic" in s.flags for s in t.sets.values())


def test_external_traffic_policy_local():
    t = build([svc(type_="NodePort", ports=[port(node_port=30080)], externalTrafficPolicy="Local")],
              [slc(endpoints=TWO)])
    ext = flows(t, OUTSIDE, "tcp", NODE_IP, 30080)
    assert dnat_targets(ext) == {("10.244.1.5", 8080)}  # local only
    assert not any(o.masquerade for o in ext)  # client IP preserved
    # from a pod: internal traffic, all endpoints
    assert dnat_targets(flows(t, POD, "tcp", NODE_IP, 30080)) == {("10.244.1.5", 8080), ("10.244.2.5", 8080)}
    # from the node itself: all endpoints, masqueraded
    node = flows(t, NODE_IP, "tcp", NODE_IP, 30080, origin="node")
    assert dnat_targets(node) == {("10.244.1.5", 8080), ("10.244.2.5", 8080)}
    assert all(o.masquerade for o in node)
    # the ClusterIP is unaffected by eTP
    assert len(dnat_targets(flows(t, POD, "tcp", "10.96.0.10", 80))) == 2


def test_external_traffic_policy_local_without_local_endpoints_drops_external_only():
    t = build([svc(type_="NodePort", ports=[port(node_port=30080)], externalTrafficPolicy="Local")],
              [slc(endpoints=[ep("10.244.2.5", "n2")])])
    assert {o.verdict for o in flows(t, OUTSIDE, "tcp", NODE_IP, 30080)} == {"drop"}
    assert dnat_targets(flows(t, POD, "tcp", NODE_IP, 30080)) == {("10.244.2.5", 8080)}


def test_internal_traffic_policy_local():
    t = build([svc(internalTrafficPolicy="Local")], [slc(endpoints=TWO)])
    assert dnat_targets(flows(t, POD, "tcp", "10.96.0.10", 80)) == {("10.244.1.5", 8080)}
    t = build([svc(internalTrafficPolicy="Local")], [slc(endpoints=[ep("10.244.2.5", "n2")])])
    assert {o.verdict for o in flows(t, POD, "tcp", "10.96.0.10", 80)} == {"drop"}


def test_endpoint_choice_ready_then_serving_terminating():
    eps = [ep("10.244.1.5", ready=True), ep("10.244.2.5", ready=False, serving=True, terminating=True),
           ep("10.244.3.5", ready=False, serving=False)]
    t = build([svc()], [slc(endpoints=eps)])
    assert dnat_targets(flows(t, POD, "tcp", "10.96.0.10", 80)) == {("10.244.1.5", 8080)}
    t = build([svc()], [slc(endpoints=eps[1:])])
    assert dnat_targets(flows(t, POD, "tcp", "10.96.0.10", 80)) == {("10.244.2.5", 8080)}
    t = build([svc()], [slc(endpoints=eps[2:])])
    assert {o.verdict for o in flows(t, POD, "tcp", "10.96.0.10", 80)} == {"reject"}


def test_topology_hints_prefer_this_zone_only_when_usable():
    eps = [ep("10.244.1.5", hints=["zone-a"]), ep("10.244.2.5", hints=["zone-b"])]
    t = build([svc(trafficDistribution="PreferClose")], [slc(endpoints=eps)])
    assert dnat_targets(flows(t, POD, "tcp", "10.96.0.10", 80)) == {("10.244.1.5", 8080)}
    # one endpoint without hints: hints are not used at all
    t = build([svc()], [slc(endpoints=[eps[0], ep("10.244.2.5")])])
    assert len(dnat_targets(flows(t, POD, "tcp", "10.96.0.10", 80))) == 2
    # no endpoint hinted for our zone: all of them
    t = build([svc()], [slc(endpoints=[ep("10.244.2.5", hints=["zone-b"]), ep("10.244.3.5", hints=["zone-c"])])])
    assert len(dnat_targets(flows(t, POD, "tcp", "10.96.0.10", 80))) == 2


def test_no_endpoints_rejects_at_once():
    t = build([svc(type_="NodePort", ports=[port(node_port=30080), port("dns", "UDP", 53, 53, 30053)],
                   externalIPs=["192.0.2.77"])], [])
    tcp = flows(t, POD, "tcp", "10.96.0.10", 80)
    assert tcp == {o for o in tcp if o.verdict == "reject" and o.reject_with == "tcp reset"}
    udp = flows(t, POD, "udp", "10.96.0.10", 53)
    assert {(o.verdict, o.reject_with) for o in udp} == {("reject", "icmp")}
    assert {o.verdict for o in flows(t, OUTSIDE, "tcp", NODE_IP, 30080)} == {"reject"}
    assert {o.verdict for o in flows(t, OUTSIDE, "tcp", "192.0.2.77", 80)} == {"reject"}
    assert {o.verdict for o in flows(t, NODE_IP, "tcp", "10.96.0.10", 80, origin="node")} == {"reject"}


def test_hairpin_is_masqueraded():
    t = build([svc()], [slc(endpoints=TWO)])
    outs = flows(t, "10.244.1.5", "tcp", "10.96.0.10", 80)
    assert {(o.dnat, o.masquerade) for o in outs} == {(("10.244.1.5", 8080), True), (("10.244.2.5", 8080), False)}


def test_unknown_port_on_live_clusterip_is_rejected():
    t = build([svc()], [slc(endpoints=TWO)])
    assert {o.verdict for o in flows(t, POD, "tcp", "10.96.0.10", 81)} == {"reject"}
    assert {o.verdict for o in flows(t, POD, "tcp", "10.96.0.99", 81)} == {"accept"}  # not a Service


def test_dual_stack_gets_an_ip6_table():
    s = svc(cip=["10.96.0.10", "fd00:96::10"], ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="PreferDualStack")
    v6 = slc(name="web-6", family="IPv6", endpoints=[ep("fd00:244::5", "n1")])
    t6 = build([s], [slc(endpoints=TWO), v6], family=6)
    assert t6.family == "ip6"
    outs = flows(t6, "fd00:244:2::9", "tcp", "fd00:96::10", 80)
    assert dnat_targets(outs) == {("fd00:244::5", 8080)}
    t4 = build([s], [slc(endpoints=TWO), v6], family=4)
    assert len(dnat_targets(flows(t4, POD, "tcp", "10.96.0.10", 80))) == 2


def test_many_endpoints_use_a_numgen_vmap():
    eps = [ep(f"10.244.5.{i}") for i in range(1, 41)]
    t = build([svc()], [slc(endpoints=eps)])
    assert any("numgen random mod 40 vmap" in r for c in t.chains.values() for r in c.rules)
    assert len(dnat_targets(flows(t, POD, "tcp", "10.96.0.10", 80))) == 40


def test_cascade_is_uniform():
    # endpoint i is taken with probability 1/(n-i) of what reaches it -> 1/n each
    t = build([svc()], [slc(endpoints=[ep(f"10.244.5.{i}") for i in range(1, 6)])])
    chain = next(c for n, c in t.chains.items() if n.startswith("svc-"))
    mods = [int(r.split("mod ")[1].split()[0]) for r in chain.rules if r.startswith("numgen")]
    assert mods == [5, 4, 3, 2]
    p, reach = [], 1.0
    for m in mods:
        p.append(reach / m)
        reach -= reach / m
    p.append(reach)
    assert all(abs(x - 0.2) < 1e-9 for x in p)


def test_names_are_stable_bounded_and_valid():
    long = "x" * 63
    a = object_name("svc", f"{long}/{long}/tcp/http")
    assert a == object_name("svc", f"{long}/{long}/tcp/http") and len(a) <= MAX_NAME
    assert a != object_name("svc", f"{long}/{long}/tcp/https")
    assert all(c.isalnum() or c in "/-_." for c in object_name("ep", "ns/n/tcp/p__fd00::1/80"))
    t = build([svc(name=long, ns=long)], [slc(service=long, ns=long, endpoints=TWO)])
    assert all(len(n) <= MAX_NAME for n in (*t.chains, *t.sets))


def test_evaluator_refuses_unknown_rules():
    t = build([svc()], [slc(endpoints=TWO)])
    t.chains["services"] = type(t.chains["services"])("services", ("tcp flags syn counter",))
    with pytest.raises(UnknownRule):
        flows(t, POD, "tcp", "10.96.0.10", 80)


def test_loadbalancer_address_on_a_port_no_service_serves_is_dropped():
    """Not routed back out of the link it came in on; an ipMode Proxy address is not ours."""
    t = build([svc(type_="LoadBalancer", ports=[port(node_port=30080)], status=LB_STATUS)], [slc(endpoints=TWO)])
    assert dnat_targets(flows(t, OUTSIDE, "tcp", "192.0.2.50", 80))
    assert {o.verdict for o in flows(t, OUTSIDE, "tcp", "192.0.2.50", 81)} == {"drop"}
    assert {o.verdict for o in flows(t, OUTSIDE, "udp", "192.0.2.50", 80)} == {"drop"}
    assert "drop" not in {o.verdict for o in flows(t, OUTSIDE, "tcp", "192.0.2.51", 81)}
