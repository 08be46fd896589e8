"""Machines of a test cluster as network namespaces on an underlay — what kind does with
containers on a Docker bridge, done with namespaces.

Two shapes:

* ``l2``: every host's ``eth0`` is a veth whose peer is enslaved to one bridge ``br0`` in an
  *underlay* namespace. The bridge also carries the gateway address (.1) so hosts have a
  default route (a ClusterIP needs *some* route before kube-proxy's DNAT applies).
* ``routed``: two subnets (two bridges in the underlay namespace) joined by a *router*
  namespace with forwarding on. The router knows no pod routes, so pods on nodes of
  different subnets only reach each other through an overlay.

Hosts: ``cp`` (the control-plane host, on the first subnet), ``node1..N`` (alternating
between the subnets in the routed shape), ``outside`` (a client outside the cluster, on the
last subnet). Each host is a `Host` (or `Node`) with its own netns named
``pwe-<cluster>-<host>``; the root namespace gets no links, routes or addresses.

Families (``ipv4``, ``ipv6``, ``dual``): every subnet has an IPv6 twin, ``fd00:172:30:N::/64``
for ``172.30.N.0/24``, and a host's IPv6 address reads like its IPv4 one (``172.30.1.11`` is
``fd00:172:30:1::11``). A host's `address` and `gateway` are its primary family's (IPv4 unless
ipv6-only); `addresses` and `gateways` hold every family's, primary first.

`plan()` is pure (addresses and wiring); `Topology.up()` applies it, recording every
namespace in the ledger, so teardown — also after a failure half-way — removes them all.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
from pathlib import Path
from typing import Any, Union

from e2e import netns as ns
from e2e.ledger import Ledger, UpDown

SHAPES = ("l2", "routed")
FAMILIES = ("ipv4", "ipv6", "dual")
SUBNETS = {
    "l2": [ipaddress.ip_network("172.30.0.0/24")],
    "routed": [ipaddress.ip_network("172.30.1.0/24"), ipaddress.ip_network("172.30.2.0/24")],
}
CP_HOST_INDEX, OUTSIDE_HOST_INDEX, NODE_BASE_INDEX = 2, 100, 10

Interface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def ipv6_twin(net: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    """172.30.N.0/24 -> fd00:172:30:N::/64 (the octets written as hex digits read the same)."""
    a, b, c, _ = str(net.network_address).split(".")
    return ipaddress.IPv6Network(f"fd00:{a}:{b}:{c}::/64")


def host_address(net: Network, index: int) -> Interface:
    """The index-th host of a subnet: 172.30.1.11/24, or fd00:172:30:1::11/64 (index written in
    decimal digits, read as hex, so it matches the IPv4 address by eye)."""
    if net.version == 4:
        return ipaddress.ip_interface(f"{net[index]}/{net.prefixlen}")
    return ipaddress.ip_interface(f"{net.network_address + int(str(index), 16)}/{net.prefixlen}")


def family_versions(family: str) -> tuple[int, ...]:
    """The IP versions of a family choice, primary first (dual: IPv4 primary, as kind's)."""
    if family not in FAMILIES:
        raise ValueError(f"ip family must be one of {FAMILIES}, not {family!r}")
    return {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}[family]


# -- the pure plan -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostPlan:
    name: str  # short name: "cp", "node1", "outside"
    role: str  # "control-plane" | "node" | "outside"
    subnet: int  # index into the shape's subnets (= index of its bridge)
    address: Any  # Interface of the primary family (typed Any: IPv4-only callers read .ip as IPv4)
    gateway: Any  # Address of the primary family
    addresses: tuple = ()  # every family's Interface, primary first (empty: `address` alone)
    gateways: tuple = ()

    def __post_init__(self):
        if not self.addresses:
            object.__setattr__(self, "addresses", (self.address,))
            object.__setattr__(self, "gateways", (self.gateway,))


@dataclasses.dataclass(frozen=True)
class TopologyPlan:
    cluster: str
    shape: str
    subnets: tuple  # the primary family's subnets, by bridge index
    hosts: tuple[HostPlan, ...]
    family: str = "ipv4"

    @property
    def versions(self) -> tuple[int, ...]:
        return family_versions(self.family)

    def subnets_of(self, subnet: int) -> tuple:
        """Every family's subnet of bridge `subnet`, primary first."""
        v4 = SUBNETS[self.shape][subnet]
        return tuple(v4 if v == 4 else ipv6_twin(v4) for v in self.versions)

    def netns(self, host: str) -> str:
        return f"pwe-{self.cluster}-{host}"

    @property
    def underlay_netns(self) -> str:
        return self.netns("underlay")

    @property
    def router_netns(self) -> str | None:
        return self.netns("router") if self.shape == "routed" else None

    def bridge(self, subnet: int) -> str:
        return f"br{subnet}"

    def gateway(self, subnet: int):
        """The primary family's gateway interface of bridge `subnet` (on the router or the bridge)."""
        return self.gateways(subnet)[0]

    def gateways(self, subnet: int) -> tuple:
        return tuple(host_address(net, 1) for net in self.subnets_of(subnet))


def plan(cluster: str, shape: str = "l2", nodes: int = 3, family: str = "ipv4") -> TopologyPlan:
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, not {shape!r}")
    if not (1 <= nodes <= 80):
        raise ValueError("between 1 and 80 nodes")
    versions = family_versions(family)
    subnets = SUBNETS[shape]

    def host(name, role, subnet, index):
        nets = [subnets[subnet] if v == 4 else ipv6_twin(subnets[subnet]) for v in versions]
        addresses = tuple(host_address(net, index) for net in nets)
        gateways = tuple(host_address(net, 1).ip for net in nets)
        return HostPlan(name, role, subnet, addresses[0], gateways[0], addresses, gateways)

    hosts = [host("cp", "control-plane", 0, CP_HOST_INDEX)]
    hosts += [host(f"node{i}", "node", (i - 1) % len(subnets), NODE_BASE_INDEX + i) for i in range(1, nodes + 1)]
    hosts.append(host("outside", "outside", len(subnets) - 1, OUTSIDE_HOST_INDEX))
    primary = tuple(n if versions[0] == 4 else ipv6_twin(n) for n in subnets)
    return TopologyPlan(cluster, shape, primary, tuple(hosts), family)


# -- hosts -------------------------------------------------------------------------------


@dataclasses.dataclass
class Host:
    """A machine on the underlay: a network namespace whose `eth0` has `address`."""

    plan: HostPlan
    netns: str
    dir: Path  # per-host state directory (logs, later kubelet/containerd roots)
    ledger: Ledger

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def ip(self) -> ipaddress.IPv4Address:
        return self.plan.address.ip

    @property
    def ips(self) -> tuple:
        """Every family's address, primary first."""
        return tuple(a.ip for a in self.plan.addresses)

    def argv(self, argv) -> list[str]:
        """argv wrapped to run inside this host's network namespace."""
        return ns.in_netns(self.netns, argv)

    def run(self, argv, **kw) -> subprocess.CompletedProcess:
        return ns.run(self.argv(argv), **kw)

    def spawn(self, name: str, argv, *, env=None, pass_fds=()) -> ns.Proc:
        """Start a daemon inside this host; it is stopped at teardown (ledger)."""
        proc = ns.spawn(name, self.argv(argv), self.dir / "logs" / f"{name}.log", env=env, pass_fds=pass_fds)
        self.ledger.proc(proc)
        return proc

    def ping(self, address, count: int = 1, timeout: int = 2) -> bool:
        return self.run(["ping", "-n", "-q", "-c", count, "-W", timeout, address], check=False).returncode == 0


@dataclasses.dataclass
class Node(Host):
    """A Kubernetes node. `pod_cidr` is filled in once the controller-manager assigned it.

    A later kubelet/containerd is just more `spawn()`s in this host with roots under
    `dir`; nothing here assumes the Node object was registered by the harness.
    """

    pod_cidr: ipaddress.IPv4Network | None = None
    pod_cidrs: tuple = ()  # every family's podCIDR, primary first (pod_cidr is the first)


# -- applying the plan -------------------------------------------------------------------


def add_address(netns: str, ifname: str, address) -> None:
    """An address on a link; IPv6 without duplicate address detection (a fresh namespace's
    addresses would be tentative, unusable, for a second or two; nothing else uses them)."""
    nodad = ["nodad"] if ipaddress.ip_interface(str(address)).version == 6 else []
    ns.run(["ip", "-n", netns, "addr", "add", str(address), "dev", ifname, *nodad])


def wire(netns: str, ifname: str, underlay: str, peer: str, bridge: str, address, mtu: int | None = None) -> None:
    """A veth `ifname` (up, with `address`: one, or a tuple of one per family) in `netns`, its peer
    `peer` enslaved to `bridge` in the `underlay` namespace. Also e2e/netbed.py's node wiring."""
    assert len(peer) <= 15, peer
    mtu_args = ["mtu", mtu] if mtu else []
    ns.run(["ip", "-n", netns, "link", "add", ifname, *mtu_args, "type", "veth",
            "peer", "name", peer, *mtu_args, "netns", underlay])
    for a in address if isinstance(address, tuple) else (address,):
        add_address(netns, ifname, a)
    ns.run(["ip", "-n", netns, "link", "set", ifname, "up"])
    ns.run(["ip", "-n", underlay, "link", "set", peer, "master", bridge, "up"])


FORWARDING = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}  # per namespace


