"""The harness's upstream resolver: what a kind node's /etc/resolv.conf leads to.

Why it is built so: kubeadm's CoreDNS ends in `forward . /etc/resolv.conf`, and its pods
(dnsPolicy Default) get the node's resolv.conf, which names the underlay gateway (in kind:
Docker's embedded DNS at the node network's gateway, which asks the host's resolver). The
machines here reach no DNS server, and the harness must never lead pods outside its own
namespaces, so a CoreDNS process (the built binary) listens on the gateway address inside the
namespace that holds it (the underlay in the l2 shape, the router in the routed one) and
stands in for the internet's DNS: it answers from a fixed zone and NXDOMAIN for anything else.

The zone holds what upstream e2e tests expect "the internet" to answer and nothing more:
`dns.google` <-> 8.8.8.8 (the DNS configMap PTR test checks 8.8.8.8's PTR through the cluster
DNS before it points CoreDNS elsewhere). A test that really needs the internet must still fail.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from e2e import netns as ns

# address -> names; a hosts entry also answers the address's PTR with its first name
RECORDS: dict[str, tuple[str, ...]] = {
    "8.8.8.8": ("dns.google",),
    "8.8.4.4": ("dns.google",),
}


def corefile(listen: list, records: dict[str, tuple[str, ...]] = RECORDS) -> str:
    """The upstream's Corefile, bound to `listen` only (the namespace may hold more than the
    gateway). The names of `records` and their addresses' reverse zones (/8 each) are served from
    a hosts table (A and PTR); any other name is NXDOMAIN, as the internet answers a name that
    does not exist. Two server blocks because `template` runs before `hosts` in one. Pure."""
    if not listen:
        raise ValueError("no address to listen on")
    bind = "    bind " + " ".join(str(ipaddress.ip_address(a)) for a in listen) + "\n"
    zones, lines = [], []
    for address, names in records.items():
        ip = ipaddress.IPv4Address(address)
        for name in names:
            if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", name):
                raise ValueError(f"bad name {name!r}")
            zones.append(f"{name}.")
        zones.append(f"{str(ip).split('.')[0]}.in-addr.arpa.")
        lines.append(f"        {ip} {' '.join(names)}\n")
    served = " ".join(f"{z}:53" for z in dict.fromkeys(zones))
    return (".:53 {\n" + bind + "    errors\n    template ANY ANY {\n        rcode NXDOMAIN\n    }\n}\n"
            + served + " {\n" + bind + "    errors\n    hosts {\n" + "".join(lines) + "    }\n}\n")


def gateway_netns(plan) -> str:
    """The namespace that holds the hosts' gateway addresses."""
    return plan.router_netns or plan.underlay_netns


def gateways(plan) -> list:
    """Every gateway address a host has (one per subnet and family), IPv4 first, in subnet order."""
    return sorted({g for h in plan.hosts for g in h.gateways}, key=lambda g: (g.version, int(g)))


def start(topology, coredns_bin: Path, directory: Path) -> ns.Proc:
    """CoreDNS on the gateway addresses, stopped at teardown (recorded in the ledger first)."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "Corefile"
    conf.write_text(corefile(gateways(topology.plan)))
    argv = ns.in_netns(gateway_netns(topology.plan), [coredns_bin, "-conf", conf])
    proc = ns.spawn("upstream-dns", argv, directory / "upstream-dns.log")
    topology.ledger.proc(proc)
    return proc
