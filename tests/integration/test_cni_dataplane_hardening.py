"""The plugin's kernel edge refuses what it must not touch (issue 10, items 3, 4, 5, 6, 7).

Every case ran against the code before the fix and failed there: a non-bridge `bridge` link got set up
and addressed, the bridge MAC followed its lowest port, a non-namespace CNI_NETNS gave code 5, DEL with
the node's own namespace deleted the node's link named by CNI_IFNAME (or any link of that name in the
given namespace), and 254+ routes failed ADD with ENOBUFS.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.integration.cni_harness import CNIResult, allocated, in_ns, netconf

pytestmark = [pytest.mark.root, pytest.mark.frozen]

GW = "10.244.7.1"


def _link(ns: str, name: str) -> dict | None:
    r = in_ns(ns, "ip", "-j", "-d", "addr", "show", "dev", name, check=False)
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


def _addrs(ns: str, name: str) -> list[str]:
    link = _link(ns, name)
    assert link is not None
    return [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]


def _host_veths(ns: str) -> list[str]:
    return [line.split(":")[1].strip().split("@")[0] for line in in_ns(ns, "ip", "-o", "link").stdout.splitlines()
            if line.split(":")[1].strip().startswith("pw")]


# --- item 3: `bridge` naming an existing link that is not a bridge -------------------------------------
# veth, not ifb or dummy: loading the ifb module creates ifb0/ifb1 in the machine's own namespace
@pytest.mark.parametrize("name,kind", [("notabr", "veth"), ("lo", "")])
def test_bridge_naming_a_non_bridge_link_is_refused_before_touching_it(plugin, pods, tmp_path, name, kind):
    if kind:
        in_ns(plugin.node, "ip", "link", "add", name, "type", kind, "peer", "name", name + "p")  # down, no address
    before = _link(plugin.node, name)
    conf = netconf(str(tmp_path), bridge=name)
    for attempt in range(2):  # every attempt: nothing accumulates
        r = plugin.add(conf, f"c{attempt}", pods())
        assert r.rc == 1 and r.json["code"] == 7, r
        assert name in r.json["msg"] and "not a bridge" in r.json["msg"]
        assert (f"kind {kind}" if kind else "without a link kind") in r.json["msg"]
    after = _link(plugin.node, name)
    assert after["flags"] == before["flags"]  # a down link stays down
    assert not [a for a in _addrs(plugin.node, name) if a.startswith("10.244.")]  # no gateway put on it
    assert allocated(str(tmp_path)) == []
    assert _host_veths(plugin.node) == []


# --- item 4: the bridge keeps its MAC when the port whose MAC it had leaves -------------------------------
def _mac(ns: str, name: str) -> str:
    return json.loads(in_ns(ns, "ip", "-j", "link", "show", "dev", name).stdout)[0]["address"]


def _gateway_survives_losing_the_lowest_port(plugin, pods, tmp_path) -> dict:
    conf = netconf(str(tmp_path))
    members = {}
    for cid in ("a", "b"):
        pod = pods()
        r = plugin.add(conf, cid, pod)
        assert r.rc == 0, r
        members[cid] = (pod, _mac(plugin.node, r.json["interfaces"][1]["name"]))
    bridge_mac = _mac(plugin.node, "podwire0")
    for pod, _ in members.values():  # both pods hold an ARP entry for the gateway
        assert in_ns(pod, "ping", "-c1", "-W2", GW).returncode == 0
    # an unpinned bridge carries the lowest MAC among its ports: delete the pod owning that port
    gone = min(members, key=lambda c: members[c][1])
    survivor = members["b" if gone == "a" else "a"][0]
    assert plugin.delete(conf, gone, members[gone][0]).rc == 0
    start = time.monotonic()
    reply = in_ns(survivor, "ping", "-c1", "-W1", GW, check=False)
    outage = time.monotonic() - start
    neigh = in_ns(survivor, "ip", "-j", "neigh", "show", GW).stdout
    return {"before": bridge_mac, "after": _mac(plugin.node, "podwire0"), "ping": reply.returncode,
            "outage": outage, "neigh": json.loads(neigh)}


def test_bridge_mac_is_pinned_at_creation(plugin, pods, tmp_path):
    seen = _gateway_survives_losing_the_lowest_port(plugin, pods, tmp_path)
    assert seen["before"] == "0a:58:0a:f4:07:01"  # 0a:58 + the gateway's four bytes
    assert seen["after"] == seen["before"]
    assert seen["neigh"] and seen["neigh"][0]["lladdr"] == seen["before"]  # the survivor's entry is still right
    assert seen["ping"] == 0, seen  # the first probe is answered (unpinned: 9-49 s until re-resolution)


def test_bridge_created_by_someone_else_is_pinned_to_the_mac_it_has(plugin, pods, tmp_path):
    """A bridge podwire did not create (an older version, an admin, a test bed) gets its current MAC pinned
    on ADD, as the reference plugin does; its ports come and go without changing it."""
    node = plugin.node
    in_ns(node, "ip", "link", "add", "podwire0", "type", "bridge")
    in_ns(node, "ip", "addr", "add", f"{GW}/24", "dev", "podwire0")
    in_ns(node, "ip", "link", "set", "podwire0", "up")
    seen = _gateway_survives_losing_the_lowest_port(plugin, pods, tmp_path)
    assert seen["after"] == seen["before"]
    assert seen["neigh"] and seen["neigh"][0]["lladdr"] == seen["before"]
    assert seen["ping"] == 0, seen  # the first probe is answered (unpinned: 9-49 s until re-resolution)


def test_bridge_with_another_address_in_the_gateway_subnet_is_refused(plugin, pods, tmp_path):
    node = plugin.node
    in_ns(node, "ip", "link", "add", "podwire0", "type", "bridge")
    in_ns(node, "ip", "addr", "add", "10.244.7.5/24", "dev", "podwire0")
    conf = netconf(str(tmp_path))
    r = plugin.add(conf, "c1", pods())
    assert r.rc == 1 and r.json["code"] == 7, r
    assert "podwire0" in r.json["msg"] and "10.244.7.5/24" in r.json["msg"] and f"{GW}/24" in r.json["msg"]
    assert _addrs(node, "podwire0") == ["10.244.7.5/24"] and "UP" not in _link(node, "podwire0")["flags"]
    assert allocated(str(tmp_path)) == [] and _host_veths(node) == []
    # an address of another subnet is fine (several ranges or networks may share a bridge)
    in_ns(node, "ip", "addr", "del", "10.244.7.5/24", "dev", "podwire0")
    in_ns(node, "ip", "addr", "add", "10.99.0.1/24", "dev", "podwire0")
    pod = pods()
    r = plugin.add(conf, "c1", pod)
    assert r.rc == 0, r
    assert sorted(_addrs(node, "podwire0")) == [f"{GW}/24", "10.99.0.1/24"]
    assert in_ns(pod, "ping", "-c1", "-W2", GW).returncode == 0


# --- item 5: a CNI_NETNS that is not a network namespace ------------------------------------------------
@pytest.fixture
def not_namespaces(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading must not hang the plugin
    return [str(plain), str(tmp_path), "/proc/self/ns/mnt", "/dev/null", str(fifo)]


def test_netns_that_is_not_a_network_namespace_gets_code_4(plugin, pods, tmp_path, not_namespaces):
    conf = netconf(str(tmp_path))
    pod = pods()
    res = plugin.add(conf, "live", pod).json
    for path in not_namespaces:
        r = plugin.add(conf, "c1", None, netns_path=path)
        assert r.rc == 1 and r.json["code"] == 4, (path, r)
        assert path in r.json["msg"] and "not a network namespace" in r.json["msg"]
        r = plugin.call("CHECK", {**conf, "prevResult": res}, "live", netns_path=path)
        assert r.rc == 1 and r.json["code"] == 4, (path, r)
    assert allocated(str(tmp_path)) == ["10.244.7.2"]  # only the live pod's
    # DEL counts such a path as a namespace that is gone (a runtime may leave the unmounted file behind):
    # the pod's address is released all the same
    for path in not_namespaces:
        r = plugin.delete(conf, "live", None, netns_path=path)
        assert r.rc == 0, (path, r)
    assert allocated(str(tmp_path)) == [] and _host_veths(plugin.node) == []


# --- item 6: the node's own namespace -------------------------------------------------------------------
def test_node_namespace_is_refused_on_every_verb(plugin, pods, tmp_path):
    node = plugin.node
    in_ns(node, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p")  # the node's uplink
    conf = netconf(str(tmp_path))
    res = plugin.add(conf, "live", pods()).json
    for path in (f"/run/netns/{node}", "/proc/self/ns/net"):
        r = plugin.delete(conf, "c1", None, netns_path=path, ifname="uplink0")
        assert r.rc == 1 and r.json["code"] == 4 and "own network namespace" in r.json["msg"], (path, r)
        r = plugin.add(conf, "c2", None, netns_path=path, ifname="uplink1")
        assert r.rc == 1 and r.json["code"] == 4, (path, r)
        r = plugin.call("CHECK", {**conf, "prevResult": res}, "live", netns_path=path)
        assert r.rc == 1 and r.json["code"] == 4, (path, r)
    assert _link(node, "uplink0") is not None and _link(node, "uplink1") is None
    assert allocated(str(tmp_path)) == ["10.244.7.2"]


def _call_under_init(plugin, init_ns: str, command: str, conf: dict, cid: str, ifname: str) -> CNIResult:
    """Run the plugin (in the node namespace as usual) in a fresh PID namespace whose PID 1 lives in
    `init_ns`: CNI_NETNS=/proc/1/ns/net then names a stand-in for the machine's init namespace."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": "/proc/1/ns/net", "CNI_PATH": "/usr/lib/cni"}
    # `; exit $rc`: the shell must stay PID 1 instead of exec'ing the last command
    inner = f'nsenter --net=/run/netns/{plugin.node} {plugin.binary}; rc=$?; exit $rc'
    return CNIResult(subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "nsenter", f"--net=/run/netns/{init_ns}", "sh", "-c", inner],
        input=json.dumps(conf), capture_output=True, text=True, env=env, timeout=60))


