"""Egress ruleset: golden text, and a packet-flow table evaluated against the rendered rules."""

import ipaddress as ipa
import re

import pytest

from node_daemon.egress import render

CIDRS = [ipa.ip_network("10.244.0.0/16"), ipa.ip_network("fd10:244::/56")]
NODES = [ipa.ip_address(a) for a in ("192.168.1.2", "192.168.1.1", "fd00::1")]

GOLDEN_V4 = """\
add table ip podwire-egress
delete table ip podwire-egress
table ip podwire-egress {
\tset cluster-cidrs {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.244.0.0/16 }
\t}
\tset node-ips {
\t\ttype ipv4_addr
\t\telements = { 192.168.1.1, 192.168.1.2 }
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr != @cluster-cidrs return
\t\tip daddr @cluster-cidrs return
\t\tip daddr @node-ips return
\t\tip daddr 224.0.0.0/4 return
\t\tmasquerade fully-random
\t}
}
add table ip6 podwire-egress
delete table ip6 podwire-egress
"""


def test_golden_ipv4_only():
    assert render(CIDRS[:1], NODES) == GOLDEN_V4


def test_dual_stack_defines_both_and_no_cidrs_removes_both():
    text = render(CIDRS, NODES)
    assert "table ip podwire-egress {" in text and "table ip6 podwire-egress {" in text
    assert "elements = { fd10:244::/56 }" in text and "elements = { fd00::1 }" in text
    assert render([], NODES).splitlines() == [
        "add table ip podwire-egress", "delete table ip podwire-egress",
        "add table ip6 podwire-egress", "delete table ip6 podwire-egress"]


def evaluate(text: str, src: str, dst: str) -> str:
    """A tiny interpreter for the rule shapes render() emits: 'masquerade' or 'accept'."""
    s, d = ipa.ip_address(src), ipa.ip_address(dst)
    family = "ip" if s.version == 4 else "ip6"
    body = re.search(rf"table {family} podwire-egress {{(.*?)\n}}", text, re.S).group(1)
    sets = {name: [ipa.ip_network(e) for e in elems.split(", ")]
            for name, elems in re.findall(r"set (\S+) {[^}]*?elements = { ([^}]*) }", body)}
    sets.setdefault("node-ips", [])
    chain = body.split("chain postrouting {")[1]
    for rule in [r.strip() for r in chain.splitlines()[2:]]:
        if rule.startswith("masquerade"):
            return "masquerade"
        m = re.match(rf"{family} (saddr|daddr) (!= )?(\S+) return", rule)
        if not m:
            continue
        addr = s if m.group(1) == "saddr" else d
        nets = sets[m.group(3)[1:]] if m.group(3).startswith("@") else [ipa.ip_network(m.group(3))]
        hit = any(addr in n for n in nets)
        if hit != bool(m.group(2)):
            return "accept"
    return "accept"


@pytest.mark.parametrize("src,dst,verdict", [
    ("10.244.1.5", "8.8.8.8", "masquerade"),          # pod -> outside
    ("10.244.1.5", "10.244.2.7", "accept"),           # pod -> pod keeps its source
    ("10.244.1.5", "192.168.1.2", "accept"),          # pod -> node keeps its source
    ("10.244.1.5", "192.168.1.3", "masquerade"),      # not a node: outside
    ("10.244.1.5", "239.1.1.1", "accept"),            # multicast
    ("192.168.1.1", "8.8.8.8", "accept"),             # the node's own traffic
    ("fd10:244::5", "2001:db8::1", "masquerade"),
    ("fd10:244::5", "fd10:244:0:1::9", "accept"),
    ("fd10:244::5", "fd00::1", "accept"),
])
def test_packet_flows(src, dst, verdict):
    assert evaluate(render(CIDRS, NODES), src, dst) == verdict
