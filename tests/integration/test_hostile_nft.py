"""Hostile API objects through the proxy and the daemon's egress renderer, applied with the real
`nft` in a throw-away network namespace: the text is accepted, and holds nothing but our tables.

The object corpus is tests/unit/test_hostile_input.py's: every field of a Service, EndpointSlice
and Node in turn set to the CNI plugin's injection string and other hostile values.
"""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from netkit.nft import nft_binary
from node_daemon import egress
from proxy.sync import NftRunner
from tests.unit.test_hostile_input import CLUSTER, hostile_daemon_nodes, hostile_proxier

pytestmark = [pytest.mark.root]


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    name = f"pwh-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        nft(name, "add table ip victim")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, nft_binary(), *args], check=True,
                          capture_output=True, text=True).stdout


def tables(ns: str) -> set[str]:
    return set(nft(ns, "list", "tables").splitlines())


def test_proxy_applies_hostile_objects_as_typed_rules_only(netns):
    path = f"/run/netns/{netns}"
    p, _ = hostile_proxier({4: NftRunner(path), 6: NftRunner(path)})
    assert p.sync() is True  # nft accepted the diff
    p.request_full_sync()
    assert p.sync() is True  # and the full rewrite
    assert tables(netns) == {"table ip victim", "table ip podwire-proxy", "table ip6 podwire-proxy"}
    listing = nft(netns, "list", "ruleset")
    assert "pwned" not in listing
    assert "10.96.99.99 . tcp . 80 : goto svc-" in nft(netns, "list", "map", "ip", "podwire-proxy", "service-ips")


def test_egress_applies_hostile_nodes_as_typed_elements_only(netns):
    infos = hostile_daemon_nodes()
    egress.NftRunner(f"/run/netns/{netns}").apply(
        egress.render(CLUSTER, [ip for n in infos for ip in n.internal_ips]))
    assert tables(netns) == {"table ip victim", "table ip podwire-egress", "table ip6 podwire-egress"}
    listing = nft(netns, "list", "ruleset")
    assert "pwned" not in listing and "192.168.1.2" in listing and "fd00::2" in listing
