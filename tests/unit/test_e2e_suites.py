"""e2e.conformance's dns, topology and loadbalancer suites choose the tests they name, list what they
leave out with a reason; nodes get zones round robin; the loadbalancer suite's pool stays clear of the
harness's hosts and its kubeconfig names the API server's underlay address."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from e2e import conformance as c
from e2e import topology
from e2e.node_runtime import topology_labels

NAMES = [
    "[sig-network] DNS configMap nameserver Change stubDomain should be able to change stubDomain configuration [Slow] [Serial]",  # noqa: E501
    "[sig-network] DNS should support configurable pod resolv.conf",  # noqa: E501
    "[sig-network] DNS should support configurable pod DNS nameservers [Conformance]",  # noqa: E501
    "[sig-network] DNS should provide DNS for the cluster [Provider:GCE]",  # noqa: E501
    "[sig-network] DNS should work with a service name that starts with a digit [FeatureGate:RelaxedServiceNameValidation] [Alpha] [Feature:OffByDefault]",  # noqa: E501
    "[sig-network] Networking should provider Internet connection for containers using DNS [Feature:Networking-DNS]",  # noqa: E501
    "[sig-network] [Feature:PerformanceDNS] [Serial] Should answer DNS query for maximum number of services per cluster",  # noqa: E501
    "[sig-network] Topology Hints should distribute endpoints evenly",  # noqa: E501
    "[sig-network] Traffic Distribution should route traffic to an endpoint in the same zone when using PreferClose",  # noqa: E501
    "[sig-network] Services should serve a basic endpoint from pods [Conformance]",  # noqa: E501
    "[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: udp [NodeConformance] [Conformance]",  # noqa: E501
    # from e2e.test v1.34.10 --list-tests (11-16: the loadbalancer suite's)
    "[sig-network] LoadBalancers [Feature:LoadBalancer] should be able to change the type and ports of a TCP service [Slow]",  # noqa: E501
    "[sig-network] LoadBalancers [Feature:LoadBalancer] should be able to preserve UDP traffic when server pod cycles for a LoadBalancer service on different nodes",  # noqa: E501
    "[sig-network] LoadBalancers ExternalTrafficPolicy: Local [Feature:LoadBalancer] [Slow] should only target nodes with endpoints",  # noqa: E501
    "[sig-network] LoadBalancers ExternalTrafficPolicy: Local [Feature:LoadBalancer] [Slow] should work from pods",  # noqa: E501
    "[sig-network] LoadBalancers [Feature:LoadBalancer] should have session affinity work for LoadBalancer service with Local traffic policy [Slow] [LinuxOnly]",  # noqa: E501
    "[sig-network] LoadBalancers ExternalTrafficPolicy: Local [Feature:LoadBalancer] [Slow] should work for type=LoadBalancer",  # noqa: E501
    "[sig-network] Services should serve endpoints on same port and different protocol for internal traffic on Type LoadBalancer ",  # noqa: E501
]


def suite(name):
    focus, skip = c.SUITES[name]
    return c.select(NAMES, focus, skip), c.not_run_here(NAMES, focus, skip, c.NOT_RUN_HERE.get(name, ()))


def test_dns_suite_runs_the_configmap_and_resolv_conf_tests():
    selected, not_run = suite("dns")
    assert selected == NAMES[:2]
    assert set(not_run) == set(NAMES[2:7])  # each with its reason
    assert "internet" in not_run[NAMES[5]] and "gce" in not_run[NAMES[3]]


def test_topology_suite_runs_hints_and_traffic_distribution_on_six_nodes():
    selected, not_run = suite("topology")
    assert selected == NAMES[7:9] and not not_run
    assert c.SUITE_NODES["topology"] == 6


def test_zones_round_robin_one_region():
    zones = [topology_labels(f"node{i}")["topology.kubernetes.io/zone"] for i in range(1, 7)]
    assert zones == ["zone-a", "zone-b", "zone-c"] * 2
    assert {topology_labels(f"node{i}")["topology.kubernetes.io/region"] for i in range(1, 7)} == {"region-1"}


@pytest.mark.parametrize("bad", ["cp", "node0", "node", "node1,x=y", "node1\n"])
def test_zone_of_a_non_node_is_refused(bad):
    with pytest.raises(ValueError):
        topology_labels(bad)


def test_loadbalancer_suite_runs_the_feature_tests_and_names_the_source_ip_one():
    selected, not_run = suite("loadbalancer")
    assert selected == NAMES[11:16]
    assert list(not_run) == [NAMES[16]]  # the Services test of "Type LoadBalancer" is no [Feature:LoadBalancer]
    assert "/16" in not_run[NAMES[16]] and "172.30.0.100" in not_run[NAMES[16]]
    assert "loadbalancer" in c.FROM_OUTSIDE and c.SUITE_IMAGES["loadbalancer"] == (c.images.AGNHOST,)


@pytest.mark.parametrize("shape,nodes", [("l2", 3), ("l2", 80), ("routed", 3), ("routed", 80)])
def test_lb_pool_is_on_the_outside_hosts_subnet_clear_of_every_host(shape, nodes):
    plan = topology.plan("x", shape, nodes)
    first, last = c.lb_pool_range(plan)
    outside = next(h for h in plan.hosts if h.role == "outside")
    assert first in outside.address.network and last in outside.address.network
    assert int(last) - int(first) == 50
    assert not [h for h in plan.hosts if first <= h.address.ip <= last]


def test_lb_pool_that_would_hold_a_host_is_refused():
    plan = topology.plan("x", "l2", 3)
    squatter = dataclasses.replace(plan.hosts[1], address=ipaddress.IPv4Interface("172.30.0.220/24"))
    with pytest.raises(ValueError, match="172.30.0.220"):
        c.lb_pool_range(dataclasses.replace(plan, hosts=(plan.hosts[0], squatter, *plan.hosts[2:])))


def test_lb_pool_manifest_is_one_range():
    doc = c.lb_pool_manifest(ipaddress.ip_address("172.30.0.200"), ipaddress.ip_address("172.30.0.250"))
    assert doc["kind"] == "LoadBalancerPool" and doc["apiVersion"] == "podwire.io/v1alpha1"
    assert doc["spec"] == {"addresses": ["172.30.0.200-172.30.0.250"]}


def test_outside_kubeconfig_names_the_underlay_server_and_keeps_the_credentials():
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "pwe",
           "clusters": [{"name": "pwe", "cluster": {"server": "https://127.0.0.1:41234",
                                                    "certificate-authority-data": "Q0E="}}],
           "users": [{"name": "admin", "user": {"client-key-data": "S0VZ"}}]}
    out = c.kubeconfig_with_server(doc, "https://172.30.0.2:6443")
    assert out["clusters"] == [{"name": "pwe", "cluster": {"server": "https://172.30.0.2:6443",
                                                           "certificate-authority-data": "Q0E="}}]
    assert out["users"] == doc["users"] and out["current-context"] == "pwe"
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:41234"  # the input is left alone
    with pytest.raises(ValueError):
        c.kubeconfig_with_server({"clusters": []}, "https://172.30.0.2:6443")


def test_loadbalancer_suite_is_refused_on_kind():
    assert "outside host" in c.kind_refusal("loadbalancer", None)
