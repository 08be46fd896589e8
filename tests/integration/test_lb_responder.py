"""The LoadBalancer ARP/NDP responder on a real link: two namespaces joined by a veth.

The "client" namespace has the link's addresses and plays an outside host (arping, ndisc6, ping,
TCP). The "node" namespace has none of them, and no VIP on any interface: only the Responder
(running in a child process inside that namespace, driven over stdin/stdout) can answer for them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from ipaddress import IPv6Address

import pytest

from loadbalancer.ndp import solicited_node_group
from tests.integration.cni_harness import ROOT, in_ns, netns_add, netns_del

pytestmark = pytest.mark.root

CLIENT_IF, NODE_IF = "pwlbrc0", "pwlbrn0"
CLIENT_V4, CLIENT_V6 = "10.77.0.1", "fd77::1"
VIP4, VIP6 = "10.77.0.100", "fd77::100"
OTHER4, OTHER6 = "10.77.0.101", "fd77::101"  # on the link's prefix, held by nobody
VIP4_B = "10.77.0.102"
STALE_MAC = "02:de:ad:00:00:01"  # "the previous holder": what a client has cached before a takeover

# The child: a Responder in the current (node) namespace, one JSON command per stdin line.
DRIVER = r"""
import json, sys
from loadbalancer.responder import Responder
r = Responder(sys.argv[1], announce_count=int(sys.argv[2]), announce_interval=float(sys.argv[3]))
print(json.dumps({"mac": str(r.mac)}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    try:
        if "set" in cmd:
            r.set_addresses(cmd["set"])
            out = {"held": sorted(str(a) for a in r.addresses())}
        elif "counters" in cmd:
            out = vars(r.counters())
        elif "alive" in cmd:
            out = {"alive": r._thread.is_alive()}
        else:
            break
    except ValueError as e:
        out = {"error": str(e)}
    print(json.dumps(out), flush=True)
r.stop()
print(json.dumps({"stopped": not r._thread.is_alive()}), flush=True)
"""


class ResponderProcess:
    def __init__(self, ns: str, ifname: str, announce_count: int = 3, announce_interval: float = 0.5):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", DRIVER, ifname, str(announce_count),
             str(announce_interval)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": ROOT})
        self.mac = self._read()["mac"]

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"responder exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
        return json.loads(line)

    def call(self, **cmd) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def set(self, *addrs: str) -> dict:
        return self.call(set=list(addrs))

    def counters(self) -> dict:
        return self.call(counters=1)

    def stop(self) -> dict:
        out = self.call(stop=1)
        self.proc.wait(timeout=10)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def link():
    """(client ns, node ns): a veth between them; addresses and on-link routes, no VIP anywhere."""
    client, node = netns_add("pwlbr-c"), netns_add("pwlbr-n")
    try:
        subprocess.run(["ip", "link", "add", CLIENT_IF, "netns", client, "type", "veth", "peer", "name", NODE_IF,
                        "netns", node], check=True)
        for ns, ifname in ((client, CLIENT_IF), (node, NODE_IF)):
            # no DAD wait: link-local addresses usable at once (the node sends NAs from its link-local)
            in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=0")
            in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.addr_gen_mode=0")
        in_ns(client, "sysctl", "-qw", f"net.ipv4.conf.{CLIENT_IF}.arp_accept=1")
        in_ns(client, "ip", "addr", "add", f"{CLIENT_V4}/24", "dev", CLIENT_IF)
        in_ns(client, "ip", "addr", "add", f"{CLIENT_V6}/64", "dev", CLIENT_IF, "nodad")
        for ns, ifname in ((client, CLIENT_IF), (node, NODE_IF)):
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(ns, "ip", "link", "set", ifname, "up")
        # The node's own LAN routes (a node has them for its link; routes, not addresses).
        in_ns(node, "ip", "route", "add", "10.77.0.0/24", "dev", NODE_IF)
        in_ns(node, "ip", "-6", "route", "add", "fd77::/64", "dev", NODE_IF)
        _eventually(lambda: "fe80" in in_ns(node, "ip", "-6", "addr", "show", "dev", NODE_IF).stdout)
        yield client, node
    finally:
        netns_del(client)
        netns_del(node)


@pytest.fixture
def responder(link):
    made: list[ResponderProcess] = []

    def start(**kw) -> ResponderProcess:
        made.append(ResponderProcess(link[1], NODE_IF, **kw))
        return made[-1]

    try:
        yield start
    finally:
        for r in made:
            r.kill()


def _eventually(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def arping(client: str, target: str, count: int = 3) -> tuple[list[str], list[float]]:
    """(replying MACs, round-trip times in microseconds) of `arping -c count`."""
    out = in_ns(client, "arping", "-c", str(count), "-W", "0.2", "-i", CLIENT_IF, target, check=False).stdout
    macs, times = [], []
    for m in re.finditer(r"bytes from (\S+) \(([\d.]+)\): index=\d+ time=([\d.]+) (usec|msec|sec)", out):
        assert m.group(2) == target, out
        macs.append(m.group(1).lower())
        times.append(float(m.group(3)) * {"usec": 1, "msec": 1e3, "sec": 1e6}[m.group(4)])
    return macs, times


def ndisc6(client: str, target: str) -> str | None:
    """The MAC ndisc6 resolves `target` to, or None."""
    out = in_ns(client, "ndisc6", "-n", "-q", "-r", "2", "-w", "400", target, CLIENT_IF, check=False)
    mac = out.stdout.strip().lower()
    return mac if out.returncode == 0 and mac else None


def neigh_mac(client: str, addr: str) -> str | None:
    out = in_ns(client, "ip", "neigh", "show", addr, "dev", CLIENT_IF).stdout
    m = re.search(r"lladdr (\S+)", out)
    return m.group(1).lower() if m else None


def test_arp_answered_for_held_addresses_only(link, responder):
    client, node = link
    r = responder(announce_count=0)
    assert r.set(VIP4, VIP6) == {"held": sorted([VIP4, VIP6])}

    macs, times = arping(client, VIP4, count=5)
    assert macs == [r.mac] * 5, "every request answered, with the node interface's MAC"
    print(f"\narping {VIP4}: rtt us {times}")
    assert arping(client, OTHER4) == ([], []), "an address not held gets no answer"
    # An RFC 5227 probe (sender 0.0.0.0) is answered too: that is how a held address is defended.
    out = in_ns(client, "arping", "-0", "-c", "1", "-W", "0.2", "-i", CLIENT_IF, VIP4, check=False).stdout
    assert r.mac in out.lower(), out
    assert r.counters()["arp_replies"] == 6

    r.set(VIP6)
    assert arping(client, VIP4) == ([], []), "released: no more answers"
    assert r.counters()["arp_replies"] == 6
    assert r.counters()["malformed"] == 0


def test_ndp_answered_for_held_addresses_only(link, responder):
    client, node = link
    r = responder(announce_count=0)
    r.set(VIP4, VIP6, "fd77::1:0:0:100")  # two held addresses, one solicited-node group (ff02::1:ff00:100)
    groups = in_ns(node, "ip", "-6", "maddr", "show", "dev", NODE_IF).stdout
    assert "ff02::1:ff00:100" in groups, groups

    assert ndisc6(client, VIP6) == r.mac
    assert ndisc6(client, "fd77::1:0:0:100") == r.mac
    assert ndisc6(client, OTHER6) is None, "an address not held gets no answer"
    assert r.counters()["na_replies"] == 2

    r.set(VIP4, "fd77::1:0:0:100")
    assert ndisc6(client, VIP6) is None, "released: no more answers"
    assert "ff02::1:ff00:100" in in_ns(node, "ip", "-6", "maddr", "show", "dev", NODE_IF).stdout, \
        "the group is still needed by fd77::1:100"
    r.set(VIP4)
    assert "ff02::1:ff00:100" not in in_ns(node, "ip", "-6", "maddr", "show", "dev", NODE_IF).stdout
    assert ndisc6(client, "fd77::1:0:0:100") is None
    assert r.counters()["na_replies"] == 2

    r.set(VIP6)
    assert r.stop() == {"stopped": True}
    assert "ff02::1:ff00:100" not in in_ns(node, "ip", "-6", "maddr", "show", "dev", NODE_IF).stdout, \
        "stop() leaves the groups"


def test_takeover_announcements_update_the_clients_cache(link, responder):
    client, node = link
    # The client has the previous holder's MAC cached for VIP4 and VIP6, nothing for VIP4_B.
    in_ns(client, "ip", "neigh", "replace", VIP4, "lladdr", STALE_MAC, "dev", CLIENT_IF, "nud", "stale")
    in_ns(client, "ip", "-6", "neigh", "replace", VIP6, "lladdr", STALE_MAC, "dev", CLIENT_IF, "nud", "stale")
    r = responder(announce_count=3, announce_interval=0.5)
    start = time.monotonic()
    r.set(VIP4, VIP6, VIP4_B)
    assert time.monotonic() - start < 0.5, "set_addresses does not wait for the announcements"

    assert _eventually(lambda: neigh_mac(client, VIP4) == r.mac, 5), in_ns(client, "ip", "neigh").stdout
    assert _eventually(lambda: neigh_mac(client, VIP6) == r.mac, 5), in_ns(client, "ip", "-6", "neigh").stdout
    # arp_accept=1 on the client: a gratuitous ARP creates the entry it did not have.
    assert _eventually(lambda: neigh_mac(client, VIP4_B) == r.mac, 5), in_ns(client, "ip", "neigh").stdout
    counts = _eventually(lambda: (c := r.counters())["unsolicited_na"] == 3 and c, 5)
    assert counts, r.counters()
    assert counts["gratuitous_arp"] == 2 * 3 * 2, "request and reply form, 3 times, for 2 IPv4 addresses"
    assert counts["arp_replies"] == counts["na_replies"] == 0, "the cache was filled by announcements alone"
    time.sleep(1.2)
    assert r.counters()["unsolicited_na"] == 3, "a burst ends"


def test_released_during_burst_stops_announcing(link, responder):
    client, node = link
    r = responder(announce_count=3, announce_interval=1.0)
    r.set(VIP4)
    _eventually(lambda: r.counters()["gratuitous_arp"] == 2, 2)
    r.set()
    time.sleep(2.5)
    assert r.counters()["gratuitous_arp"] == 2


def test_traffic_to_the_vip_end_to_end(link, responder):
    """Ping and TCP from the client reach the node through the addresses only the responder announces."""
    client, node = link
    # The node delivers the VIPs locally (as the proxy's dataplane would take them), but the
    # kernel must still not answer ARP for them: arp_ignore=1 answers only for addresses on the
    # interface, and NDP never answers for a route. Every answer is the responder's.
    in_ns(node, "sysctl", "-qw", f"net.ipv4.conf.{NODE_IF}.arp_ignore=1")
    in_ns(node, "ip", "route", "add", "local", VIP4, "dev", "lo")
    in_ns(node, "ip", "-6", "route", "add", "local", VIP6, "dev", "lo")
    server = subprocess.Popen(["ip", "netns", "exec", node, sys.executable, "-c", TCP_SERVER], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        r = responder(announce_count=0)
        assert arping(client, VIP4, count=1) == ([], []), "before set_addresses nothing answers"
        assert ndisc6(client, VIP6) is None
        r.set(VIP4, VIP6)
        for vip in (VIP4, VIP6):
            ping = in_ns(client, "ping", "-c", "3", "-i", "0.2", "-W", "2", vip, check=False)
            assert ping.returncode == 0, ping.stdout + ping.stderr
            got = in_ns(client, sys.executable, "-c", TCP_CLIENT, vip)
            assert got.stdout.strip() == f"hello {vip}"
            assert neigh_mac(client, vip) == r.mac
        counts = r.counters()
        assert counts["arp_replies"] >= 1 and counts["na_replies"] >= 1, counts

        # The client's entry goes stale; one-way traffic (UDP: nothing confirms reachability, unlike
        # ping's MSG_CONFIRM or TCP) makes it check with a unicast NS to the VIP. Answered, the entry
        # is REACHABLE again (test_unicast_probe_answered_without_local_delivery: also without the route).
        in_ns(client, "sysctl", "-qw", f"net.ipv6.neigh.{CLIENT_IF}.delay_first_probe_time=1")
        in_ns(client, "ip", "-6", "neigh", "change", VIP6, "lladdr", r.mac, "dev", CLIENT_IF, "nud", "stale")
        before = r.counters()["na_replies"]
        in_ns(client, sys.executable, "-c", UDP_TRICKLE, VIP6)
        assert r.counters()["na_replies"] > before, "the unicast probe was answered by the responder"
        assert "REACHABLE" in in_ns(client, "ip", "-6", "neigh", "show", VIP6, "dev", CLIENT_IF).stdout
    finally:
        server.kill()
        server.wait(timeout=10)


TCP_SERVER = r"""
import socket, threading
def serve(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, 8080)); s.listen()
    while True:
        c, _ = s.accept()
        c.sendall(("hello " + c.getsockname()[0] + "\n").encode()); c.close()
threading.Thread(target=serve, args=(socket.AF_INET6, "::"), daemon=True).start()
threading.Thread(target=serve, args=(socket.AF_INET, "0.0.0.0"), daemon=True).start()
import time; time.sleep(0.3); print("listening", flush=True); time.sleep(600)
"""
UDP_TRICKLE = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for _ in range(10):
    s.sendto(b"x", (sys.argv[1], 9))
    time.sleep(0.3)
"""
TCP_CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], 8080), timeout=5) as s:
    print(s.makefile().readline().strip())
