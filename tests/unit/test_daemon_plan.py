"""The pure cross-node plan: transport per peer and family, VXLAN entries, MTU, modes; and the diff."""

import ipaddress as ipa

import pytest

from node_daemon.dataplane import Dataplane, FdbEntry, Neighbour, Route, count_drift, diff
from node_daemon.model import BadNode, NodeInfo, node_from_api, routing_view, vtep_mac_for
from node_daemon.plan import Mode, Skipped, Underlay, VxlanSettings, plan

MAC2, MAC3 = "0a:00:00:00:00:02", "0a:00:00:00:00:03"
ME = NodeInfo("n1", (ipa.ip_address("192.168.1.1"), ipa.ip_address("fd00::1")),
              (ipa.ip_network("10.244.1.0/24"), ipa.ip_network("fd10:244:1::/64")))
UNDERLAY = Underlay("eth0", (ipa.ip_interface("192.168.1.1/24"), ipa.ip_interface("fd00::1/64")), 1500)
NEAR = NodeInfo("n2", (ipa.ip_address("192.168.1.2"), ipa.ip_address("fd00::2")),
                (ipa.ip_network("10.244.2.0/24"), ipa.ip_network("fd10:244:2::/64")), MAC2)
FAR = NodeInfo("n3", (ipa.ip_address("192.168.9.3"),), (ipa.ip_network("10.244.3.0/24"),), MAC3)


def mk(peers, mode=Mode.AUTO, me=ME, underlay=UNDERLAY):
    return plan(me, peers, underlay, mode, VxlanSettings(), "0a:00:00:00:00:01")


def test_on_link_peer_gets_direct_routes_per_family_and_full_mtu():
    p = mk([NEAR])
    assert p.dataplane.routes == {
        Route(ipa.ip_network("10.244.2.0/24"), ipa.ip_address("192.168.1.2"), "eth0"),
        Route(ipa.ip_network("fd10:244:2::/64"), ipa.ip_address("fd00::2"), "eth0"),
    }
    assert not p.dataplane.fdb and not p.dataplane.neighbours
    assert p.pod_mtu == 1500
    # the device exists in auto mode anyway (a peer may see us as off-link), with our VTEP IPs
    assert p.dataplane.vxlan.mtu == 1450 and p.dataplane.vxlan.local == ipa.ip_address("192.168.1.1")
    assert p.dataplane.addresses == {ipa.ip_interface("10.244.1.0/32"), ipa.ip_interface("fd10:244:1::/128")}


def test_off_link_peer_goes_over_vxlan_and_lowers_pod_mtu():
    p = mk([NEAR, FAR])
    vtep = ipa.ip_address("10.244.3.0")
    assert Route(ipa.ip_network("10.244.3.0/24"), vtep, "podwire.vxlan", onlink=True) in p.dataplane.routes
    assert p.dataplane.fdb == {FdbEntry(MAC3, ipa.ip_address("192.168.9.3"))}
    assert p.dataplane.neighbours == {Neighbour(vtep, MAC3)}
    assert ("n3", 4, "vxlan") in p.transports and ("n2", 4, "direct") in p.transports
    assert p.pod_mtu == 1450


def test_mode_vxlan_overlays_even_on_link_peers_inner_v6_over_outer_v4():
    p = mk([NEAR], mode=Mode.VXLAN)
    assert {r.dev for r in p.dataplane.routes} == {"podwire.vxlan"}
    assert p.dataplane.fdb == {FdbEntry(MAC2, ipa.ip_address("192.168.1.2"))}
    assert p.dataplane.neighbours == {Neighbour(ipa.ip_address("10.244.2.0"), MAC2),
                                      Neighbour(ipa.ip_address("fd10:244:2::"), MAC2)}
    assert p.pod_mtu == 1450


def test_mode_vxlan_lowers_mtu_even_without_peers():
    assert mk([], mode=Mode.VXLAN).pod_mtu == 1450
    assert mk([], mode=Mode.AUTO).pod_mtu == 1500


