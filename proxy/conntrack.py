"""Which UDP conntrack entries go stale after a sync, and an edge that deletes them.

UDP has no connection end, so a conntrack entry keeps sending a client's datagrams to
the endpoint it was first DNATed to (or, when the Service had no endpoints, keeps them
un-NATed) until it idles out: a black hole after every endpoint change. Two cases, as in
kube-proxy; we never flush everything (that would cut every healthy UDP flow too):
  * an endpoint left a service port -> entries from that port's frontends to that endpoint;
  * a service port went from 0 to N endpoints -> entries to its frontends (they were
    rejected or never NATed).
The edge asks the kernel over ctnetlink for the entries each filter matches and deletes them by
tuple in one batch (netkit.conntrack), where it ran a `conntrack -D` process per filter.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from netkit import conntrack as ctnl
from proxy.plan import DesiredState, PortPlan


@dataclass(frozen=True)
class Flush:
    """One `conntrack -D` filter. dst None: any destination (NodePorts on any local address)."""
    family: int
    dst: str | None
    dport: int
    endpoint: tuple[str, int] | None = None  # None: whatever it was NATed to

    def filter(self) -> ctnl.Filter:
        """As a netlink listing filter: UDP to `dst` (any when None) port `dport`, and with
        `endpoint`, DNATed to it (the reply comes from the endpoint)."""
        ip = ipaddress.ip_address
        return ctnl.Filter(self.family, ctnl.UDP, ip(self.dst) if self.dst else None, self.dport,
                           ip(self.endpoint[0]) if self.endpoint else None,
                           self.endpoint[1] if self.endpoint else None)


def _frontends(pp: PortPlan) -> list[tuple[str | None, int]]:
    fronts: list[tuple[str | None, int]] = [(str(pp.cluster_ip), pp.port)]
    fronts += [(str(ip), pp.port) for ip in pp.external_ips]
    if pp.node_port:
        fronts.append((None, pp.node_port))
    return fronts


def stale_flows(old: DesiredState | None, new: DesiredState) -> list[Flush]:
    """The deletions a sync from `old` to `new` calls for (pure)."""
    if old is None:
        return []  # first sync: keep existing flows (a restart must not cut them)
    keys = new.changed_since(old)
    before = {k: p for key in keys if key in old.fragments for k, p in old.fragments[key].ports.items()}
    after = {k: p for key in keys if key in new.fragments for k, p in new.fragments[key].ports.items()}
    out: list[Flush] = []
    for k, pp in after.items():
        if pp.protocol != "UDP":
            continue
        was = before.get(k)
        old_eps: frozenset = was.endpoints if was else frozenset()
        if pp.endpoints and not old_eps:
            out += [Flush(new.family, dst, port) for dst, port in _frontends(pp)]
    for k, was in before.items():
        if was.protocol != "UDP":
            continue
        now = after.get(k)
        gone = was.endpoints - (now.endpoints if now else frozenset())
        for ip, port in sorted(gone):
            out += [Flush(new.family, dst, fport, (str(ip), port)) for dst, fport in _frontends(was)]
    return sorted(set(out), key=lambda f: (f.dst or "", f.dport, f.endpoint or ("", 0)))


class ConntrackRunner:
    """Deletes the entries the filters match, in our netns or `netns_path`'s: one filtered
    ctnetlink dump per filter, one batch of deletions by tuple. Returns errors, never raises."""

    def __init__(self, netns_path: str | None = None):
        self.netns_path = netns_path
        self.deleted = 0  # entries deleted by the last call

    def delete(self, flushes: Iterable[Flush]) -> list[str]:
        self.deleted = 0
        fs = list(flushes)
        if not fs:
            return []
        try:
            doomed = [e.orig for e in ctnl.find([f.filter() for f in fs], self.netns_path)]
            self.deleted = ctnl.delete(doomed, self.netns_path) if doomed else 0
        except (OSError, ValueError) as e:
            return [f"UDP conntrack entries of {len(fs)} filters: {e}"]
        return []