"""

# Hostile frames sent from the client onto the link: each must be counted and dropped.
HOSTILE = r"""
import socket, struct
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((IFNAME, 0))
mac = bytes.fromhex(MAC.replace(":", ""))
bcast = b"\xff" * 6
arp_hdr = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
good_body = mac + bytes([10, 77, 0, 1]) + b"\0" * 6 + bytes([10, 77, 0, 100])
frames = [
    bcast + mac + b"\x08\x06",                                        # no ARP at all
    bcast + mac + b"\x08\x06" + arp_hdr + good_body[:10],              # truncated
    bcast + mac + b"\x08\x06" + struct.pack("!HHBBH", 6, 0x0800, 6, 4, 1) + good_body,  # not Ethernet
    bcast + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x86dd, 6, 16, 1) + good_body,  # not IPv4
    bcast + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 9) + good_body,   # op 9
    bcast + mac + b"\x08\x06" + arp_hdr + b"\xff" * 6 + good_body[6:],  # broadcast sender MAC
]
for f in frames:
    s.send(f)
i6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
i6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
i6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
dst = ("ff02::1:ff00:100", 0, 0, socket.if_nametoindex(IFNAME))
target = socket.inet_pton(socket.AF_INET6, "fd77::100")
bad = [
    struct.pack("!BBHI", 135, 0, 0, 0) + target[:8],                        # truncated
    struct.pack("!BBHI", 135, 1, 0, 0) + target,                            # code 1
    struct.pack("!BBHI", 135, 0, 0, 0) + target + b"\x01\x00" + b"\0" * 6,  # option of length 0
    struct.pack("!BBHI", 135, 0, 0, 0) + target + b"\x01\x02" + b"\0" * 6,  # option past the end
    struct.pack("!BBHI", 135, 0, 0, 0) + socket.inet_pton(socket.AF_INET6, "ff02::1"),  # multicast target
]
for m in bad:
    i6.sendto(m, dst)