def test_init_namespace_is_refused(plugin, pods, tmp_path):
    init = pods()  # PID 1's namespace in the plugin's PID namespace (see _call_under_init)
    in_ns(init, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p")
    conf = netconf(str(tmp_path))
    res = plugin.add(conf, "live", pods()).json
    r = _call_under_init(plugin, init, "DEL", conf, "c1", "uplink0")
    assert r.rc == 1 and r.json["code"] == 4 and "own network namespace" in r.json["msg"], r
    r = _call_under_init(plugin, init, "ADD", conf, "c2", "uplink1")
    assert r.rc == 1 and r.json["code"] == 4, r
    r = _call_under_init(plugin, init, "CHECK", {**conf, "prevResult": res}, "live", "eth0")
    assert r.rc == 1 and r.json["code"] == 4, r
    assert _link(init, "uplink0") is not None and _link(init, "uplink1") is None
    assert allocated(str(tmp_path)) == ["10.244.7.2"]


def test_del_leaves_a_link_that_is_not_the_peer_of_our_veth(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path))
    ours, other = pods(), pods()
    assert plugin.add(conf, "a", ours).rc == 0
    in_ns(other, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")  # same name, not ours
    r = plugin.delete(conf, "a", other)  # the runtime names the wrong namespace
    assert r.rc == 0, r
    assert _link(other, "eth0") is not None
    assert _link(ours, "eth0") is None  # our veth went, and its peer with it
    assert allocated(str(tmp_path)) == [] and _host_veths(plugin.node) == []


# --- item 7: many routes --------------------------------------------------------------------------------
def test_add_with_a_thousand_routes(plugin, pods, tmp_path):
    routes = [{"dst": f"10.{100 + i // 256}.{i % 256}.1/32"} for i in range(1000)]
    conf = netconf(str(tmp_path), ipam={"routes": routes})
    pod = pods()
    r = plugin.add(conf, "c1", pod)
    assert r.rc == 0, r
    live = in_ns(pod, "ip", "-4", "route", "show", "via", GW).stdout.split()
    assert {f"10.{100 + i // 256}.{i % 256}.1" for i in range(1000)} <= set(live)
    assert plugin.call("CHECK", {**conf, "prevResult": r.json}, "c1", pod).rc == 0
    assert plugin.delete(conf, "c1", pod).rc == 0
    assert allocated(str(tmp_path)) == [] and _host_veths(plugin.node) == []
    assert in_ns(pod, "ip", "-4", "route").stdout.strip() == ""
