"""Egress masquerade: pod traffic leaving the cluster takes the node's address; nothing else does.

Our own tables (`ip podwire-egress`, `ip6 podwire-egress`), nothing else touched. The ruleset is a
handful of lines and a set of node IPs, so each change replaces the tables whole in one `nft -f`
transaction (add + delete + define: atomic, and it works whether or not the table existed);
the daemon only sends it when the rendered text changed, or on the periodic resync to repair drift.
Pod -> pod keeps its source (cluster CIDRs are exempt), and so does pod -> node: every node's
InternalIP is in a set that is exempt too (flannel masquerades the latter; we don't need to).
"""

from __future__ import annotations

import ipaddress
import re

from netkit import nft

from .model import IPAddress, IPNetwork

TABLE = "podwire-egress"
_FAMILIES = {4: ("ip", "ipv4_addr", "224.0.0.0/4"), 6: ("ip6", "ipv6_addr", "ff00::/8")}


class EgressError(RuntimeError):
    pass


# Belt and braces: the inputs are typed (node_daemon.model, config), and this refuses anything
# else rather than let nft read it: an ipaddress object still prints an IPv6 zone index ("%...").
_ELEMENT = re.compile(r"[0-9a-f.:/]{2,43}")
_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network)


def _family(values, version: int) -> set:
    for v in values:
        if not isinstance(v, _TYPES) or not _ELEMENT.fullmatch(str(v)):
            raise EgressError(f"refusing {v!r:.100} as an element of the egress ruleset")
    return {v for v in values if v.version == version}


def render(cluster_cidrs: list[IPNetwork], node_ips: list[IPAddress]) -> str:
    """One transaction defining a table per family that has a cluster CIDR, removing the others."""
    lines = []
    for version, (family, addr_type, multicast) in _FAMILIES.items():
        lines += [f"add table {family} {TABLE}", f"delete table {family} {TABLE}"]
        cidrs = sorted(str(c) for c in _family(cluster_cidrs, version))
        if not cidrs:
            continue
        ips = [str(ip) for ip in sorted(_family(node_ips, version))]
        lines += [
            f"table {family} {TABLE} {{",
            "\tset cluster-cidrs {",
            f"\t\ttype {addr_type}",
            "\t\tflags interval",
            f"\t\telements = {{ {', '.join(cidrs)} }}",
            "\t}",
            "\tset node-ips {",
            f"\t\ttype {addr_type}",
            *([f"\t\telements = {{ {', '.join(ips)} }}"] if ips else []),
            "\t}",
            "\tchain postrouting {",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;",
            f"\t\t{family} saddr != @cluster-cidrs return",
            f"\t\t{family} daddr @cluster-cidrs return",
            f"\t\t{family} daddr @node-ips return",
            f"\t\t{family} daddr {multicast} return",
            "\t\tmasquerade fully-random",
            "\t}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def render_delete() -> str:
    """Both families' tables deleted if present (`add` first: no error when one is absent)."""
    return "".join(f"add table {family} {TABLE}\ndelete table {family} {TABLE}\n"
                   for family, _, _ in _FAMILIES.values())


def cleanup(cfg=None, netns_path: str | None = None) -> None:
    """Egress masquerade is switched off (node_daemon.features calls this at start): delete the
    tables an earlier run left, so pods stop being masqueraded."""
    NftRunner(netns_path).apply(render_delete())


class NftRunner(nft.NftRunner):
    """netkit's runner; a refusal is an EgressError (what the daemon's sync reports)."""

    def apply(self, text: str) -> None:
        try:
            super().apply(text)
        except nft.NftError as e:
            raise EgressError(f"nft -f failed: {e}") from None
