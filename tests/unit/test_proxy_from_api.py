import ipaddress
import subprocess
import sys

import pytest

from proxy.from_api import (
    Invalid,
    NoRules,
    NotOurs,
    convert_all,
    node_from_api,
    parse_ip,
    service_from_api,
    slice_from_api,
)
from tests.unit.test_proxy_plan import ep, port, slc, svc


def test_service_fields_from_camel_case_json():
    s = service_from_api(svc(
        type_="LoadBalancer", cip=["10.96.0.10", "fd00:96::10"], ipFamilies=["IPv4", "IPv6"],
        ports=[port(node_port=30080), port("dns", "UDP", 53, 5353)],
        externalIPs=["192.0.2.7"], loadBalancerSourceRanges=["198.51.100.0/24 "],
        sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
        externalTrafficPolicy="Local", internalTrafficPolicy="Cluster", healthCheckNodePort=31000,
        trafficDistribution="PreferClose",
        status={"loadBalancer": {"ingress": [{"ip": "192.0.2.50", "ipMode": "Proxy"}, {"hostname": "lb.example"}]}}))
    assert s.cluster_ips == (ipaddress.ip_address("10.96.0.10"), ipaddress.ip_address("fd00:96::10"))
    assert s.ip_families == (4, 6)
    assert [(p.name, p.protocol, p.port, p.node_port, p.target_port) for p in s.ports] == [
        ("http", "TCP", 80, 30080, "http"), ("dns", "UDP", 53, 0, 5353)]
    assert s.lb_ingress[0].ip_mode == "Proxy" and len(s.lb_ingress) == 1
    assert s.lb_source_ranges == (ipaddress.ip_network("198.51.100.0/24"),)
    assert (s.session_affinity, s.affinity_timeout) == ("ClientIP", 60)
    assert s.external_local and not s.internal_local
    assert (s.health_check_node_port, s.traffic_distribution) == (31000, "PreferClose")


def test_legacy_leading_zero_ipv4_is_read_as_decimal():
    """The API accepts "010.1.2.3" with a warning and kube-proxy reads it as 10.1.2.3; refusing
    it would drop the whole Service or slice."""
    s = service_from_api(svc(type_="LoadBalancer", externalIPs=["203.000.113.05"],
                             loadBalancerSourceRanges=["010.0.0.0/8"],
                             status={"loadBalancer": {"ingress": [{"ip": "010.1.2.3"}]}}))
    assert s.external_ips == (ipaddress.ip_address("203.0.113.5"),)
    assert s.lb_ingress[0].ip == ipaddress.ip_address("10.1.2.3")
    assert s.lb_source_ranges == (ipaddress.ip_network("10.0.0.0/8"),)
    sl = slice_from_api(slc(endpoints=[ep("10.244.001.005")]))
    assert sl.endpoints[0].addresses == (ipaddress.ip_address("10.244.1.5"),)
    assert parse_ip("::ffff:010.1.2.3") == ipaddress.ip_address("::ffff:10.1.2.3")
    for bad in ("10.244.1.0005", "10.244.1.256", "1.2.3", "010", "१.2.3.4"):
        with pytest.raises(ValueError):
            parse_ip(bad)


def test_defaults():
    raw = svc()
    del raw["spec"]["type"]
    raw["spec"]["ports"] = [{"port": 80}]
    s = service_from_api(raw)
    assert s.type == "ClusterIP" and s.ports[0].protocol == "TCP" and s.ports[0].name == ""
    assert s.affinity_timeout == 10800 and s.ip_families == (4,)


@pytest.mark.parametrize("obj, exc, words", [
    (svc(labels={"service.kubernetes.io/service-proxy-name": "other"}), NotOurs, "service-proxy-name"),
    (svc(cip="None"), NoRules, "headless"),
    (svc(type_="ExternalName", externalName="example.com"), NoRules, "ExternalName"),
    (svc(cip="10.96.0.300"), Invalid, "bad IP"),
    (svc(ports=[{"port": 70000}]), Invalid, "out of range"),
    (svc(ports=[{"port": 80, "protocol": "ICMP"}]), Invalid, "protocol"),
    (svc(ports=[port(), port()]), Invalid, "duplicate"),
    (svc(sessionAffinity="Cookie"), Invalid, "sessionAffinity"),
    (svc(externalTrafficPolicy="Nearby"), Invalid, "externalTrafficPolicy"),
    ({"metadata": {}}, Invalid, "metadata.name"),
    ("not a dict", Invalid, "not an object"),
    ({"metadata": {"name": "x", "namespace": "d"}}, Invalid, "spec"),
])
def test_odd_services_are_skipped_with_a_reason(obj, exc, words):
    with pytest.raises(exc) as e:
        service_from_api(obj)
    assert words in str(e.value)


def test_one_bad_object_does_not_stop_the_others():
    good, skipped = convert_all([svc("a"), svc("b", cip="junk"), svc("c", cip="None"), svc("d", cip="10.96.0.11")],
                                service_from_api)
    assert [s.name for s in good] == ["a", "d"]
    assert [e.key for e in skipped] == ["default/b", "default/c"]


def test_slice_conditions_hints_and_ports():
    sl = slice_from_api(slc(endpoints=[
        {"addresses": ["10.244.1.5"], "conditions": {}, "nodeName": "n1", "zone": "z",
         "hints": {"forZones": [{"name": "z"}], "forNodes": [{"name": "n1"}]}},
        ep("10.244.2.5", ready=False, serving=True, terminating=True),
    ], ports=[{"name": "http", "protocol": "TCP", "port": 8080}, {"name": "all", "port": None}],
        annotations={"endpoints.kubernetes.io/last-change-trigger-time": "2024-01-02T03:04:05Z"}))
    a, b = sl.endpoints
    assert (a.ready, a.serving, a.terminating) == (True, True, False)  # nil conditions: ready
    assert a.hint_zones == ("z",) and a.hint_nodes == ("n1",) and a.zone == "z"
    assert (b.ready, b.serving, b.terminating) == (False, True, True)
    assert [p.port for p in sl.ports] == [8080]
    assert sl.service_key == ("default", "web") and sl.address_family == 4
    assert sl.trigger_time == 1704164645.0


@pytest.mark.parametrize("mutate, exc", [
    (lambda o: o["metadata"]["labels"].clear(), NotOurs),
    (lambda o: o["metadata"]["labels"].update({"service.kubernetes.io/headless": ""}), NotOurs),
    (lambda o: o.update(addressType="FQDN"), NoRules),
    (lambda o: o.update(addressType="IPv7"), Invalid),
    (lambda o: o.update(endpoints=[ep("fd00::1")]), Invalid),
    (lambda o: o.update(ports=[{"name": "http", "port": "eighty"}]), Invalid),
])
def test_odd_slices(mutate, exc):
    obj = slc(endpoints=[ep("10.244.1.5")])
    mutate(obj)
    with pytest.raises(exc):
        slice_from_api(obj)


def test_node_addresses_and_zone():
    n = node_from_api({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}},
                       "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"},
                                                {"type": "Hostname", "address": "n1"},
                                                {"type": "InternalIP", "address": "fd00::2"}]}})
    assert n.addresses == (ipaddress.ip_address("172.18.0.2"), ipaddress.ip_address("fd00::2"))
    assert n.zone == "z1"


def test_proxy_does_not_import_the_kubernetes_client():
    code = ("import sys, proxy.proxier, proxy.flowcheck, proxy.conntrack; "
            "print([m for m in sys.modules if m == 'kubernetes' or m.startswith('kubernetes.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