class Topology(UpDown):
    """Context manager: creates the namespaces and links of a plan, removes them on exit."""
    teardown_error = RuntimeError
    what = "topology teardown"

    def __init__(self, plan_: TopologyPlan, directory: Path, ledger: Ledger | None = None):
        self.plan = plan_
        self.dir = Path(directory)
        self.own_ledger = ledger is None
        self.ledger = ledger or Ledger(self.dir / "ledger.json")
        self.hosts: dict[str, Host] = {}
        for hp in plan_.hosts:
            cls = Node if hp.role == "node" else Host
            self.hosts[hp.name] = cls(hp, plan_.netns(hp.name), self.dir / "hosts" / hp.name, self.ledger)

    # convenient views
    @property
    def cp(self) -> Host:
        return self.hosts["cp"]

    @property
    def outside(self) -> Host:
        return self.hosts["outside"]

    @property
    def nodes(self) -> list[Node]:
        return [h for h in self.hosts.values() if isinstance(h, Node)]

    def node(self, name: str) -> Node:
        host = self.hosts[name]
        assert isinstance(host, Node)
        return host

    def _netns(self, name: str) -> None:
        self.ledger.netns(name)  # recorded first: a half-made namespace is still removed
        ns.create_netns(name)
        if 6 in self.plan.versions:
            # no duplicate address detection for the harness's own links: their link-local addresses,
            # which NDP answers come from, would be tentative for a second after every link comes up.
            # A node gets the real-host default back once its eth0 is wired (see up()).
            for scope in ("all", "default"):
                ns.sysctl(name, f"net.ipv6.conf.{scope}.accept_dad", 0)

    def up(self) -> "Topology":
        p = self.plan
        if self.own_ledger:
            self.ledger.dir(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        under = p.underlay_netns
        self._netns(under)
        for i, _ in enumerate(p.subnets):
            br = p.bridge(i)
            ns.run(["ip", "-n", under, "link", "add", br, "type", "bridge"])
            ns.run(["ip", "-n", under, "link", "set", br, "up"])
        if p.router_netns:
            self._netns(p.router_netns)
            for v in p.versions:
                ns.sysctl(p.router_netns, FORWARDING[v], 1)
            for i, _ in enumerate(p.subnets):
                self._wire(p.router_netns, f"eth{i}", f"r-{i}", i, p.gateways(i))
        else:
            for gw in p.gateways(0):
                add_address(under, p.bridge(0), gw)
        for host in self.hosts.values():
            host.dir.mkdir(parents=True, exist_ok=True)
            self._netns(host.netns)
            self._wire(host.netns, "eth0", f"v-{host.name}", host.plan.subnet, host.plan.addresses)
            for gw in host.plan.gateways:
                ns.run(["ip", "-n", host.netns, f"-{gw.version}", "route", "add", "default", "via", str(gw)])
            if isinstance(host, Node):
                for v in p.versions:
                    ns.sysctl(host.netns, FORWARDING[v], 1)
                if 6 in p.versions:  # links podwire makes later (bridge, VXLAN, veths) do DAD, as on a host
                    ns.sysctl(host.netns, "net.ipv6.conf.default.accept_dad", 1)
        return self

    def _wire(self, netns: str, ifname: str, peer: str, subnet: int, address) -> None:
        wire(netns, ifname, self.plan.underlay_netns, peer, self.plan.bridge(subnet), address)

    def down(self) -> list[str]:
        """Remove everything (when the topology owns its ledger); returns teardown errors."""
        if self.own_ledger:
            return self.ledger.teardown()
        return []

