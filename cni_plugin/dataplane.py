"""Applying a PodPlan to the kernel (and taking it away) through netkit's batched rtnetlink.

What the plugin touches on the node is only ever named by us (the `pw…` host veth) or checked first:
the bridge must be a bridge whose addresses agree with the config, and the pod's namespace must be a
network namespace other than the node's.
"""

from __future__ import annotations

import errno
import os
import zlib

from cni_plugin.errors import INVALID_ENV, IO_FAILURE, STATE_DRIFT, UNKNOWN_CONTAINER, CNIError, invalid_config
from cni_plugin.plan import PodPlan, route_gateway
from cni_plugin.result import Interface
from ipam import addr
from netkit import netns, rtnl

LOOPBACK_IFINDEX = 1


def open_pod_netns(path: str) -> int:
    """An fd on the pod's network namespace, for ADD and CHECK (DEL: `teardown`)."""
    try:
        fd = netns.open_netns(path)
    except FileNotFoundError:
        raise CNIError(UNKNOWN_CONTAINER, f"network namespace {path} does not exist") from None
    except netns.NotANetns as e:
        raise CNIError(INVALID_ENV, f"CNI_NETNS: {e}") from None
    except OSError as e:
        raise CNIError(UNKNOWN_CONTAINER, f"cannot open network namespace {path}: {e.strerror}") from None
    if netns.is_host_netns(fd):
        os.close(fd)
        raise CNIError(INVALID_ENV, f"CNI_NETNS {path} is the node's own network namespace, not a pod's")
    return fd


def pod_socket(netns_fd: int) -> rtnl.RtnlSocket:
    """A netlink socket bound to the pod's namespace (it keeps it after we switch back)."""
    with netns.entered(netns_fd):
        return rtnl.RtnlSocket()


def assert_absent(pod: rtnl.RtnlSocket, ifname: str, netns_path: str) -> None:
    if pod.link(ifname) is not None:
        raise CNIError(UNKNOWN_CONTAINER, f"interface {ifname} already exists in {netns_path}")


def bridge_mac(plan: PodPlan) -> bytes:
    """The MAC the bridge is created with, locally administered (0a:58:…) and stable: the IPv4 gateway's
    four bytes (unique per node, as each node has its own range), else a hash of the IPv6 gateway or of
    the bridge's name. Stable also lets ADD tell a bridge we created from one we did not."""
    for cidr in plan.bridge_addrs:
        ip = cidr.split("/")[0]
        if ":" not in ip:
            return b"\x0a\x58" + bytes(int(x) for x in ip.split("."))
    key = plan.bridge_addrs[0] if plan.bridge_addrs else plan.bridge
    return b"\x0a\x58" + zlib.crc32(key.encode()).to_bytes(4, "big")


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def ensure_bridge(host: rtnl.RtnlSocket, plan: PodPlan) -> rtnl.Link:
    """The bridge, up and carrying the gateways. A link of that name that is not a bridge, or a bridge with
    another address in a gateway's subnet, is refused before anything is changed."""
    br = host.link(plan.bridge)
    if br is None:
        # EEXIST is fine: a parallel ADD created it first (checked below like any existing link)
        host.batch().new_bridge(plan.bridge, plan.mtu, bridge_mac(plan), plan.bridge_netfilter).commit()
        br = host.link(plan.bridge)
        if br is None:
            raise CNIError(IO_FAILURE, f"bridge {plan.bridge} vanished right after it was created")
    if br.kind != "bridge":
        what = f"of kind {br.kind}" if br.kind else "without a link kind (loopback or a physical device)"
        raise invalid_config(f"'bridge' names {plan.bridge}, an existing link "
                                       f"{what}, not a bridge; refusing to touch it")
    missing = _missing_gateways(host, br, plan)
    b = host.batch()
    if not br.up:
        b.set_up(br.index, plan.bridge)
    for cidr in missing:
        b.new_addr(br.index, cidr, tolerate_exists=True)  # a parallel ADD may add it first
    b.commit()
    if plan.forward_v4:
        netns.write_sysctl("net/ipv4/ip_forward", "1")
    if plan.forward_v6:
        netns.write_sysctl("net/ipv6/conf/all/forwarding", "1")
    return br


def _missing_gateways(host: rtnl.RtnlSocket, br: rtnl.Link, plan: PodPlan) -> list[str]:
    """The gateway addresses the bridge lacks. An address in a gateway's subnet that is not that gateway
    is refused, as the reference plugin does ("already has an IP address different from"): pods would
    get a gateway the node does not answer for, or IPAM could hand that address to a pod. Addresses of
    other subnets stay allowed (several ranges, several networks on one bridge)."""
    if not plan.bridge_addrs:
        return []
    want = [addr.ip_interface(c) for c in plan.bridge_addrs]
    families = {w.version for w in want}
    family = rtnl.AF_UNSPEC if len(families) == 2 else rtnl.AF_INET if 4 in families else rtnl.AF_INET6
    live = [addr.ip_interface(f"{a.address}/{a.prefixlen}") for a in host.addrs(br.index, family)]
    for a in live:
        if a in want:
            continue
        for w in want:
            if a.version == w.version and a.network.overlaps(w.network):
                raise invalid_config(f"bridge {plan.bridge} carries {a}, not the "
                                               f"gateway {w} of {w.network}; remove that address or change the range")
    return [c for c, w in zip(plan.bridge_addrs, want, strict=True) if w not in live]


