"""Nodes and pods as network namespaces without Kubernetes: the bed of the daemon's root
integration tests and of bench/pod_throughput.py (`e2e/topology.py` is the real cluster's).

Everything is done from the caller's namespace with `ip -n NS` and `nsenter --net=...` child
processes (e2e/netns.py; the caller never switches namespaces), and `close()` deletes every
namespace it made (their links go with them).

Shape: one "underlay" namespace holds a bridge per subnet and routes between them (a router);
each node's eth0 is a veth into the bridge of its subnet (wired as e2e/topology.py wires its
hosts), with that subnet's .254 as its default gateway. Nodes on the same subnet are on-link
(L2); nodes on different subnets are routed. Each node has a pod bridge `podwire0` (gateway .1
of its PodCIDR) and pods are veth-ended namespaces behind it, as the CNI plugin would make them.
Unlike e2e/topology.py it keeps no ledger: a test's `close()` in a finally is its cleanup.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
import time
from dataclasses import dataclass, field

from e2e import netns
from e2e.topology import wire

OUTSIDE_IP = "192.168.50.200"


def sh(*argv, check=True, timeout=30) -> subprocess.CompletedProcess:
    """e2e.netns.run with argv spread: the tests' idiom (`sh("ip", "-n", ns, ...)`)."""
    return netns.run(argv, check=check, timeout=timeout)


def nsexec(ns: str, *argv) -> list[str]:
    """argv run inside namespace `ns` (e2e.netns.in_netns with argv spread)."""
    return netns.in_netns(ns, argv)


