"""hostPort's base ruleset is applied by the first hostPort ADD of a boot, and again when it is gone."""

from __future__ import annotations

import os

import pytest

from tests.integration.cni_harness import fetch_from_pod_server, in_ns, netconf, underlay

pytestmark = [pytest.mark.root, pytest.mark.frozen]


def markers(tmp_path) -> list[str]:
    return os.listdir(tmp_path / "state" / "hostport-base")


def test_base_ruleset_once_per_boot_and_back_when_the_table_is_gone(plugin, pods, tmp_path):
    node = plugin.node
    outside = pods()
    node_ip = underlay(node, outside, "pwc-ul1", "192.168.78")
    first = netconf(str(tmp_path), runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80}]})
    assert plugin.add(first, "a", pods()).rc == 0
    assert len(markers(tmp_path)) == 1  # the next hostPort ADD sends only its own part
    rules = in_ns(node, "nft", "list", "chain", "inet", "podwire-cni", "prerouting").stdout
    assert "vmap @hostports" in rules

    in_ns(node, "nft", "delete", "table", "inet", "podwire-cni")  # an admin's flush: the marker is stale now
    second = netconf(str(tmp_path), runtimeConfig={"portMappings": [{"hostPort": 8081, "containerPort": 80}]})
    pod = pods()
    r = plugin.add(second, "b", pod)
    assert r.rc == 0, r
    assert r.json["cniVersion"] == "1.1.0"  # nft printed nothing into the result
    assert "vmap @hostports" in in_ns(node, "nft", "list", "chain", "inet", "podwire-cni", "prerouting").stdout
    assert "hello-b" in fetch_from_pod_server(pod, outside, node_ip, 8081, "hello-b")
    assert len(markers(tmp_path)) == 1

    assert plugin.delete(second, "b", pod).rc == 0
    assert "8081" not in in_ns(node, "nft", "list", "table", "inet", "podwire-cni").stdout