def setup(plan: PodPlan, pod: rtnl.RtnlSocket, netns_fd: int, netns_path: str, undo) -> tuple[Interface, ...]:
    """Create the pod's interfaces; `undo` (cni_plugin.undo.Undo) gets a compensation for what was created."""
    with rtnl.RtnlSocket() as host:
        br = ensure_bridge(host, plan)
        undo.callback(_delete_host_end, plan.host_if)  # before commit: the veth may exist when the pin failed
        try:
            _create_veth(host, br, plan, netns_fd)
        except rtnl.NetlinkError as e:
            stale = host.link(plan.host_if) if e.errno == errno.EEXIST else None
            if stale is None:
                raise
            # left by an ADD whose pod end is gone (crash, netns removed): looked for only now, so
            # the usual ADD pays no query for it
            host.batch().del_link(stale.index, plan.host_if).commit()
            _create_veth(host, br, plan, netns_fd)
        veth = _created(host.link(plan.host_if), plan.host_if)
        if plan.hairpin:
            host.batch().set_hairpin(veth.index, True).commit()

        eth = _created(pod.link(plan.container_if), plan.container_if)
        b = pod.batch()
        # a network namespace's loopback is always ifindex 1 (LOOPBACK_IFINDEX); up is idempotent
        b.set_up(LOOPBACK_IFINDEX, "lo")
        b.set_up(eth.index, plan.container_if)
        for cidr in plan.container_addrs:
            b.new_addr(eth.index, cidr)
        for r in plan.routes:
            b.new_route(r.dst, route_gateway(r, plan), eth.index, mtu=r.mtu, advmss=r.advmss,
                        priority=r.priority, table=r.table, scope=r.scope)
        b.commit()
        return (
            Interface(br.name, br.mac),
            Interface(veth.name, veth.mac, mtu=plan.mtu),
            Interface(eth.name, eth.mac, netns_path, plan.mtu),
        )


def _create_veth(host: rtnl.RtnlSocket, br: rtnl.Link, plan: PodPlan, netns_fd: int) -> None:
    b = host.batch()
    if br.mac != _mac_text(bridge_mac(plan)):
        # A bridge we did not create pinned (an older podwire, an admin): pin the MAC it has now, as
        # the reference does on every ADD, before our port joins and may displace it.
        b.set_mac(br.index, bytes.fromhex(br.mac.replace(":", "")), plan.bridge)
    b.new_veth(plan.host_if, plan.container_if, netns_fd, plan.mtu, br.index)
    b.commit()


def _created(link: rtnl.Link | None, name: str) -> rtnl.Link:
    if link is None:
        raise CNIError(IO_FAILURE, f"interface {name} vanished right after it was created")
    return link


def _delete_host_end(name: str) -> None:
    with rtnl.RtnlSocket() as host:
        link = host.link(name)
        if link is not None and link.kind == "veth":
            host.batch().del_link(link.index, name).commit()


def teardown(container_if: str, host_if: str, netns_path: str | None, log=None) -> None:
    """Best effort and idempotent: whatever is already gone is fine.

    Only our host veth is deleted: the kernel takes its peer, the pod's end, with it. So a link named
    `container_if` in the pod's namespace is removed exactly when it is our peer, and nothing else there
    is touched; the pod's namespace is not even entered. A CNI_NETNS that names the node's own namespace
    is refused (code 4) before anything; one that is not a network namespace counts as gone (a runtime
    may leave the unmounted placeholder file behind) so the address is still released.
    """
    if netns_path:
        try:
            fd = netns.open_netns(netns_path)
        except netns.NotANetns as e:
            fd = None
            if log:
                log(f"DEL: CNI_NETNS: {e}; treating the namespace as gone")
        except OSError:
            fd = None  # the namespace is gone, and with it the pod end of the veth
        if fd is not None:
            try:
                if netns.is_host_netns(fd):
                    raise CNIError(INVALID_ENV, f"CNI_NETNS {netns_path} is the node's own network namespace, "
                                                f"not a pod's; nothing was deleted")
            finally:
                os.close(fd)
    _delete_host_end(host_if)


def check(plan_host_if: str, bridge: str, container_if: str, netns_fd: int, prev) -> None:
    """Compare the live pod network with prevResult (a Result); raise STATE_DRIFT on any difference."""

    def drift(msg):
        raise CNIError(STATE_DRIFT, msg)

    with rtnl.RtnlSocket() as host, pod_socket(netns_fd) as pod:
        eth = pod.link(container_if)
        if eth is None:
            drift(f"interface {container_if} is missing from the pod")
        want = [i for i in prev.interfaces if i.name == container_if and i.sandbox]
        if want and want[0].mac and want[0].mac.lower() != eth.mac:
            drift(f"{container_if} has MAC {eth.mac}, prevResult says {want[0].mac}")
        if not eth.up:
            drift(f"{container_if} is down")
        live = {f"{a.address}/{a.prefixlen}" for a in pod.addrs(eth.index)}
        for ip in prev.ips:
            if ip.address not in live:
                drift(f"address {ip.address} is missing from {container_if}")
        routes = [(r.dst or ("::" if r.family == rtnl.AF_INET6 else "0.0.0.0"), r.dst_len, r.gateway)
                  for r in pod.routes() if r.table == rtnl.RT_TABLE_MAIN]
        for r in prev.routes:
            dst, plen = r.dst.split("/")
            if not any(_same_ip(d, dst) and n == int(plen) and (not r.gw or _same_ip(g or "", r.gw))
                       for d, n, g in routes):
                drift(f"route to {r.dst} is missing from the pod")
        veth = host.link(plan_host_if)
        br = host.link(bridge)
        if veth is None:
            drift(f"host end {plan_host_if} of the pod's veth is missing")
        if br is None or veth.master != br.index:
            drift(f"{plan_host_if} is not attached to bridge {bridge}")


def _same_ip(a: str, b: str) -> bool:
    if a == b:
        return True
    if ":" in a and ":" in b:
        import socket

        return socket.inet_pton(socket.AF_INET6, a) == socket.inet_pton(socket.AF_INET6, b)
    return False
