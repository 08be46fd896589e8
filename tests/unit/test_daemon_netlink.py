"""node_daemon.netlink's pure helpers (the netlink calls themselves run in tests/integration)."""

import ipaddress

from node_daemon.netlink import IFA_F_NODAD, vtep_address


def test_ipv6_vtep_address_skips_duplicate_address_detection():
    # tentative for 1-2 s after every device (re)creation otherwise, on hosts with accept_dad on
    assert vtep_address(ipaddress.ip_interface("fd00:10:244:1::/128")) == {
        "address": "fd00:10:244:1::", "prefixlen": 128, "flags": IFA_F_NODAD}


def test_ipv4_vtep_address_has_no_flags():
    assert vtep_address(ipaddress.ip_interface("10.244.1.0/32")) == {"address": "10.244.1.0", "prefixlen": 32}