def test_mode_direct_skips_off_link_peers_and_has_no_device():
    p = mk([NEAR, FAR], mode=Mode.DIRECT)
    assert p.dataplane.vxlan is None and not p.dataplane.addresses
    assert {r.dst for r in p.dataplane.routes} == {ipa.ip_network("10.244.2.0/24"), ipa.ip_network("fd10:244:2::/64")}
    assert [s.node for s in p.skipped] == ["n3"]
    assert p.pod_mtu == 1500


def test_peer_without_mac_or_podcidr_is_skipped_others_still_served():
    nomac = NodeInfo("n4", (ipa.ip_address("192.168.9.4"),), (ipa.ip_network("10.244.4.0/24"),))
    nocidr = NodeInfo("n5", (ipa.ip_address("192.168.1.5"),), ())
    p = mk([nomac, nocidr, NEAR])
    assert {s.node for s in p.skipped} == {"n4", "n5"}
    assert len(p.dataplane.routes) == 2
    # n4 needs the overlay as soon as it has a MAC: pods made meanwhile already get the lower MTU
    assert p.pod_mtu == 1450


def peer(name, cidr, ip="192.168.9.8", created=""):
    return NodeInfo(name, (ipa.ip_address(ip),), (ipa.ip_network(cidr),), MAC3, created)


@pytest.mark.parametrize("rogue, why", [
    (peer("x", "10.244.1.0/24"), "overlaps this node's podCIDR 10.244.1.0/24"),
    (peer("x", "10.244.0.0/16"), "overlaps this node's podCIDR 10.244.1.0/24"),
    (peer("x", "0.0.0.0/0"), "overlaps this node's podCIDR 10.244.1.0/24"),  # not our default route
    (peer("x", "192.168.1.128/25"), "overlaps the underlay subnet 192.168.1.0/24"),
    (peer("x", "10.99.0.0/24"), "outside the cluster CIDRs 10.244.0.0/16"),
    (peer("x", "10.244.3.0/25", created="2026-01-02T00:00:00Z"),
     "overlaps 10.244.3.0/24 of n3, a Node created earlier"),
    (peer("x", "10.244.8.0/24", ip="192.168.1.1"), "InternalIP 192.168.1.1 is not a usable peer address"),
    (peer("x", "10.244.8.0/24", ip="127.0.0.1"), "InternalIP 127.0.0.1 is not a usable peer address"),
    (peer("x", "10.244.8.0/24", ip="0.0.0.0"), "InternalIP 0.0.0.0 is not a usable peer address"),
])
def test_peer_claiming_addresses_not_its_own_is_skipped_and_touches_nobody(rogue, why):
    """Node objects are input: whatever one claims, it must not replace our own routes (routes are
    programmed with `replace`), or take over another Node's podCIDR."""
    far = NodeInfo(FAR.name, FAR.internal_ips, FAR.pod_cidrs, MAC3, created="2026-01-01T00:00:00Z")
    p = plan(ME, [NEAR, far, rogue], UNDERLAY, Mode.AUTO, VxlanSettings(), "0a:00:00:00:00:01",
             cluster_cidrs=(ipa.ip_network("10.244.0.0/16"), ipa.ip_network("fd10:244::/32")))
    assert [s for s in p.skipped if s.node == "x"] == [Skipped("x", f"{rogue.pod_cidrs[0]}: {why}")]
    assert p.dataplane == mk([NEAR, far]).dataplane  # exactly what it would be without the rogue


def test_of_two_nodes_claiming_a_podcidr_the_older_keeps_it_whatever_the_names():
    old = peer("zz", "10.244.5.0/24", created="2026-01-01T00:00:00Z")
    new = peer("aa", "10.244.5.0/24", created="2026-01-02T00:00:00Z")
    p = mk([new, old])
    assert [s.node for s in p.skipped] == ["aa"]
    assert [t[0] for t in p.transports] == ["zz"]
    tie = mk([peer("b", "10.244.5.0/24"), peer("a", "10.244.5.0/24")])  # same second: by name
    assert [t[0] for t in tie.transports] == ["a"]


