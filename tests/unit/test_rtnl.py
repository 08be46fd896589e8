"""netkit.rtnl batching, netkit.netns checks and the dataplane's pure helpers, without root."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from cni_plugin import dataplane
from cni_plugin.errors import CNIError
from netkit import netns, rtnl


class FakeKernel:
    """Stands in for a NETLINK_ROUTE socket: ACKs each request in order and, like the kernel, drops ACKs
    that do not fit the receive buffer (`room` of them), after which reading fails with ENOBUFS."""

    def __init__(self, room: int = 255, fail: dict | None = None):
        self.room, self.fail = room, fail or {}  # fail: {n-th request (from 0): errno}
        self.sends: list[int] = []
        self.queue: list[bytes] = []
        self.overflow = False
        self.count = 0

    def send(self, data: bytes) -> None:
        offset, n = 0, 0
        while offset < len(data):
            length, _type, _flags, seq, _pid = rtnl._HDR.unpack_from(data, offset)
            err = self.fail.get(self.count, 0)
            body = struct.pack("=i", -err) + data[offset:offset + rtnl._HDR.size]
            if len(self.queue) >= self.room:
                self.overflow = True
            else:
                self.queue.append(rtnl._HDR.pack(rtnl._HDR.size + len(body), rtnl.NLMSG_ERROR, 0, seq, 0) + body)
            offset += (length + 3) & ~3
            n += 1
            self.count += 1
        self.sends.append(n)

    def recv(self, _size: int) -> bytes:
        if self.overflow:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return self.queue.pop(0)

    def getsockopt(self, level: int, option: int) -> int:
        assert (level, option) == (rtnl.SOL_SOCKET, rtnl.SO_RCVBUF)
        return 212992  # the kernel's default rmem, which holds ~255 ACKs


def fake_socket(kernel: FakeKernel) -> rtnl.RtnlSocket:
    sock = rtnl.RtnlSocket.__new__(rtnl.RtnlSocket)
    sock._sock, sock._seq, sock._strict = kernel, 0, False
    return sock


def routes(sock: rtnl.RtnlSocket, n: int) -> rtnl.Batch:
    b = sock.batch()
    for i in range(n):
        b.new_route(f"10.{100 + i // 256}.{i % 256}.1/32", "10.244.7.1", 2)
    return b


def test_a_pods_usual_batch_is_one_sendmsg():
    kernel = FakeKernel()
    assert routes(fake_socket(kernel), 6).commit() == [0] * 6
    assert kernel.sends == [6]


def test_a_batch_larger_than_the_receive_buffer_goes_out_in_chunks():
    kernel = FakeKernel()
    assert routes(fake_socket(kernel), 1000).commit() == [0] * 1000
    assert sum(kernel.sends) == 1000 and max(kernel.sends) <= 212992 // rtnl._ACK_COST
    assert len(kernel.sends) == 5  # a few round trips, not one per route


def test_unchunked_the_same_batch_overflows():
    """What the kernel did to ADD with 254+ routes: the fake is faithful enough to show it."""
    kernel = FakeKernel()
    sock = fake_socket(kernel)
    sock.ack_room = lambda: 10_000  # type: ignore[method-assign]
    with pytest.raises(OSError) as e:
        routes(sock, 1000).commit()
    assert e.value.errno == errno.ENOBUFS


def test_a_failed_chunk_stops_the_batch_and_names_the_request():
    kernel = FakeKernel(fail={3: errno.EEXIST})
    with pytest.raises(rtnl.NetlinkError) as e:
        routes(fake_socket(kernel), 1000).commit()
    assert e.value.errno == errno.EEXIST and "10.100.3.1/32" in e.value.request
    assert len(kernel.sends) == 1  # the other chunks were never sent


def test_tolerated_errors_come_back_as_results():
    kernel = FakeKernel(fail={1: errno.ENODEV})
    b = fake_socket(kernel).batch()
    b.del_link(5, "a").del_link(6, "b")
    assert b.commit() == [0, errno.ENODEV]
    assert fake_socket(FakeKernel()).batch().commit() == []


# --- netns ------------------------------------------------------------------------------------------
def test_own_network_namespace_opens_and_counts_as_the_host():
    fd = netns.open_netns("/proc/self/ns/net")
    try:
        assert netns.is_host_netns(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["file", "dir", "fifo", "mnt", "null"])
def test_paths_that_are_not_network_namespaces(tmp_path, kind):
    path = {"file": tmp_path / "f", "dir": tmp_path, "fifo": tmp_path / "p",
            "mnt": "/proc/self/ns/mnt", "null": "/dev/null"}[kind]
    if kind == "file":
        path.write_text("")
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(netns.NotANetns, match="not a network namespace"):
        netns.open_netns(str(path))
    with pytest.raises(CNIError) as e:
        dataplane.open_pod_netns(str(path))
    assert e.value.code == 4 and str(path) in e.value.msg


def test_pod_netns_refuses_our_own():
    with pytest.raises(CNIError) as e:
        dataplane.open_pod_netns("/proc/self/ns/net")
    assert e.value.code == 4 and "own network namespace" in e.value.msg
    with pytest.raises(CNIError) as e:
        dataplane.open_pod_netns("/run/netns/pw-does-not-exist")
    assert e.value.code == 3


# --- the bridge's MAC and gateway addresses ---------------------------------------------------------
class Plan:
    def __init__(self, bridge_addrs=(), bridge="podwire0"):
        self.bridge_addrs, self.bridge = tuple(bridge_addrs), bridge


def test_bridge_mac_is_stable_and_locally_administered():
    assert dataplane._mac_text(dataplane.bridge_mac(Plan(["10.244.7.1/24"]))) == "0a:58:0a:f4:07:01"
    dual = dataplane.bridge_mac(Plan(["fd00:7::1/64", "10.244.8.1/24"]))
    assert dataplane._mac_text(dual) == "0a:58:0a:f4:08:01"
    for plan in (Plan(["fd00:7::1/64"]), Plan()):
        mac = dataplane.bridge_mac(plan)
        assert len(mac) == 6 and mac[:2] == b"\x0a\x58" and mac == dataplane.bridge_mac(plan)
    assert dataplane.bridge_mac(Plan(["fd00:7::1/64"])) != dataplane.bridge_mac(Plan(["fd00:8::1/64"]))


class Host:
    def __init__(self, *cidrs: str):
        self.cidrs = cidrs
        self.asked: list[tuple[int, int]] = []

    def addrs(self, index: int, family: int) -> list[rtnl.Addr]:
        self.asked.append((index, family))
        out = []
        for c in self.cidrs:
            ip, plen = c.split("/")
            out.append(rtnl.Addr(rtnl.AF_INET6 if ":" in ip else rtnl.AF_INET, int(plen), index, ip))
        return out


def missing(host: Host, *want: str) -> list[str]:
    br = rtnl.Link(7, "podwire0", rtnl.IFF_UP, 1500, "0a:58:0a:f4:07:01", 0, "bridge")
    return dataplane._missing_gateways(host, br, Plan(want))  # type: ignore[arg-type]


def test_gateways_missing_from_the_bridge_are_added_and_present_ones_not():
    host = Host("10.244.7.1/24", "fe80::1/64", "10.99.0.1/24")  # another subnet may share the bridge
    assert missing(host, "10.244.7.1/24", "fd00:7::1/64") == ["fd00:7::1/64"]
    assert host.asked == [(7, rtnl.AF_UNSPEC)]
    host = Host()
    assert missing(host, "10.244.7.1/24") == ["10.244.7.1/24"] and host.asked == [(7, rtnl.AF_INET)]
    assert missing(Host("fd00:7::1/64"), "fd00:7::1/64") == []
    assert missing(Host("10.244.7.9/24")) == []  # no gateway on the bridge (isGateway false): not looked at


@pytest.mark.parametrize("live", ["10.244.7.5/24", "10.244.7.1/16", "10.244.0.1/16", "fd00:7::5/64"])
def test_another_address_in_a_gateway_subnet_is_refused(live):
    with pytest.raises(CNIError) as e:
        missing(Host("10.244.7.1/24", live), "10.244.7.1/24", "fd00:7::1/64")
    assert e.value.code == 7 and live in e.value.msg and "podwire0" in e.value.msg
