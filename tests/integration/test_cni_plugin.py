"""The frozen podwire executable against a real kernel: every verb, version and error code."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.cni_harness import allocated, fetch_from_pod_server, in_ns, netconf, underlay

pytestmark = [pytest.mark.root, pytest.mark.frozen]

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_every_version(plugin, pods, tmp_path, version):
    conf = netconf(str(tmp_path), version)
    pod = pods()
    r = plugin.add(conf, "c1", pod)
    assert r.rc == 0, r
    res = r.json
    assert res["cniVersion"] == version
    assert [i["name"] for i in res["interfaces"]] == ["podwire0", res["interfaces"][1]["name"], "eth0"]
    assert res["interfaces"][2]["sandbox"] == f"/run/netns/{pod}"
    ip = res["ips"][0]
    assert ip["address"] == "10.244.7.2/24" and ip["gateway"] == "10.244.7.1" and ip["interface"] == 2
    assert ("version" in ip) == (version < "1.0.0")
    assert ("mtu" in res["interfaces"][2]) == (version == "1.1.0")
    # the live pod matches the result
    out = in_ns(pod, "ip", "-j", "addr", "show", "eth0").stdout
    assert "10.244.7.2" in out
    assert "default via 10.244.7.1" in in_ns(pod, "ip", "route").stdout
    assert "UP" in in_ns(pod, "ip", "link", "show", "lo").stdout
    if version >= "0.4.0":
        ok = plugin.call("CHECK", {**conf, "prevResult": res}, "c1", pod)
        assert ok.rc == 0, ok
    d = plugin.delete(conf, "c1", pod)
    assert d.rc == 0, d
    assert allocated(str(tmp_path)) == []
    assert in_ns(pod, "ip", "link", "show", "eth0", check=False).returncode != 0


def test_version_verb(plugin):
    r = plugin.call("VERSION", {"cniVersion": "0.4.0"})
    assert r.rc == 0 and r.json == {"cniVersion": "0.4.0", "supportedVersions": VERSIONS}


def test_second_add_of_same_interface_fails_and_keeps_the_first(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path))
    pod = pods()
    assert plugin.add(conf, "c1", pod).rc == 0
    again = plugin.add(conf, "c1", pod)
    assert again.rc == 1 and again.json["code"] == 3 and "already exists" in again.json["msg"]
    assert allocated(str(tmp_path)) == ["10.244.7.2"]  # the failed ADD released nothing of the live pod
    assert in_ns(pod, "ping", "-c1", "-W2", "10.244.7.1").returncode == 0


def test_del_is_idempotent_and_works_without_netns(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path))
    pod = pods()
    assert plugin.add(conf, "c1", pod).rc == 0
    assert plugin.delete(conf, "c1", pod).rc == 0
    assert plugin.delete(conf, "c1", pod).rc == 0
    assert plugin.delete(conf, "c1", None).rc == 0  # no CNI_NETNS at all
    assert plugin.delete(conf, "never-added", pod).rc == 0


def test_del_after_netns_is_gone_frees_the_ip(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path))
    pod = pods()
    assert plugin.add(conf, "c1", pod).rc == 0
    subprocess.run(["ip", "netns", "del", pod], check=True)
    r = plugin.delete(conf, "c1", pod)  # CNI_NETNS points at a path that no longer exists
    assert r.rc == 0, r
    assert allocated(str(tmp_path)) == []
    links = in_ns(plugin.node, "ip", "-o", "link").stdout
    assert "pw" not in "".join(line.split(":")[1] for line in links.splitlines() if "veth" in line)


def test_check_catches_drift(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path))
    pod = pods()
    res = plugin.add(conf, "c1", pod).json
    check_conf = {**conf, "prevResult": res}
    assert plugin.call("CHECK", check_conf, "c1", pod).rc == 0
    in_ns(pod, "ip", "route", "del", "default")
    r = plugin.call("CHECK", check_conf, "c1", pod)
    assert r.rc == 1 and r.json["code"] == 100 and "route to 0.0.0.0/0" in r.json["msg"]
    in_ns(pod, "ip", "route", "add", "default", "via", "10.244.7.1")
    assert plugin.call("CHECK", check_conf, "c1", pod).rc == 0
    in_ns(pod, "ip", "addr", "del", "10.244.7.2/24", "dev", "eth0")
    r = plugin.call("CHECK", check_conf, "c1", pod)
    assert r.rc == 1 and r.json["code"] == 100 and "10.244.7.2/24" in r.json["msg"]
    r = plugin.call("CHECK", conf, "c1", pod)  # no prevResult
    assert r.rc == 1 and r.json["code"] == 7


def test_status(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path), subnet="10.244.9.0/30")  # one usable address: .2
    assert plugin.call("STATUS", conf).rc == 0
    assert plugin.add(conf, "c1", pods()).rc == 0
    r = plugin.call("STATUS", conf)
    assert r.rc == 1 and r.json["code"] == 50 and "10.244.9." in r.json["msg"], r
    full = plugin.add(conf, "c2", pods())
    assert full.rc == 1 and full.json["code"] == 110 and "10.244.9." in full.json["msg"]
    old = plugin.call("STATUS", netconf(str(tmp_path), "1.0.0"))
    assert old.rc == 1 and old.json["code"] == 1


def test_status_unwritable_store(plugin, tmp_path):
    blocker = tmp_path / "ipam"
    blocker.write_text("not a directory")
    r = plugin.call("STATUS", netconf(str(tmp_path)))
    assert r.rc == 1 and r.json["code"] == 50, r


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_frees_only_what_is_not_listed(plugin, pods, tmp_path, key):
    conf = netconf(str(tmp_path))
    ips = {}
    for cid in ("keep", "drop1", "drop2"):
        ips[cid] = plugin.add(conf, cid, pods()).json["ips"][0]["address"].split("/")[0]
    r = plugin.call("GC", {**conf, key: [{"containerID": "keep", "ifname": "eth0"}]}, ifname="")
    assert r.rc == 0, r
    assert allocated(str(tmp_path)) == [ips["keep"]]


def test_two_pods_ping_each_other_mtu_and_hairpin(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path), mtu=1400, hairpinMode=True)
    a, b = pods(), pods()
    ra, rb = plugin.add(conf, "a", a).json, plugin.add(conf, "b", b).json
    ip_b = rb["ips"][0]["address"].split("/")[0]
    assert in_ns(a, "ping", "-c1", "-W2", ip_b).returncode == 0
    assert in_ns(b, "ping", "-c1", "-W2", "10.244.7.1").returncode == 0
    assert "mtu 1400" in in_ns(a, "ip", "link", "show", "eth0").stdout
    host_if = ra["interfaces"][1]["name"]
    detail = in_ns(plugin.node, "ip", "-d", "link", "show", host_if).stdout
    assert "mtu 1400" in detail and "hairpin on" in detail and "master podwire0" in detail
    off = netconf(str(tmp_path), hairpinMode=False)
    rc = plugin.add(off, "c", pods()).json
    assert "hairpin off" in in_ns(plugin.node, "ip", "-d", "link", "show", rc["interfaces"][1]["name"]).stdout


def test_dual_stack_pod(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path), ipam={"ranges": [[{"subnet": "10.244.7.0/24"}], [{"subnet": "fd00:7::/64"}]],
                                        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]})
    a, b = pods(), pods()
    ra = plugin.add(conf, "a", a).json
    rb = plugin.add(conf, "b", b).json
    assert [ip["address"] for ip in ra["ips"]] == ["10.244.7.2/24", "fd00:7::2/64"]
    assert in_ns(a, "ping", "-6", "-c1", "-W2", rb["ips"][1]["address"].split("/")[0]).returncode == 0
    assert in_ns(a, "ping", "-6", "-c1", "-W2", "fd00:7::1").returncode == 0


def test_fifty_parallel_adds_get_distinct_addresses(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path))
    names = [pods() for _ in range(50)]
    with ThreadPoolExecutor(max_workers=50) as ex:
        results = list(ex.map(lambda i: plugin.add(conf, f"c{i}", names[i]), range(50)))
    assert all(r.rc == 0 for r in results), [r for r in results if r.rc][:2]
    addrs = {r.json["ips"][0]["address"] for r in results}
    assert len(addrs) == 50
    assert len(allocated(str(tmp_path))) == 50


@pytest.mark.slow
def test_thousand_add_del_cycles_leave_nothing_behind(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path),
                   runtimeConfig={"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]})
    pod = pods()
    for i in range(1000):
        a = plugin.add(conf, f"cycle-{i}", pod)
        assert a.rc == 0, (i, a)
        d = plugin.delete(conf, f"cycle-{i}", pod)
        assert d.rc == 0, (i, d)
    assert allocated(str(tmp_path)) == []
    links = in_ns(plugin.node, "ip", "-o", "link").stdout
    assert [line for line in links.splitlines() if ": pw" in line] == []
    assert in_ns(pod, "ip", "-o", "link").stdout.count("\n") == 1  # lo only
    assert not os.listdir(tmp_path / "state" / "hostport")
    ruleset = in_ns(plugin.node, "nft", "list", "table", "inet", "podwire-cni").stdout
    assert "hp-" not in ruleset and "18080" not in ruleset


def _err(r):
    assert r.rc == 1, r
    assert r.stdout.count("\n") <= 1 and "Traceback" not in r.stdout + r.stderr
    return r.json


def test_error_codes(plugin, pods, tmp_path):
    pod = pods()
    good = netconf(str(tmp_path))
    assert _err(plugin.call("ADD", "{not json", "c", pod))["code"] == 6
    assert _err(plugin.call("ADD", {**good, "cniVersion": "9.9.9"}, "c", pod))["code"] == 1
    assert _err(plugin.call("ADD", good, "", pod))["code"] == 4  # no CNI_CONTAINERID
    assert _err(plugin.call("ADD", good, "c", None))["code"] == 4  # no CNI_NETNS
    missing = _err(plugin.call("ADD", good, "c", netns_path="/run/netns/pwc-does-not-exist"))
    assert missing["code"] == 3 and "does not exist" in missing["msg"]
    assert _err(plugin.call("FROB", good, "c", pod))["code"] == 4
    assert _err(plugin.call("ADD", {**good, "mtu": 70000}, "c", pod))["code"] == 7
    bad_subnet = {**good, "ipam": {**good["ipam"], "ranges": [[{"subnet": "10.244.300.0/24"}]]}}
    assert "subnet" in _err(plugin.call("ADD", bad_subnet, "c", pod))["msg"]
    gw_out = {**good, "ipam": {**good["ipam"], "ranges": [[{"subnet": "10.244.7.0/24", "gateway": "10.9.9.1"}]]}}
    assert _err(plugin.call("ADD", gw_out, "c", pod))["code"] == 7
    other_ipam = {**good, "ipam": {"type": "dhcp"}}
    assert "IPAM type" in _err(plugin.call("ADD", other_ipam, "c", pod))["msg"]
    assert allocated(str(tmp_path)) == []  # no bad call leaked an address
    log = (tmp_path / "cni.log").read_text()
    assert "error 3" in log


def test_diagnostics_go_to_the_log_file(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path))
    r = plugin.add(conf, "logged", pods())
    assert r.rc == 0 and r.stderr == ""
    assert "ADD logged eth0 -> 10.244.7.2/24" in (tmp_path / "cni.log").read_text()


def test_hostport_reachable_from_another_namespace(plugin, pods, tmp_path):
    """A pod with a port mapping answers on the node's address from an outside namespace."""
    node = plugin.node
    outside = pods()
    node_ip = underlay(node, outside, "pwc-ul0", "192.168.77")
    conf = netconf(str(tmp_path), runtimeConfig={"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]})
    pod = pods()
    assert plugin.add(conf, "web", pod).rc == 0
    assert "hello-from-pod" in fetch_from_pod_server(pod, outside, node_ip, 8080, "hello-from-pod")
    # a second pod asking for the same hostPort is refused, the first keeps it
    clash = plugin.add(conf, "clash", pods())
    assert clash.rc == 1 and clash.json["code"] == 101, clash
    ruleset = in_ns(node, "nft", "list", "table", "inet", "podwire-cni").stdout
    assert "tcp . 8080" in ruleset
    assert plugin.delete(conf, "web", pod).rc == 0
    ruleset = in_ns(node, "nft", "list", "table", "inet", "podwire-cni").stdout
    assert "8080" not in ruleset and "hp-" not in ruleset


def test_gc_removes_hostport_rules_of_unlisted_pods(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path), runtimeConfig={"portMappings": [{"hostPort": 9090, "containerPort": 90}]})
    assert plugin.add(conf, "gone", pods()).rc == 0
    assert "9090" in in_ns(plugin.node, "nft", "list", "table", "inet", "podwire-cni").stdout
    assert plugin.call("GC", {**conf, "cni.dev/valid-attachments": []}, ifname="").rc == 0
    assert "9090" not in in_ns(plugin.node, "nft", "list", "table", "inet", "podwire-cni").stdout
    assert allocated(str(tmp_path)) == []
    assert json.loads(json.dumps(conf))  # conf untouched
