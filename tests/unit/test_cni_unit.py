"""Pure logic of the CNI plugin: config parsing, result shaping, planning, dispatch errors, records."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cni_plugin.config import parse_netconf
from cni_plugin.errors import CNIError
from cni_plugin.hostport import plan_state, render_add, render_delete
from cni_plugin.main import dispatch
from cni_plugin.plan import host_veth_name, plan_pod
from cni_plugin.result import Interface, IPConfig, Result, RouteConfig
from ipam import addr
from netkit.record import Record

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def conf(**kw):
    base = {"cniVersion": "1.1.0", "name": "n", "type": "podwire",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]}}
    base.update(kw)
    return base


class Alloc:
    def __init__(self, cidr, gw):
        self.address = addr.ip_interface(cidr)
        self.gateway = addr.ip_address(gw) if gw else None


class R:
    def __init__(self, dst, gw=None):
        self.dst = addr.ip_network(dst)
        self.gw = addr.ip_address(gw) if gw else None


# --- config -----------------------------------------------------------------------------------

def test_defaults():
    c = parse_netconf(conf())
    assert (c.bridge, c.mtu, c.is_gateway, c.hairpin, c.ip_masq) == ("podwire0", 1500, True, True, False)
    assert c.port_mappings == () and c.prev_result is None


@pytest.mark.parametrize("field,value,code,words", [
    ("cniVersion", "0.2.0", 1, "incompatible CNI version"),
    ("cniVersion", None, 7, "cniVersion"),
    ("name", "", 7, "name"),
    ("mtu", 67, 7, "mtu"),
    ("mtu", "1500", 7, "mtu"),
    ("bridge", "a-name-that-is-too-long", 7, "bridge"),
    ("hairpinMode", "yes", 7, "hairpinMode"),
    ("ipam", None, 7, "ipam"),
    ("prevResult", [], 7, "prevResult"),
])
def test_bad_config_is_a_clear_error(field, value, code, words):
    raw = conf(**{field: value})
    if value is None:
        del raw[field]
    with pytest.raises(CNIError) as e:
        parse_netconf(raw)
    assert e.value.code == code and words in e.value.msg


def test_port_mappings():
    c = parse_netconf(conf(runtimeConfig={"portMappings": [
        {"hostPort": 80, "containerPort": 8080, "protocol": "TCP", "hostIP": "0.0.0.0"},
        {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "192.0.2.1"}]}))
    assert [(p.host_port, p.container_port, p.protocol, str(p.host_ip or "")) for p in c.port_mappings] == [
        (80, 8080, "tcp", ""), (53, 53, "udp", "192.0.2.1")]
    for bad in ({"hostPort": 0, "containerPort": 1}, {"hostPort": 1, "containerPort": 1, "protocol": "icmp"}):
        with pytest.raises(CNIError) as e:
            parse_netconf(conf(runtimeConfig={"portMappings": [bad]}))
        assert e.value.code == 7


def test_port_mappings_as_containerd_sends_them():
    # containerd's CRI marshals go-cni's PortMapping, a struct without JSON tags
    c = parse_netconf(conf(runtimeConfig={"portMappings": [
        {"HostPort": 54323, "ContainerPort": 8080, "Protocol": "udp", "HostIP": "127.0.0.1"},
        {"HostPort": 80, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}]}))
    assert [(p.host_port, p.container_port, p.protocol, str(p.host_ip or "")) for p in c.port_mappings] == [
        (54323, 8080, "udp", "127.0.0.1"), (80, 80, "tcp", "")]


# --- result shapes ------------------------------------------------------------------------------

def sample_result():
    return Result((Interface("br", "aa"), Interface("veth", "bb", mtu=1400), Interface("eth0", "cc", "/ns", 1400)),
                  (IPConfig("10.1.0.2/24", "10.1.0.1", 2), IPConfig("fd00::2/64", "fd00::1", 2)),
                  (RouteConfig("0.0.0.0/0", "10.1.0.1", mtu=1300), RouteConfig("::/0")))


def test_result_pre_1_0_has_ip_versions_and_no_1_1_fields():
    out = sample_result().to_json("0.3.1")
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert "mtu" not in out["interfaces"][2] and "mtu" not in out["routes"][0]
    assert out["cniVersion"] == "0.3.1" and out["dns"] == {}


def test_result_1_1_has_mtus_and_round_trips():
    out = sample_result().to_json("1.1.0")
    assert "version" not in out["ips"][0]
    assert out["interfaces"][2] == {"name": "eth0", "mac": "cc", "mtu": 1400, "sandbox": "/ns"}
    assert out["routes"][0] == {"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1300}
    assert Result.from_json(out) == sample_result()


# --- plan ---------------------------------------------------------------------------------------

def test_host_veth_name_is_stable_short_and_distinct():
    a = host_veth_name("abcdef0123456789" * 4, "eth0")
    assert a == host_veth_name("abcdef0123456789" * 4, "eth0")
    assert len(a) <= 15 and a.startswith("pw")
    names = {host_veth_name(f"container-{i}", "eth0") for i in range(5000)}
    assert len(names) == 5000
    assert host_veth_name("c", "eth0") != host_veth_name("c", "net1")


def test_plan_dual_stack_routes_and_gateways():
    c = parse_netconf(conf())
    p = plan_pod(c, [Alloc("10.1.0.5/24", "10.1.0.1"), Alloc("fd00::5/64", "fd00::1")],
                 [R("0.0.0.0/0"), R("10.96.0.0/12", "10.1.0.254")], "cid", "eth0")
    assert p.container_addrs == ("10.1.0.5/24", "fd00::5/64")
    assert p.bridge_addrs == ("10.1.0.1/24", "fd00::1/64")
    assert [(r.dst, r.gw) for r in p.routes] == [("0.0.0.0/0", ""), ("10.96.0.0/12", "10.1.0.254"), ("::/0", "fd00::1")]
    assert p.forward_v4 and p.forward_v6


def test_plan_without_gateway_role():
    c = parse_netconf(conf(isGateway=False))
    p = plan_pod(c, [Alloc("10.1.0.5/24", "10.1.0.1")], [], "cid", "eth0")
    assert p.bridge_addrs == () and p.routes == () and not p.forward_v4


# --- hostport rendering ------------------------------------------------------------------------

def test_hostport_render_and_delete_name_the_same_objects():
    c = parse_netconf(conf(ipMasq=True, runtimeConfig={"portMappings": [
        {"hostPort": 8080, "containerPort": 80}, {"hostPort": 8443, "containerPort": 443, "hostIP": "192.0.2.9"}]}))
    state = plan_state("cid", "eth0", "pwabc", c.port_mappings, ["10.1.0.5/24", "fd00::5/64"], True)
    text = render_add(state, "podwire0")
    assert "create element inet podwire-cni hostports { tcp . 8080 : goto hp-pwabc }" in text
    assert "meta nfproto ipv4 meta l4proto tcp th dport 8080 dnat ip to 10.1.0.5:80" in text
    assert "dnat ip6 to [fd00::5]:80" in text
    assert "ip daddr 192.0.2.9 meta l4proto tcp th dport 8443 dnat ip to 10.1.0.5:443" in text
    assert "8443 dnat ip6" not in text  # an IPv4 hostIP never maps to the IPv6 address
    assert "add element inet podwire-cni masq4 { 10.1.0.5 }" in text
    assert "create element inet podwire-cni hostports4 { 192.0.2.9 . tcp . 8443 : goto hp-pwabc }" in text
    deletes = render_delete(state)
    assert deletes == ["delete element inet podwire-cni hostports4 { 192.0.2.9 . tcp . 8443 }",
                       "delete element inet podwire-cni hostports { tcp . 8080 }",
                       "delete chain inet podwire-cni hp-pwabc",
                       "delete element inet podwire-cni masq4 { 10.1.0.5 }",
                       "delete element inet podwire-cni masq6 { fd00::5 }"]


def test_hostport_same_port_on_different_host_ips_are_different_elements():
    # the HostPort conformance test: 127.0.0.1:54323/tcp, <node>:54323/tcp, <node>:54323/udp
    states = [plan_state(f"c{i}", "eth0", f"pw{i}", parse_netconf(conf(runtimeConfig={"portMappings": [
        {"hostPort": 54323, "containerPort": 8080, "protocol": proto, "hostIP": ip}]})).port_mappings,
        [f"10.1.0.{i}/24"], False) for i, (ip, proto) in enumerate(
        [("127.0.0.1", "tcp"), ("192.0.2.9", "tcp"), ("192.0.2.9", "udp"), ("fd00::9", "tcp"), ("", "tcp")])]
    creates = [line for st in states for line in render_add(st, "podwire0").splitlines() if "create element" in line]
    assert creates == [
        "create element inet podwire-cni hostports4 { 127.0.0.1 . tcp . 54323 : goto hp-pw0 }",
        "create element inet podwire-cni hostports4 { 192.0.2.9 . tcp . 54323 : goto hp-pw1 }",
        "create element inet podwire-cni hostports4 { 192.0.2.9 . udp . 54323 : goto hp-pw2 }",
        "create element inet podwire-cni hostports6 { fd00::9 . tcp . 54323 : goto hp-pw3 }",
        "create element inet podwire-cni hostports { tcp . 54323 : goto hp-pw4 }"]
    base = render_add(states[0], "podwire0")
    # a hostIP of 127.0.0.1 is reachable from the node itself: looked up before loopback returns
    assert base.index("output ip daddr . meta l4proto . th dport vmap @hostports4") < base.index(
        "output ip daddr 127.0.0.0/8 return")
    # state files of earlier versions hold only "proto . port" elements: still deleted from `hostports`
    assert render_delete({"elements": ["tcp . 80"], "chain": "hp-x", "masq": []})[0] == (
        "delete element inet podwire-cni hostports { tcp . 80 }")


# --- dispatch: errors never leak a traceback -------------------------------------------------

@pytest.mark.parametrize("env,stdin,code", [
    ({"CNI_COMMAND": "ADD"}, b"{", 6),
    ({"CNI_COMMAND": "ADD"}, b"", 6),
    ({}, json.dumps(conf()).encode(), 4),
    ({"CNI_COMMAND": "BOGUS"}, json.dumps(conf()).encode(), 4),
    ({"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}, json.dumps(conf()).encode(), 4),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/nonexistent/ns"},
     json.dumps(conf(ipam={"type": "host-local", "subnet": "10.1.0.0/24", "dataDir": "/nonexistent-pw"})).encode(), 3),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "x" * 16, "CNI_NETNS": "/x"},
     json.dumps(conf()).encode(), 4),
    ({"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"},
     json.dumps(conf(cniVersion="0.3.1")).encode(), 1),
    ({"CNI_COMMAND": "GC"}, json.dumps(conf(cniVersion="1.0.0")).encode(), 1),
])
def test_dispatch_errors(env, stdin, code, tmp_path):
    env = {**env, "PODWIRE_CNI_LOG": str(tmp_path / "log")}
    rc, out = dispatch(env, stdin)
    err = json.loads(out)
    assert rc == 1 and err["code"] == code and err["msg"], err
    assert set(err) == {"cniVersion", "code", "msg", "details"}


def test_dispatch_version():
    rc, out = dispatch({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}')
    assert rc == 0 and json.loads(out)["cniVersion"] == "1.0.0"
    rc, out = dispatch({"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0 and "1.1.0" in json.loads(out)["supportedVersions"]


def test_internal_errors_become_999_with_the_traceback_in_the_log(tmp_path, monkeypatch):
    from cni_plugin import verbs

    def boom(*a):
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(verbs.VERBS, "STATUS", boom)
    rc, out = dispatch({"CNI_COMMAND": "STATUS", "PODWIRE_CNI_LOG": str(tmp_path / "log")}, json.dumps(conf()).encode())
    assert rc == 1 and json.loads(out)["code"] == 999 and "Traceback" not in out
    assert "Traceback" in (tmp_path / "log").read_text()


# --- records ------------------------------------------------------------------------------------

class Point(Record):
    x: int
    y: int = 0


def test_record_behaves_like_a_frozen_dataclass():
    p = Point(1)
    assert p == Point(x=1, y=0) and p != Point(1, 2) and hash(p) == hash(Point(1, 0))
    assert repr(p) == "Point(x=1, y=0)" and p.replace(y=5) == Point(1, 5)
    with pytest.raises(AttributeError):
        p.x = 3
    with pytest.raises(TypeError):
        Point()
    with pytest.raises(TypeError):
        Point(1, 2, 3)
    with pytest.raises(TypeError):
        Point(1, z=2)


# --- the plugin's import graph stays lean --------------------------------------------------------

def test_plugin_start_up_path_imports_nothing_heavy():
    code = ("import sys; sys.path.insert(0, %r); import cni_plugin.main, cni_plugin.verbs; "
            "print(' '.join(sorted(sys.modules)))" % ROOT)
    mods = set(subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True,
                              check=True).stdout.split())
    forbidden = {"kubernetes", "pyroute2", "node_daemon", "proxy", "prometheus_client", "asyncio", "logging",
                 "subprocess", "inspect", "dataclasses", "typing", "socket", "ctypes"}
    assert not mods & forbidden, mods & forbidden


def test_log_lines_name_the_kubernetes_pod():
    from cni_plugin.verbs import Env

    env = Env({"CNI_CONTAINERID": "0123456789abcdef", "CNI_IFNAME": "eth0",
               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=x"})
    assert env.who() == "0123456789ab default/web-0 eth0"
    assert Env({"CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}).who() == "c1 eth0"
