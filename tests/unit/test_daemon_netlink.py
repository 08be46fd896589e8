"""node_daemon.netlink's pure helpers (the netlink calls themselves run in tests/integration)."""

import ipaddress

from node_daemon.netlink import IFA_F_NODAD, vtep_address


def test_ipv6_vtep_address_skips_duplicate_address_detection():
    # tentative for 1-2 s after every device (re)creation otherwise, on hosts with accept_dad on
    assert vtep_address(ipaddress.ip_interface("fd00:10:244:1::/128")) == {
        "address": "fd00:10:244:1::", "prefixlen": 128, "flags": IFA_F_NODAD}


def test_ipv4_vtep_address_has_no_flags():
    assert vtep_address(ipaddress.ip_interface("10.244.1.0/32")) == {"address": "10.244.1.0", "prefixlen": 32}


def test_an_ipv6_route_changing_device_is_deleted_first_others_are_replaced_in_place():
    """Found by bench/pod_throughput.py --family ipv6 (direct, then VXLAN): replacing
    `fd10:244:2::/64 via fd00:50::2 dev eth0` by `... via fd10:244:2:: dev podwire.vxlan onlink` is refused
    by the kernel (EINVAL: the onlink gateway is checked against the old route, through eth0)."""
    from node_daemon.dataplane import Route
    from node_daemon.netlink import replaced_in_place

    net, ip = ipaddress.ip_network, ipaddress.ip_address
    v6_direct = Route(net("fd10:244:2::/64"), ip("fd00:50::2"), "eth0")
    v6_vxlan = Route(net("fd10:244:2::/64"), ip("fd10:244:2::"), "podwire.vxlan", onlink=True)
    v6_moved = Route(net("fd10:244:2::/64"), ip("fd00:50::3"), "eth0")
    v4_direct = Route(net("10.244.2.0/24"), ip("192.168.50.2"), "eth0")
    v4_vxlan = Route(net("10.244.2.0/24"), ip("10.244.2.0"), "podwire.vxlan", onlink=True)
    gone = Route(net("10.244.3.0/24"), ip("192.168.50.3"), "eth0")
    assert replaced_in_place({v6_direct, v4_direct, gone}, {v6_vxlan, v4_vxlan}) == {v4_direct}
    assert replaced_in_place({v6_direct}, {v6_moved}) == {v6_direct}  # same device: replaced, no gap
