"""Applying a PodPlan to the kernel (and taking it away) through netkit's batched rtnetlink."""

from __future__ import annotations

import os

from cni_plugin.errors import STATE_DRIFT, UNKNOWN_CONTAINER, CNIError
from cni_plugin.plan import PodPlan, route_gateway
from cni_plugin.result import Interface
from netkit import netns, rtnl


def open_pod_netns(path: str) -> int:
    try:
        return netns.open_netns(path)
    except FileNotFoundError:
        raise CNIError(UNKNOWN_CONTAINER, f"network namespace {path} does not exist") from None
    except OSError as e:
        raise CNIError(UNKNOWN_CONTAINER, f"cannot open network namespace {path}: {e.strerror}") from None


def pod_socket(netns_fd: int) -> rtnl.RtnlSocket:
    """A netlink socket bound to the pod's namespace (it keeps it after we switch back)."""
    with netns.entered(netns_fd):
        return rtnl.RtnlSocket()


def assert_absent(pod: rtnl.RtnlSocket, ifname: str, netns_path: str) -> None:
    if pod.link(ifname) is not None:
        raise CNIError(UNKNOWN_CONTAINER, f"interface {ifname} already exists in {netns_path}")


def ensure_bridge(host: rtnl.RtnlSocket, plan: PodPlan) -> rtnl.Link:
    br = host.link(plan.bridge)
    if br is None or not br.up:
        # EEXIST is fine: a parallel ADD created it first
        host.batch().new_bridge(plan.bridge, plan.mtu).commit()
        br = host.link(plan.bridge)
        if not br.up:
            host.batch().set_up(br.index, plan.bridge).commit()
    elif br.kind not in (None, "bridge"):
        raise CNIError(UNKNOWN_CONTAINER, f"{plan.bridge} exists and is a {br.kind}, not a bridge")
    if plan.bridge_addrs:
        b = host.batch()
        for cidr in plan.bridge_addrs:
            b.new_addr(br.index, cidr, tolerate_exists=True)
        b.commit()
    if plan.forward_v4:
        netns.write_sysctl("net/ipv4/ip_forward", "1")
    if plan.forward_v6:
        netns.write_sysctl("net/ipv6/conf/all/forwarding", "1")
    return br


def setup(plan: PodPlan, pod: rtnl.RtnlSocket, netns_fd: int, netns_path: str, undo) -> tuple[Interface, ...]:
    """Create the pod's interfaces; `undo` (an ExitStack) gets a compensation for what was created."""
    with rtnl.RtnlSocket() as host:
        br = ensure_bridge(host, plan)
        stale = host.link(plan.host_if)
        if stale is not None:  # left by an ADD whose pod end is gone (crash, netns removed)
            host.batch().del_link(stale.index, plan.host_if).commit()
        host.batch().new_veth(plan.host_if, plan.container_if, netns_fd, plan.mtu, br.index).commit()
        undo.callback(_delete_host_end, plan.host_if)
        veth = host.link(plan.host_if)
        if plan.hairpin:
            host.batch().set_hairpin(veth.index, True).commit()

        lo, eth = pod.link("lo"), pod.link(plan.container_if)
        b = pod.batch()
        if lo is not None and not lo.up:
            b.set_up(lo.index, "lo")
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


def _delete_host_end(name: str) -> None:
    with rtnl.RtnlSocket() as host:
        link = host.link(name)
        if link is not None:
            host.batch().del_link(link.index, name).commit()


def teardown(container_if: str, host_if: str, netns_path: str | None) -> None:
    """Best effort and idempotent: whatever is already gone is fine."""
    if netns_path:
        try:
            fd = netns.open_netns(netns_path)
        except OSError:
            fd = None  # the namespace is gone, and with it the pod end of the veth
        if fd is not None:
            try:
                with pod_socket(fd) as pod:
                    link = pod.link(container_if)
                    if link is not None:
                        pod.batch().del_link(link.index, container_if).commit()
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
            if not any(_same_ip(d, dst) and l == int(plen) and (not r.gw or _same_ip(g or "", r.gw))
                       for d, l, g in routes):
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
