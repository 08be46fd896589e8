"""e2e.conformance's dns and topology suites choose the tests they name, list what they leave out
with a reason; nodes get zones round robin."""

from __future__ import annotations

import pytest

from e2e import conformance as c
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