i6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 64)  # not from the link: the BPF filter drops it
i6.sendto(struct.pack("!BBHI", 135, 0, 0, 0) + target, dst)

def csum(src, dst, msg):
    data = src + dst + struct.pack("!I3xB", len(msg), 58) + msg
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def ns_frame(dst, checksum_delta=0, payload_len=None):
    src = socket.inet_pton(socket.AF_INET6, "fe80::1")
    dst = socket.inet_pton(socket.AF_INET6, dst)
    msg = struct.pack("!BBHI", 135, 0, 0, 0) + target + b"\x01\x01" + mac
    msg = msg[:2] + struct.pack("!H", (csum(src, dst, msg) + checksum_delta) & 0xFFFF) + msg[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(msg) if payload_len is None else payload_len, 58, 255) + src + dst
    return b"\x33\x33\xff\x00\x01\x00" + mac + b"\x86\xdd" + ip6 + msg

raw_ns = [
    ns_frame("ff02::1:ff00:100", checksum_delta=1),  # bad checksum
    ns_frame("ff02::1"),                            # not the target's group nor the target
    ns_frame("ff02::1:ff00:100", payload_len=200),  # payload length past the frame
]
for f in raw_ns:
    s.send(f)
print(len(frames), len(bad) + len(raw_ns))
"""


def test_hostile_frames_are_counted_and_dropped(link, responder):
    client, node = link
    r = responder(announce_count=0)
    r.set(VIP4, VIP6)
    mac = re.search(r"link/ether (\S+)", in_ns(client, "ip", "link", "show", CLIENT_IF).stdout).group(1)
    out = in_ns(client, sys.executable, "-c", f"IFNAME={CLIENT_IF!r}; MAC={mac!r}\n" + HOSTILE).stdout.split()
    n_arp, n_ns = int(out[0]), int(out[1])
    assert _eventually(lambda: r.counters()["malformed"] == n_arp + n_ns, 3), r.counters()
    assert r.call(alive=1) == {"alive": True}
    c = r.counters()
    assert c["arp_replies"] == c["na_replies"] == 0
    # still answering
    assert arping(client, VIP4, count=1)[0] == [r.mac]
    assert ndisc6(client, VIP6) == r.mac


def test_unicast_probe_answered_without_local_delivery(link, responder):
    """A client's reachability probe is a unicast NS to the VIP itself. The node does not deliver
    it locally (no address, no route: its IP stack drops it), yet the responder answers it."""
    client, node = link
    r = responder(announce_count=0)
    r.set(VIP6)
    assert ndisc6(client, VIP6) == r.mac
    in_ns(client, "sysctl", "-qw", f"net.ipv6.neigh.{CLIENT_IF}.delay_first_probe_time=1")
    in_ns(client, "ip", "-6", "neigh", "replace", VIP6, "lladdr", r.mac, "dev", CLIENT_IF, "nud", "stale")
    capture = subprocess.Popen(["ip", "netns", "exec", node, "tcpdump", "-l", "-n", "-i", NODE_IF,
                                f"icmp6 and ip6[40] == 135 and ip6 dst {VIP6}"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1)  # tcpdump attached
        before = r.counters()["na_replies"]
        in_ns(client, sys.executable, "-c", UDP_TRICKLE, VIP6)
    finally:
        capture.terminate()
        probes = capture.communicate(timeout=10)[0]
    assert f"> {VIP6}: ICMP6, neighbor solicitation" in probes, "the client probed with a unicast NS"
    assert r.counters()["na_replies"] > before
    assert "REACHABLE" in in_ns(client, "ip", "-6", "neigh", "show", VIP6, "dev", CLIENT_IF).stdout


def test_interface_flap_and_removal(link, responder):
    """Down and up again: answers resume (the sockets keep their binding and groups). Removed: the
    thread stays quiet (no error loop) and stop() still ends it."""
    client, node = link
    r = responder(announce_count=0)
    r.set(VIP4, VIP6)
    in_ns(node, "ip", "link", "set", NODE_IF, "down")
    time.sleep(0.5)
    in_ns(node, "ip", "link", "set", NODE_IF, "up")
    assert _eventually(lambda: arping(client, VIP4, count=1)[0] == [r.mac], 10)
    assert _eventually(lambda: ndisc6(client, VIP6) == r.mac, 10)
    assert r.call(alive=1) == {"alive": True}
    flapped = r.counters()

    pid = int(in_ns(node, "pgrep", "-n", "-f", "from loadbalancer.responder import Responder").stdout)
    in_ns(node, "ip", "link", "del", NODE_IF)
    time.sleep(0.5)
    ticks = _cpu_ticks(pid)
    time.sleep(2)
    assert _cpu_ticks(pid) - ticks <= 1, "no busy loop after the interface is gone"
    gone = r.counters()
    assert gone["receive_errors"] - flapped["receive_errors"] <= 2, gone
    assert r.stop() == {"stopped": True}


def _cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_node_without_ipv6_answers_arp(link, responder):
    client, node = link
    in_ns(node, "sysctl", "-qw", f"net.ipv6.conf.{NODE_IF}.disable_ipv6=1")
    r = responder(announce_count=0)
    assert "IPv6 is not available on" in r.set(VIP4, VIP6)["error"], "refused: nothing could arrive"
    assert r.set(VIP4) == {"held": [VIP4]}
    assert arping(client, VIP4, count=2)[0] == [r.mac] * 2
    assert ndisc6(client, VIP6) is None
    assert r.counters()["ns_received"] == 0


def test_asker_the_node_has_no_route_for(link, responder):
    """A client asks from an address on a prefix the node has no route for (it has no address on
    this link at all): answered all the same, at the MAC the solicitation names."""
    client, node = link
    in_ns(node, "ip", "-6", "route", "del", "fd77::/64", "dev", NODE_IF)
    in_ns(node, "ip", "route", "del", "10.77.0.0/24", "dev", NODE_IF)
    r = responder(announce_count=0)
    r.set(VIP4, VIP6)
    out = in_ns(client, "ndisc6", "-n", "-q", "-r", "2", "-w", "400", "-s", CLIENT_V6, VIP6, CLIENT_IF, check=False)
    assert out.stdout.strip().lower() == r.mac, out
    assert arping(client, VIP4, count=1)[0] == [r.mac]
    assert r.counters()["send_errors"] == 0


def test_bad_addresses_are_refused(link, responder):
    r = responder(announce_count=0)
    for bad in ("224.0.0.1", "0.0.0.0", "fe80::1", "ff02::1", "127.0.0.1", "10.77.0.300", "fd77::1%lo", "nonsense"):
        assert "error" in r.set(VIP4, bad), bad
    assert r.set() == {"held": []}, "a refused set changes nothing (and an empty one clears)"


def test_more_groups_than_a_socket_may_join(link, responder):
    """The kernel caps one socket's memberships (optmem_max); the responder spreads them over as
    many sockets as it needs, and answers (and can still send) for every held address."""
    client, node = link
    r = responder(announce_count=0)
    optmem = int(open("/proc/sys/net/core/optmem_max").read())
    # each membership takes about 56 bytes of option memory: this list is well past one socket's cap
    many = [str(IPv6Address(int(IPv6Address("fd77::")) + i * 7919)) for i in range(1, optmem // 40 + 200)]

    def groups() -> set[str]:
        out = in_ns(node, "ip", "-6", "maddr", "show", "dev", NODE_IF).stdout
        return set(re.findall(r"inet6 (ff02::1:ff\S+)", out))

    r.set(*many)
    assert r.counters()["join_errors"] == 0
    assert {str(solicited_node_group(IPv6Address(a))) for a in many} <= groups()
    last = max(many, key=lambda a: solicited_node_group(IPv6Address(a)))  # joined last, on the last socket
    assert ndisc6(client, last) == r.mac
    assert ndisc6(client, many[0]) == r.mac
    assert r.counters()["send_errors"] == 0
    r.set(many[0])
    assert str(solicited_node_group(IPv6Address(last))) not in groups()
    assert ndisc6(client, many[0]) == r.mac


def test_interfaces_it_cannot_serve(link):
    """A name that is not an interface, a missing one, a non-Ethernet one: clear errors at start."""
    client, node = link
    script = ("from loadbalancer.responder import Responder\n"
              "for name in ('no/such', 'pwlbr-none', 'lo'):\n"
              "    try:\n"
              "        Responder(name)\n"
              "    except (OSError, ValueError) as e:\n"
              "        print(type(e).__name__, e)\n")
    out = in_ns(node, sys.executable, "-c", script, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}).stdout
    assert out.splitlines() == ["ValueError not an interface name: 'no/such'",
                                "OSError no interface with this name",
                                "ValueError lo is not an Ethernet interface (hardware type 772)"], out


@pytest.mark.slow
def test_idle_cost_and_reply_latency(link, responder):
    """Figures for the report: an idle responder blocks (no CPU), and how fast it answers.

    Latency is taken on the node's interface (tcpdump timestamps: request in -> answer out, the
    responder's whole path through the kernel), and as arping sees it from the client.
    """
    client, node = link
    r = responder(announce_count=0)
    r.set(VIP4, VIP6, *(f"10.77.1.{i}" for i in range(1, 200)), *(f"fd77::2:{i:x}" for i in range(1, 200)))
    pid = int(in_ns(node, "pgrep", "-n", "-f", "from loadbalancer.responder import Responder").stdout)
    arping(client, VIP4, count=2)
    ndisc6(client, VIP6)  # the node now knows the client's link-local: no resolution inside the figures

    before, t0 = _cpu_ticks(pid), time.monotonic()
    time.sleep(5)
    idle_ticks, elapsed = _cpu_ticks(pid) - before, time.monotonic() - t0

    capture = subprocess.Popen(["ip", "netns", "exec", node, "tcpdump", "-l", "-n", "-tt", "-i", NODE_IF,
                                "arp or (icmp6 and (ip6[40] == 135 or ip6[40] == 136))"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1)
        _, arping_us = arping(client, VIP4, count=20)
        resolved = sum(ndisc6(client, VIP6) == r.mac for _ in range(20))
        time.sleep(0.5)
    finally:
        capture.terminate()
        lines = capture.communicate(timeout=10)[0].splitlines()
    arp_us = _deltas(lines, f"who-has {VIP4} tell", f"Reply {VIP4} is-at")
    nd_us = _deltas(lines, f"neighbor solicitation, who has {VIP6}", f"neighbor advertisement, tgt is {VIP6}")
    print(f"\nidle: {idle_ticks} ticks ({idle_ticks / os.sysconf('SC_CLK_TCK') * 1e3:.0f} ms CPU) in {elapsed:.1f} s "
          f"holding 400 addresses\nARP request->reply on the node's link, us: {_summary(arp_us)}\n"
          f"NS->NA on the node's link, us: {_summary(nd_us)}\narping's rtt, us: {_summary(arping_us)}")
    assert idle_ticks <= 1, "an idle responder must block, not poll"
    assert len(arp_us) == len(arping_us) == 20 and len(nd_us) == resolved == 20


def _deltas(lines: list[str], ask: str, answer: str) -> list[float]:
    """Microseconds from each `ask` line to the `answer` line that follows it (tcpdump -tt)."""
    out, asked = [], None
    for line in lines:
        if ask in line:
            asked = float(line.split()[0])
        elif answer in line and asked is not None:
            out.append((float(line.split()[0]) - asked) * 1e6)
            asked = None
    return out


def _summary(values: list[float]) -> str:
    v = sorted(values)
    if not v:
        return "none"
    return f"min {v[0]:.0f} p50 {v[len(v) // 2]:.0f} p90 {v[int(len(v) * 0.9)]:.0f} max {v[-1]:.0f} (n={len(v)})"


# -- failover between two nodes on one segment -----------------------------------------------------

UDP_ECHO = r"""
import socket, sys, threading
name = sys.argv[1]
def serve(family, addr):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND: the VIP is a local route, not an address
    s.bind((addr, 9999))
    while True:
        data, peer = s.recvfrom(64)
        s.sendto(name.encode() + b" " + data, peer)
