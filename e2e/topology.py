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

`plan()` is pure (addresses and wiring); `Topology.up()` applies it, recording every
namespace in the ledger, so teardown — also after a failure half-way — removes them all.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
from pathlib import Path

from e2e import netns as ns
from e2e.ledger import Ledger, UpDown

SHAPES = ("l2", "routed")
SUBNETS = {
    "l2": [ipaddress.ip_network("172.30.0.0/24")],
    "routed": [ipaddress.ip_network("172.30.1.0/24"), ipaddress.ip_network("172.30.2.0/24")],
}
CP_HOST_INDEX, OUTSIDE_HOST_INDEX, NODE_BASE_INDEX = 2, 100, 10


# -- the pure plan -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostPlan:
    name: str  # short name: "cp", "node1", "outside"
    role: str  # "control-plane" | "node" | "outside"
    subnet: int  # index into the shape's subnets (= index of its bridge)
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address


@dataclasses.dataclass(frozen=True)
class TopologyPlan:
    cluster: str
    shape: str
    subnets: tuple[ipaddress.IPv4Network, ...]
    hosts: tuple[HostPlan, ...]

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

    def gateway(self, subnet: int) -> ipaddress.IPv4Interface:
        net = self.subnets[subnet]
        return ipaddress.IPv4Interface(f"{net[1]}/{net.prefixlen}")


def plan(cluster: str, shape: str = "l2", nodes: int = 3) -> TopologyPlan:
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, not {shape!r}")
    if not (1 <= nodes <= 80):
        raise ValueError("between 1 and 80 nodes")
    subnets = SUBNETS[shape]

    def host(name, role, subnet, index):
        net = subnets[subnet]
        return HostPlan(name, role, subnet, ipaddress.IPv4Interface(f"{net[index]}/{net.prefixlen}"), net[1])

    hosts = [host("cp", "control-plane", 0, CP_HOST_INDEX)]
    hosts += [host(f"node{i}", "node", (i - 1) % len(subnets), NODE_BASE_INDEX + i) for i in range(1, nodes + 1)]
    hosts.append(host("outside", "outside", len(subnets) - 1, OUTSIDE_HOST_INDEX))
    return TopologyPlan(cluster, shape, tuple(subnets), tuple(hosts))


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


# -- applying the plan -------------------------------------------------------------------


def wire(netns: str, ifname: str, underlay: str, peer: str, bridge: str, address, mtu: int | None = None) -> None:
    """A veth `ifname` (up, with `address`) in `netns`, its peer `peer` enslaved to `bridge` in
    the `underlay` namespace. Also e2e/netbed.py's node wiring."""
    assert len(peer) <= 15, peer
    mtu_args = ["mtu", mtu] if mtu else []
    ns.run(["ip", "-n", netns, "link", "add", ifname, *mtu_args, "type", "veth",
            "peer", "name", peer, *mtu_args, "netns", underlay])
    ns.run(["ip", "-n", netns, "addr", "add", str(address), "dev", ifname])
    ns.run(["ip", "-n", netns, "link", "set", ifname, "up"])
    ns.run(["ip", "-n", underlay, "link", "set", peer, "master", bridge, "up"])


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
            ns.sysctl(p.router_netns, "net.ipv4.ip_forward", 1)
            for i, _ in enumerate(p.subnets):
                self._wire(p.router_netns, f"eth{i}", f"r-{i}", i, p.gateway(i))
        else:
            ns.run(["ip", "-n", under, "addr", "add", str(p.gateway(0)), "dev", p.bridge(0)])
        for host in self.hosts.values():
            host.dir.mkdir(parents=True, exist_ok=True)
            self._netns(host.netns)
            self._wire(host.netns, "eth0", f"v-{host.name}", host.plan.subnet, host.plan.address)
            ns.run(["ip", "-n", host.netns, "route", "add", "default", "via", str(host.plan.gateway)])
            if isinstance(host, Node):
                ns.sysctl(host.netns, "net.ipv4.ip_forward", 1)
        return self

    def _wire(self, netns: str, ifname: str, peer: str, subnet: int, address) -> None:
        wire(netns, ifname, self.plan.underlay_netns, peer, self.plan.bridge(subnet), address)

    def down(self) -> list[str]:
        """Remove everything (when the topology owns its ledger); returns teardown errors."""
        if self.own_ledger:
            return self.ledger.teardown()
        return []