def test_v6_podcidr_without_v6_internal_ip_goes_over_the_v4_overlay():
    peer = NodeInfo("n6", (ipa.ip_address("192.168.1.6"),),
                    (ipa.ip_network("10.244.6.0/24"), ipa.ip_network("fd10:244:6::/64")), MAC2)
    p = mk([peer])
    assert {(str(r.dst), r.dev) for r in p.dataplane.routes} == {
        ("10.244.6.0/24", "eth0"), ("fd10:244:6::/64", "podwire.vxlan")}
    assert p.dataplane.fdb == {FdbEntry(MAC2, ipa.ip_address("192.168.1.6"))}


def test_v6_underlay_overhead_is_70():
    me = NodeInfo("n1", (ipa.ip_address("fd00::1"),), (ipa.ip_network("fd10:244:1::/64"),))
    ul = Underlay("eth0", (ipa.ip_interface("fd00::1/64"),), 9000)
    assert mk([], mode=Mode.VXLAN, me=me, underlay=ul).pod_mtu == 8930


def test_diff_and_drift():
    desired = mk([NEAR, FAR]).dataplane
    assert diff(desired, desired).empty
    lost = next(r for r in desired.routes if r.dev == "podwire.vxlan")
    actual = Dataplane(vxlan=desired.vxlan, addresses=desired.addresses, routes=desired.routes - {lost},
                       fdb=desired.fdb, neighbours=desired.neighbours)
    ch = diff(desired, actual)
    assert ch.add["routes"] == {lost} and ch.count() == 1
    assert count_drift(ch, previous=desired, desired=desired) == 1
    assert count_drift(ch, previous=None, desired=desired) == 0  # start-up is not drift
    # a peer that left: its entries go, and that is a normal change, not drift
    after = mk([NEAR]).dataplane
    ch = diff(after, desired)
    assert ch.remove["fdb"] == desired.fdb and ch.remove["neighbours"] == desired.neighbours
    assert count_drift(ch, previous=desired, desired=after) == 0


def test_diff_device_changes():
    desired = mk([FAR]).dataplane
    actual = Dataplane(vxlan=desired.vxlan.__class__(**{**desired.vxlan.__dict__, "vni": 7}),
                       fdb=desired.fdb, routes=desired.routes)
    ch = diff(desired, actual)
    assert ch.device == "recreate"
    assert ch.add["fdb"] == desired.fdb  # entries vanish with the old device
    assert diff(Dataplane(), Dataplane(vxlan=desired.vxlan)).device == "delete"
    mtu = desired.vxlan.__class__(**{**desired.vxlan.__dict__, "mtu": 1400})
    assert diff(desired, Dataplane(**{**desired.__dict__, "vxlan": mtu})).device == "update"


def api_node(name="n2", cidrs=("10.244.2.0/24",), ips=("192.168.1.2",), mac=None):
    return {"metadata": {"name": name, "annotations": {"podwire.io/vtep-mac": mac} if mac else {}},
            "spec": {"podCIDRs": list(cidrs)},
            "status": {"addresses": [{"type": "Hostname", "address": name}] +
                       [{"type": "InternalIP", "address": ip} for ip in ips]}}


def test_node_from_api():
    n = node_from_api(api_node(mac="0A:00:00:00:00:02", cidrs=("10.244.2.0/24", "fd10::/64")))
    assert n.pod_cidrs == (ipa.ip_network("10.244.2.0/24"), ipa.ip_network("fd10::/64"))
    assert n.vtep_mac == MAC2 and n.internal_ips == (ipa.ip_address("192.168.1.2"),)
    assert node_from_api(api_node(mac="garbage")).vtep_mac is None
    assert node_from_api(api_node(cidrs=())).pod_cidrs == ()
    legacy = api_node(cidrs=())
    legacy["spec"] = {"podCIDR": "10.244.7.0/24"}
    assert node_from_api(legacy).pod_cidrs == (ipa.ip_network("10.244.7.0/24"),)
    legacy["metadata"]["creationTimestamp"] = "2026-11-22T04:53:04Z"
    assert node_from_api(legacy).created == "2026-11-22T04:53:04Z"