for family, addr in ((socket.AF_INET, sys.argv[2]), (socket.AF_INET6, sys.argv[3])):
    threading.Thread(target=serve, args=(family, addr), daemon=True).start()
print("serving", flush=True)
sys.stdin.read()
"""

# Sends to both VIPs every 10 ms until stdin closes; prints "<monotonic time> <family> <node>" per answer.
UDP_PROBE = r"""
import select, socket, sys, threading, time
socks = {4: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), 6: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)}
dests = {4: (sys.argv[1], 9999), 6: (sys.argv[2], 9999)}
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
seq = 0
while not done.is_set():
    seq += 1
    for fam, s in socks.items():
        s.sendto(str(seq).encode(), dests[fam])
    end = time.monotonic() + 0.01
    while (left := end - time.monotonic()) > 0:
        for s in select.select(list(socks.values()), [], [], left)[0]:
            data = s.recv(64)
            fam = 4 if s is socks[4] else 6
            print(f"{time.monotonic():.6f} {fam} {data.split()[0].decode()}", flush=True)
"""


@pytest.fixture
def segment():
    """A client and two nodes on one bridge (in a namespace of its own); the nodes have the link's
    routes and the VIPs as local routes (the proxy's role), arp_ignore=1 so only responders answer."""
    names = {role: netns_add(f"pwlbr-{role}") for role in ("sw", "c", "a", "b")}
    sw = names["sw"]
    try:
        in_ns(sw, "ip", "link", "add", "br0", "type", "bridge")
        in_ns(sw, "ip", "link", "set", "br0", "up")
        for role in ("c", "a", "b"):
            ns, ifname = names[role], f"pwlbr{role}0"
            subprocess.run(["ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", f"sw-{role}",
                            "netns", sw], check=True)
            in_ns(sw, "ip", "link", "set", f"sw-{role}", "master", "br0", "up")
            in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=0")
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(ns, "ip", "link", "set", ifname, "up")
        c = names["c"]
        in_ns(c, "ip", "addr", "add", f"{CLIENT_V4}/24", "dev", "pwlbrc0")
        in_ns(c, "ip", "addr", "add", f"{CLIENT_V6}/64", "dev", "pwlbrc0", "nodad")
        for role in ("a", "b"):
            ns, ifname = names[role], f"pwlbr{role}0"
            in_ns(ns, "sysctl", "-qw", f"net.ipv4.conf.{ifname}.arp_ignore=1")
            in_ns(ns, "ip", "route", "add", "10.77.0.0/24", "dev", ifname)
            in_ns(ns, "ip", "-6", "route", "add", "fd77::/64", "dev", ifname)
            in_ns(ns, "ip", "route", "add", "local", VIP4, "dev", "lo")
            in_ns(ns, "ip", "-6", "route", "add", "local", VIP6, "dev", "lo")
        yield names
    finally:
        for ns in names.values():
            netns_del(ns)


SILENT = pytest.mark.skipif(os.environ.get("PODWIRE_LB_SILENT_FAILOVER") != "1",
                            reason="a 75 s comparison, run on demand: PODWIRE_LB_SILENT_FAILOVER=1")


@pytest.mark.parametrize("announce", [3, pytest.param(0, marks=[pytest.mark.slow, SILENT])],
                         ids=["announced", "silent"])
def test_failover_between_two_nodes(segment, announce):
    """Node a holds the VIPs and serves; a dies (its link goes down) and b takes the addresses over.
    b's announcements move the client's traffic to b at once: measured from b's set_addresses to
    the first answer from b, per family. Without them ("silent", for comparison) the client keeps
    sending to a's MAC until its own reachability check fails and it asks again (measured
    2026-11-27: IPv4 38 s, IPv6 25 s with Linux's default neighbour timers; announced: 9 ms)."""
    procs: list[subprocess.Popen] = []
    responders: list[ResponderProcess] = []
    try:
        for role in ("a", "b"):
            echo = subprocess.Popen(["ip", "netns", "exec", segment[role], sys.executable, "-c", UDP_ECHO, role, VIP4,
                                     VIP6], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(echo)
            assert echo.stdout is not None and echo.stdout.readline().strip() == "serving"
            responders.append(ResponderProcess(segment[role], f"pwlbr{role}0", announce_count=announce,
                                               announce_interval=0.5))
        a, b = responders
        a.set(VIP4, VIP6)
        probe = subprocess.Popen(["ip", "netns", "exec", segment["c"], sys.executable, "-c", UDP_PROBE, VIP4, VIP6],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(probe)
        time.sleep(1.5)
        in_ns(segment["a"], "ip", "link", "set", "pwlbra0", "down")  # node a dies
        time.sleep(0.5)
        t0 = time.monotonic()
        b.set(VIP4, VIP6)  # the election's verdict
        time.sleep(2.5 if announce else 75)  # silent: up to reachable time (15-45 s) + delay 5 s + probes 3 s
        out, _ = probe.communicate(input="", timeout=10)
        answers = [(float(t), int(fam), who) for t, fam, who in (line.split() for line in out.splitlines())]
        assert {(fam, who) for t, fam, who in answers if t < t0} == {(4, "a"), (6, "a")}, "a served first"
        takeover_ms = {}
        for fam in (4, 6):
            first_b = min((t for t, f, who in answers if f == fam and who == "b"), default=None)
            assert first_b is not None, f"IPv{fam} traffic never reached b"
            takeover_ms[fam] = (first_b - t0) * 1e3
            assert not [1 for t, f, who in answers if f == fam and who == "a" and t > first_b], "back to a"
        print(f"\n{announce} announcements: set_addresses on the new holder -> first answer from it: "
              f"IPv4 {takeover_ms[4]:.0f} ms, IPv6 {takeover_ms[6]:.0f} ms (probing every 10 ms)")
        if announce:
            assert takeover_ms[4] < 500 and takeover_ms[6] < 500, "the first announcement moves the client"
        client_neigh = in_ns(segment["c"], "ip", "neigh", "show", "dev", "pwlbrc0").stdout
        assert f"{VIP4} lladdr {b.mac}" in client_neigh and f"{VIP6} lladdr {b.mac}" in client_neigh, client_neigh
    finally:
        for r in responders:
            r.kill()
        for p in procs:
            p.kill()
            p.wait(timeout=10)

