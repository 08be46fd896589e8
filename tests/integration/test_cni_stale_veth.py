"""ADD looks for a stale host veth only when creating its own fails with EEXIST (no query per pod)."""

from __future__ import annotations

import pytest

from cni_plugin.plan import host_veth_name
from tests.integration.cni_harness import allocated, in_ns, netconf

pytestmark = [pytest.mark.root, pytest.mark.frozen]


def test_add_replaces_a_stale_host_veth_of_the_same_name(plugin, pods, tmp_path):
    conf, pod = netconf(str(tmp_path)), pods()
    stale = host_veth_name("c1", "eth0")
    # what a crashed ADD leaves when the pod's namespace went away: the host end, its peer elsewhere
    in_ns(plugin.node, "ip", "link", "add", stale, "type", "veth", "peer", "name", "pwstalepeer")
    r = plugin.add(conf, "c1", pod)
    assert r.rc == 0, r
    assert r.json["interfaces"][1]["name"] == stale
    detail = in_ns(plugin.node, "ip", "-d", "link", "show", stale).stdout
    assert "master podwire0" in detail and "hairpin on" in detail
    assert in_ns(plugin.node, "ip", "link", "show", "pwstalepeer", check=False).returncode != 0  # went with it
    assert in_ns(pod, "ping", "-c1", "-W2", "10.244.7.1").returncode == 0
    assert plugin.delete(conf, "c1", pod).rc == 0 and allocated(str(tmp_path)) == []


def test_add_sets_the_pods_lo_up_without_looking_it_up(plugin, pods, tmp_path):
    conf, pod = netconf(str(tmp_path)), pods()
    in_ns(pod, "ip", "link", "set", "lo", "down")
    r = plugin.add(conf, "c1", pod)
    assert r.rc == 0, r
    assert "UP" in in_ns(pod, "ip", "link", "show", "lo").stdout  # lo set up by ifindex 1, not looked up
    assert "10.244.7.2/24" in in_ns(pod, "ip", "-o", "addr", "show", "eth0").stdout
    assert plugin.delete(conf, "c1", pod).rc == 0
