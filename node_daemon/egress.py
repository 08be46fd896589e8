"""Egress masquerade: pod traffic leaving the cluster takes the node's address; nothing else does.

Our own tables (`ip podwire-egress`, `ip6 podwire-egress`), nothing else touched. The ruleset is a
handful of lines and a set of node IPs, so each change replaces the tables whole in one `nft -f`
transaction (add + delete + define: atomic, and it works whether or not the table existed);
the daemon only sends it when the rendered text changed, or on the periodic resync to repair drift.
Pod -> pod keeps its source (cluster CIDRs are exempt), and so does pod -> node: every node's
InternalIP is in a set that is exempt too (flannel masquerades the latter; we don't need to).
"""

from __future__ import annotations

from dataclasses import dataclass

from netkit import nft

from .model import IPAddress, IPNetwork

TABLE = "podwire-egress"
_FAMILIES = {4: ("ip", "ipv4_addr", "224.0.0.0/4"), 6: ("ip6", "ipv6_addr", "ff00::/8")}


class EgressError(RuntimeError):
    pass


def render(cluster_cidrs: list[IPNetwork], node_ips: list[IPAddress]) -> str:
    """One transaction defining a table per family that has a cluster CIDR, removing the others."""
    lines = []
    for version, (family, addr_type, multicast) in _FAMILIES.items():
        lines += [f"add table {family} {TABLE}", f"delete table {family} {TABLE}"]
        cidrs = sorted(str(c) for c in cluster_cidrs if c.version == version)
        if not cidrs:
            continue
        ips = sorted({ip for ip in node_ips if ip.version == version})
        lines += [
            f"table {family} {TABLE} {{",
            "\tset cluster-cidrs {",
            f"\t\ttype {addr_type}",
            "\t\tflags interval",
            f"\t\telements = {{ {', '.join(cidrs)} }}",
            "\t}",
            "\tset node-ips {",
            f"\t\ttype {addr_type}",
            *([f"\t\telements = {{ {', '.join(map(str, ips))} }}"] if ips else []),
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


@dataclass
class NftRunner:
    """Applies a transaction with the project's one nft edge; `netns_path` lets tests aim at a
    node namespace (the daemon itself runs inside its node's namespace and leaves it None)."""

    netns_path: str | None = None

    def apply(self, text: str) -> None:
        try:
            nft.apply(text, self.netns_path)
        except nft.NftError as e:
            raise EgressError(f"nft -f failed: {e}") from None