def eventually(fn, timeout: float = 30.0, what: str = ""):
    """fn()'s first truthy value, polling; AssertionError naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or fn}")


@dataclass
class BedNode:
    name: str
    netns: str
    subnet: int
    index: int
    pod_cidr: ipaddress.IPv4Network
    pod_cidr6: ipaddress.IPv6Network | None = None
    pods: list = field(default_factory=list)
    pods6: list = field(default_factory=list)

    @property
    def ip(self) -> str:
        return f"192.168.{50 + self.subnet}.{self.index}"

    @property
    def ip6(self) -> str | None:
        return f"fd00:{50 + self.subnet}::{self.index}" if self.pod_cidr6 else None

    def api_object(self, mac: str | None = None) -> dict:
        """The Node as the API would send it (for Daemon tests without an API server)."""
        cidrs = [str(c) for c in (self.pod_cidr, self.pod_cidr6) if c]
        ips = [{"type": "InternalIP", "address": ip} for ip in (self.ip, self.ip6) if ip]
        return {"metadata": {"name": self.name, "resourceVersion": "1",
                             "annotations": {"podwire.io/vtep-mac": mac} if mac else {}},
                "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
                "status": {"addresses": [*ips, {"type": "Hostname", "address": self.name}]}}


class Netbed:
    def __init__(self, prefix: str = "pwd-", mtu: int = 1500, dual_stack: bool = False,
                 pod_bridge: bool = True):
        """pod_bridge=False leaves the pod bridge to the real CNI plugin."""
        self.tag = prefix + secrets.token_hex(3)
        self.mtu, self.dual_stack, self.pod_bridge = mtu, dual_stack, pod_bridge
        self.namespaces: list[str] = []
        self.nodes: list[BedNode] = []
        self.subnets: set[int] = set()
        self.underlay = self._netns("ul")
        self._forwarding(self.underlay)

    def _forwarding(self, ns: str) -> None:
        netns.sysctl(ns, "net.ipv4.ip_forward", 1)
        if self.dual_stack:
            netns.sysctl(ns, "net.ipv6.conf.all.forwarding", 1)

    def _addr(self, ns: str, cidr: str, dev: str) -> None:
        sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev, *(["nodad"] if ":" in cidr else []))

    # ---- building ----------------------------------------------------------------------
    def _netns(self, suffix: str) -> str:
        name = f"{self.tag}-{suffix}"
        netns.create_netns(name)
        self.namespaces.append(name)  # only once made: a name taken by someone else is not ours to delete
        if self.dual_stack:  # no duplicate address detection: links are usable at once
            for scope in ("all", "default"):
                netns.sysctl(name, f"net.ipv6.conf.{scope}.accept_dad", 0)
        return name

    def _subnet(self, s: int) -> None:
        if s in self.subnets:
            return
        ul = self.underlay
        sh("ip", "-n", ul, "link", "add", f"br{s}", "mtu", self.mtu, "type", "bridge")
        self._addr(ul, f"192.168.{50 + s}.254/24", f"br{s}")
        if self.dual_stack:
            self._addr(ul, f"fd00:{50 + s}::fe/64", f"br{s}")
        sh("ip", "-n", ul, "link", "set", f"br{s}", "up")
        self.subnets.add(s)

    def _plug(self, ns: str, port: str, subnet: int, address: str, address6: str | None = None) -> None:
        """veth eth0 in `ns` <-> `port` on the underlay bridge of `subnet`; default via .254."""
        self._subnet(subnet)
        wire(ns, "eth0", self.underlay, port, f"br{subnet}", f"{address}/24", mtu=self.mtu)
        sh("ip", "-n", ns, "route", "add", "default", "via", f"192.168.{50 + subnet}.254")
        if address6:
            self._addr(ns, f"{address6}/64", "eth0")
            sh("ip", "-n", ns, "-6", "route", "add", "default", "via", f"fd00:{50 + subnet}::fe")

    def add_node(self, subnet: int = 0) -> BedNode:
        i = len(self.nodes) + 1
        node = BedNode(name=f"node{i}", netns=self._netns(f"n{i}"), subnet=subnet, index=i,
                        pod_cidr=ipaddress.IPv4Network(f"10.244.{i}.0/24"),
                        pod_cidr6=ipaddress.IPv6Network(f"fd10:244:{i}::/64") if self.dual_stack else None)
        self._plug(node.netns, f"n{i}", subnet, node.ip, node.ip6)
        self._forwarding(node.netns)
        self.nodes.append(node)
        if not self.pod_bridge:
            return node
        sh("ip", "-n", node.netns, "link", "add", "podwire0", "type", "bridge")
        self._addr(node.netns, f"{node.pod_cidr.network_address + 1}/24", "podwire0")
        if node.pod_cidr6:
            self._addr(node.netns, f"{node.pod_cidr6.network_address + 1}/64", "podwire0")
        sh("ip", "-n", node.netns, "link", "set", "podwire0", "up")
        return node

    def add_pod(self, node: BedNode, mtu: int | None = None) -> tuple[str, str]:
        """A pod namespace behind the node's bridge; returns (netns, IPv4); IPv6 in node.pods6."""
        k = len(node.pods) + 1
        ns = self._netns(f"n{node.index}p{k}")
        ip = str(node.pod_cidr.network_address + 10 + k)
        host = f"vp{k}"
        mtu = mtu or self.mtu
        sh("ip", "-n", node.netns, "link", "add", host, "mtu", mtu, "type", "veth",
           "peer", "name", "eth0", "mtu", mtu, "netns", ns)
        sh("ip", "-n", node.netns, "link", "set", host, "master", "podwire0", "up")
        self._addr(ns, f"{ip}/24", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", str(node.pod_cidr.network_address + 1))
        if node.pod_cidr6:
            ip6 = str(node.pod_cidr6.network_address + 10 + k)
            self._addr(ns, f"{ip6}/64", "eth0")
            sh("ip", "-n", ns, "-6", "route", "add", "default", "via", str(node.pod_cidr6.network_address + 1))
            node.pods6.append((ns, ip6))
        node.pods.append((ns, ip))
        return ns, ip

    def add_netns(self, suffix: str) -> str:
        """An empty namespace removed with the bed (e.g. for a pod the CNI plugin wires)."""
        return self._netns(suffix)

    def add_outside(self) -> str:
        """A host on subnet 0 outside the cluster: no route to any PodCIDR."""
        ns = self._netns("out")
        self._plug(ns, "out", 0, OUTSIDE_IP)
        sh("ip", "-n", ns, "route", "del", "default")
        return ns

    # ---- probing -----------------------------------------------------------------------
    @staticmethod
    def ping(ns: str, dst: str, size: int | None = None, df: bool = False, count: int = 1) -> bool:
        argv = ["ping", "-c", count, "-W", 1, "-i", "0.2"]
        if df:
            argv += ["-M", "do"]
        if size is not None:
            argv += ["-s", size]
        return sh(*nsexec(ns, *argv, dst), check=False).returncode == 0

    def close(self) -> None:
        """Delete every namespace (killing what still runs inside); one that fails does not
        keep the others."""
        for ns in reversed(self.namespaces):
            try:
                netns.delete_netns(ns)
            except netns.CommandError:
                pass
        self.namespaces.clear()
