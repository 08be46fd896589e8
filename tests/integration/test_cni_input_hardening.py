"""Hostile CNI input against the real plugin and the real nft (issue 10 items 1, 2, 5): refused before
anything changes, nothing of another pod or of the node touched."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.integration.cni_harness import allocated, in_ns, netconf

pytestmark = [pytest.mark.root, pytest.mark.frozen]

INJECTION = ("::1 . tcp . 1 : accept }\nadd table ip pwned\ndelete table ip victim\n"
             "create element inet podwire-cni hostports6 { ::2")


def tables(node: str) -> str:
    return in_ns(node, "nft", "list", "tables").stdout


def links(ns: str) -> list[str]:
    return sorted(link["ifname"] for link in json.loads(in_ns(ns, "ip", "-j", "link").stdout))


def test_nft_injection_through_host_ip_is_refused_before_any_change(plugin, pods, tmp_path):
    node = plugin.node
    in_ns(node, "nft", "add", "table", "ip", "victim")
    # a live pod with a hostPort: the attack must not touch its rules
    web = pods()
    conf = netconf(str(tmp_path), runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80}]})
    assert plugin.add(conf, "web", web).rc == 0
    before_links, before_rules = links(node), in_ns(node, "nft", "list", "table", "inet", "podwire-cni").stdout
    pod = pods()
    for host_ip in (INJECTION, "localhost", "garbage", 5, "fe80::1%x }\nadd table ip pwned"):
        conf = netconf(str(tmp_path), runtimeConfig={"portMappings": [
            {"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": host_ip}]})
        started = time.monotonic()
        r = plugin.add(conf, "attacker", pod)
        took = time.monotonic() - started
        assert r.rc == 1 and r.json["code"] == 7 and "hostIP" in r.json["msg"], r
        assert took < 5, f"{host_ip!r} took {took:.1f} s (nft resolving a name?)"
        assert "pwned" not in tables(node) and "victim" in tables(node)
        assert in_ns(node, "nft", "list", "table", "inet", "podwire-cni").stdout == before_rules
        assert links(node) == before_links and links(pod) == ["lo"]
        assert allocated(str(tmp_path)) == ["10.244.7.2"]  # only the live pod's address
        assert plugin.delete(conf, "attacker", pod).rc == 0
        assert allocated(str(tmp_path)) == ["10.244.7.2"]


def test_state_file_of_an_injected_version_does_not_inject_on_del(plugin, pods, tmp_path):
    """An attachment programmed by a version that pasted hostIP into nft text: DEL removes what it
    can prove is ours and renders nothing else."""
    node = plugin.node
    in_ns(node, "nft", "add", "table", "ip", "victim")
    conf = netconf(str(tmp_path), ipMasq=True,
                   runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80}]})
    pod = pods()
    add = plugin.add(conf, "c1", pod)
    assert add.rc == 0
    host_if = add.json["interfaces"][1]["name"]
    state_file = tmp_path / "state" / "hostport" / f"{host_if}.json"
    state = json.loads(state_file.read_text())
    # shaped so that the old renderer's delete transaction is valid nft: it would have run
    state["masq"] = ["10.244.7.2 }\nadd table ip pwned\ndelete table ip victim\n"
                     "add element inet podwire-cni masq4 { 10.244.7.2"]
    state["elements"].append(INJECTION)
    state_file.write_text(json.dumps(state))
    assert plugin.delete(conf, "c1", pod).rc == 0
    listed = tables(node)
    assert "victim" in listed and "pwned" not in listed
    ruleset = in_ns(node, "nft", "list", "table", "inet", "podwire-cni").stdout
    assert "8080" not in ruleset and "hp-" not in ruleset and not state_file.exists()


@pytest.mark.parametrize("cid", ["abc\r\n", "   ", "../../etc/x"])
def test_bad_container_id_leaves_nothing(plugin, pods, tmp_path, cid):
    pod = pods()
    conf = netconf(str(tmp_path))
    r = plugin.add(conf, cid, pod)
    assert r.rc == 1 and r.json["code"] == 4, r
    assert allocated(str(tmp_path)) == [] and links(pod) == ["lo"]
    store = tmp_path / "ipam" / "podnet"
    assert not os.path.exists(store) or os.listdir(store) in ([], ["lock"])


def test_gc_with_an_attachment_missing_ifname_keeps_the_live_pod(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path))
    pod = pods()
    assert plugin.add(conf, "live", pod).rc == 0
    r = plugin.call("GC", {**conf, "cni.dev/valid-attachments": [{"containerID": "live"}]}, ifname="")
    assert r.rc == 1 and r.json["code"] == 7, r
    assert allocated(str(tmp_path)) == ["10.244.7.2"]
    assert in_ns(pod, "ping", "-c1", "-W2", "10.244.7.1").returncode == 0
    # the next pod gets another address
    assert plugin.add(conf, "next", pods()).json["ips"][0]["address"] == "10.244.7.3/24"