@pytest.mark.parametrize("bad", [
    api_node(cidrs=("10.244.2.1/24",)), api_node(cidrs=("nonsense",)), api_node(ips=()),
    api_node(ips=("300.1.1.1",)), api_node(cidrs=("10.1.0.0/24", "10.2.0.0/24")),
])
def test_bad_nodes_raise_badnode(bad):
    with pytest.raises(BadNode):
        node_from_api(bad)


def test_vtep_mac_is_stable_unicast_and_local():
    mac = vtep_mac_for("node-a")
    assert mac == vtep_mac_for("node-a") != vtep_mac_for("node-b")
    first = int(mac[:2], 16)
    assert first & 1 == 0 and first & 2 == 2


def test_routing_view_ignores_heartbeats_but_not_what_routes_depend_on():
    import copy

    base = api_node(mac=MAC2)
    base["status"]["conditions"] = [{"type": "Ready", "status": "True", "lastHeartbeatTime": "t1"}]
    beat = copy.deepcopy(base)
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = "t2"
    beat["metadata"]["resourceVersion"] = "99"
    assert routing_view(beat) == routing_view(base)
    for change in (lambda n: n["spec"].update(podCIDRs=["10.244.9.0/24"]),
                   lambda n: n["status"]["addresses"].append({"type": "InternalIP", "address": "fd00::9"}),
                   lambda n: n["metadata"]["annotations"].update({"podwire.io/vtep-mac": MAC3}),
                   lambda n: n["status"]["conditions"].append({"type": "NetworkUnavailable", "status": "True"})):
        other = copy.deepcopy(base)
        change(other)
        assert routing_view(other) != routing_view(base)


def test_a_vtep_mac_already_claimed_is_refused_for_the_later_node():
    """Two FDB entries for one MAC make the kernel replicate each frame to both VTEPs: a Node
    announcing another's MAC (it writes its own annotation) would get a copy of that traffic."""
    older = NodeInfo("n3", FAR.internal_ips, FAR.pod_cidrs, MAC3, created="2024-01-01T00:00:00Z")
    thief = NodeInfo("n4", (ipa.ip_address("192.168.9.4"),), (ipa.ip_network("10.244.4.0/24"),), MAC3,
                     created="2024-01-02T00:00:00Z")
    mine = NodeInfo("n5", (ipa.ip_address("192.168.9.5"),), (ipa.ip_network("10.244.5.0/24"),),
                    "0a:00:00:00:00:01")  # this node's own MAC (mk's vtep_mac)
    p = mk([thief, older, mine])
    assert {f.dst for f in p.dataplane.fdb} == {ipa.ip_address("192.168.9.3")}
    reasons = {s.node: s.reason for s in p.skipped}
    assert "already n3's" in reasons["n4"] and "already n1's" in reasons["n5"]


def test_node_from_api_refuses_untyped_values():
    assert node_from_api(api_node(mac="01:00:5e:00:00:01")).vtep_mac is None  # multicast
    assert node_from_api(api_node(mac="00:00:00:00:00:00")).vtep_mac is None  # the FDB default entry
    for bad in (api_node(ips=("fd00::2%eth0",)), api_node(ips=(5,)), api_node(ips=(" 192.168.1.2",)),
                api_node(cidrs=("fd10::%x/64",)), api_node(name="N2"), api_node(name="a\nb"), [],
                {"metadata": "x"}, {"metadata": {"name": "n"}, "status": {"addresses": ["192.168.1.2"]}}):
        with pytest.raises(BadNode):
            node_from_api(bad)
