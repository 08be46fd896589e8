"""policy.denylog against the real kernel: nft `log ... group N` drops in a namespace of ours, a
DenyReader in that namespace, real packets.

    [client] c0 10.77.0.1 fd77::1 ---veth--- s0 10.77.0.2 fd77::2 [server: the nft table, the reader]

The reader runs in a child process started with `ip netns exec` (style.md 8: no namespace switching in
a long-lived process), which prints each decoded record as a JSON line; the test sends packets and
compares the records field by field.
"""
from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time

import pytest

from netkit.nft import apply as nft_apply
from tests.integration.cni_harness import ROOT, netns_add, netns_del

pytestmark = [pytest.mark.root]

GROUP = 5
C4, S4, C6, S6 = "10.77.0.1", "10.77.0.2", "fd77::1", "fd77::2"

# argv: group, mode (print | report), rcvbuf, slow_first (seconds the first callback blocks)
READER = r"""
import json, logging, sys, threading, time
from policy.denylog import DenyReader, DenyReporter
group, mode, rcvbuf, slow = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
lock = threading.Lock()
def emit(obj):
    with lock:
        print(json.dumps(obj), flush=True)
first = [True]
def record(d):
    if first[0] and slow:
        first[0] = False
        time.sleep(slow)  # a stalled consumer: the socket buffer overruns meanwhile
    emit({"direction": d.direction, "src": str(d.src), "dst": str(d.dst), "proto": d.proto, "port": d.port})
on_skipped = None
if mode == "report":
    from prometheus_client import CollectorRegistry, generate_latest
    from policy.from_api import namespace_from_api, pod_from_api, policy_from_api
    from policy.model import Cluster
    def pod(ns, name, ip):
        return pod_from_api({"metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
                             "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
                             "status": {"phase": "Running", "podIPs": [{"ip": ip}]}})
    cluster = Cluster.build([pod("x", "a", "10.77.0.1"), pod("y", "b", "10.77.0.2")],
                            [namespace_from_api({"metadata": {"name": n}}) for n in "xy"],
                            [policy_from_api({"metadata": {"name": "deny-all", "namespace": "y"},
                                              "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})])
    class Lines(logging.Handler):
        def emit(self, r):
            emit({"log": r.getMessage()})
    logger = logging.getLogger("podwire.policy.deny")
    logger.addHandler(Lines()); logger.setLevel(logging.INFO); logger.propagate = False
    registry = CollectorRegistry()
    reporter = DenyReporter(registry, lambda: cluster, lines_per_second=0.001, burst=3)
    callback, on_skipped = reporter, reporter.skipped
else:
    callback = record
reader = DenyReader(group, callback, on_skipped=on_skipped, rcvbuf=rcvbuf)
try:
    reader.start()
except OSError as e:
    emit({"error": e.errno, "message": str(e)})
    sys.exit(3)
emit({"ready": True, "portid": reader._sock.getsockname()[0]})
sys.stdin.read()  # until the test closes our stdin
t = time.monotonic()
reader.stop()
done = {"stopped_in": time.monotonic() - t, "alive": reader.is_alive(), "skipped": dict(reader.skipped),
        "delivered": reader.delivered}
if mode == "report":
    done["metrics"] = generate_latest(registry).decode()
emit(done)
"""

# argv: case, then case arguments; sends one kind of packet and returns (a denied send may fail: ignored)
SEND = r"""
import socket, struct, sys, time
case, args = sys.argv[1], sys.argv[2:]
def udp(dst, port, data=b"x", family=socket.AF_INET, opts=()):
    s = socket.socket(family, socket.SOCK_DGRAM)
    for level, name, value in opts:
        s.setsockopt(level, name, value)
    try:
        s.sendto(data, (dst, port))
    except OSError:
        pass  # EPERM: dropped in our own output hook
if case == "tcp":  # one SYN: non-blocking connect, closed before the first retransmission (1 s)
    s = socket.socket(socket.AF_INET6 if ":" in args[0] else socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.connect_ex((args[0], int(args[1])))
    time.sleep(0.3)
    s.close()
elif case == "udp":
    udp(args[0], int(args[1]), family=socket.AF_INET6 if ":" in args[0] else socket.AF_INET)
elif case == "udp6-opts":  # a hop-by-hop and a destination options header (PadN: 2 + 4 bytes)
    pad = b"\0\0\x01\x04\0\0\0\0"
    udp(args[0], int(args[1]), family=socket.AF_INET6,
        opts=[(socket.IPPROTO_IPV6, 54, pad), (socket.IPPROTO_IPV6, 59, pad)])  # IPV6_HOPOPTS, IPV6_DSTOPTS
elif case == "udp6-big":  # larger than the link MTU: the kernel sends fragments
    udp(args[0], int(args[1]), b"y" * 3000, family=socket.AF_INET6)
elif case == "icmp":  # an echo request, through a raw socket
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    body = struct.pack(">BBHHH", 8, 0, 0, 1, 1) + b"ping"
    csum = sum(struct.unpack(">6H", body))
    csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
    s.sendto(body[:2] + struct.pack(">H", csum) + body[4:], (args[0], 0))
elif case == "sctp":  # an SCTP common header and an INIT-shaped chunk, through a raw socket (no sctp module)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
    s.sendto(struct.pack(">HHII", 5000, int(args[1]), 0, 0) + b"\x01\0\0\x14" + b"\0" * 16, (args[0], 0))
elif case == "flood":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t = time.monotonic()
    for _ in range(int(args[2])):
        s.sendto(b"x", (args[0], int(args[1])))
    print(time.monotonic() - t)
elif case == "forge":  # a packet message that decodes as a deny record, sent to the reader by a process
    ip = struct.pack(">BBHHHBBH", 0x45, 0, 28, 1, 0, 64, 17, 0) + socket.inet_aton("10.1.1.1") * 2 \
        + struct.pack(">HHHH", 1, 7999, 8, 0)
    def attr(kind, payload):
        raw = struct.pack("=HH", 4 + len(payload), kind) + payload
        return raw + b"\0" * (-len(raw) % 4)
    body = struct.pack("=BBH", 2, 0, 0) + attr(9, ip) + attr(10, b"pw-deny-in\0")
    n = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
    n.sendto(struct.pack("=IHHII", 16 + len(body), 0x400, 0, 0, 0) + body, (int(args[0]), 0))
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


class Reader:
    """The reader child and its JSON lines (a thread drains stdout, so the child never blocks on it)."""

    def __init__(self, ns: str, mode: str = "print", rcvbuf: int = 1 << 20, slow: float = 0.0):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", READER, str(GROUP), mode, str(rcvbuf), str(slow)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        self.lines: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        self.hello = self.next(20)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next(self, timeout: float = 5.0) -> dict:
        return self.lines.get(timeout=timeout)

    def take(self, n: int, timeout: float = 5.0) -> list[dict]:
        return [self.next(timeout) for _ in range(n)]

    def idle(self, seconds: float = 0.5) -> list[dict]:
        """Whatever arrives within `seconds` (expected: nothing)."""
        out = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                out.append(self.next(left))
            except queue.Empty:
                break
        return out

    def finish(self) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        assert rest and "stopped_in" in rest[-1], rest
        return {**rest[-1], "unexpected": rest[:-1]}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def pair():
    client, server = netns_add("pwdl-c"), netns_add("pwdl-s")
    readers: list[Reader] = []

    def reader(**kw) -> Reader:
        r = Reader(server, **kw)
        readers.append(r)
        return r

    try:
        sh("ip", "-n", client, "link", "add", "c0", "type", "veth", "peer", "name", "s0", "netns", server)
        for ns, dev, v4, v6 in ((client, "c0", C4, C6), (server, "s0", S4, S6)):
            sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield {"client": client, "server": server, "reader": reader}
    finally:
        for r in readers:
            r.kill()
        netns_del(client)  # the veth and the nft table go with the namespaces
        netns_del(server)


def nft(ns: str, text: str) -> None:
    nft_apply(text, f"/run/netns/{ns}")


def send(ns: str, *args: str) -> str:
    return sh("ip", "netns", "exec", ns, sys.executable, "-c", SEND, *args)


def rec(direction, src, dst, proto, port) -> dict:
    return {"direction": direction, "src": src, "dst": dst, "proto": proto, "port": port}


def test_denied_packets_are_decoded_exactly(pair):
    """Every protocol and header shape the decoder knows, from the real kernel, both prefixes; a
    message with another prefix and a message forged by a process are counted, never delivered; a
    second reader of the group is refused clearly; stop() is quick."""
    c, s = pair["client"], pair["server"]
    nft(s, f"""table inet pwdl-test {{
  chain input {{ type filter hook input priority 0
    ip saddr {C4} meta l4proto {{ tcp, udp, icmp, sctp }} log prefix "pw-deny-in" group {GROUP} drop
    ip6 saddr {C6} meta l4proto {{ tcp, udp }} log prefix "pw-deny-in" group {GROUP} drop
  }}
  chain output {{ type filter hook output priority 0
    ip daddr {C4} udp dport 7010 log prefix "pw-deny-out" group {GROUP} drop
    ip daddr {C4} udp dport 7011 log prefix "pw-other" group {GROUP} drop
  }}
}}
""")
    reader = pair["reader"]()
    assert reader.hello["ready"]
    second = pair["reader"]()
    assert second.hello["error"] == 1 and "nflog group 5: bind: EPERM" in second.hello["message"]

    cases = [
        (c, ("tcp", S4, "7001"), [rec("ingress", C4, S4, "tcp", 7001)]),
        (c, ("udp", S4, "7002"), [rec("ingress", C4, S4, "udp", 7002)]),
        (c, ("icmp", S4), [rec("ingress", C4, S4, "icmp", None)]),
        (c, ("sctp", S4, "7003"), [rec("ingress", C4, S4, "sctp", 7003)]),
        (c, ("tcp", S6, "7001"), [rec("ingress", C6, S6, "tcp", 7001)]),
        (c, ("udp", S6, "7002"), [rec("ingress", C6, S6, "udp", 7002)]),
        (c, ("udp6-opts", S6, "7004"), [rec("ingress", C6, S6, "udp", 7004)]),
        (s, ("udp", C4, "7010"), [rec("egress", S4, C4, "udp", 7010)]),
    ]
    for ns, args, want in cases:
        send(ns, *args)
        assert reader.take(len(want)) == want, args
    # 3000 bytes over a 1500-byte link: 3 fragments; only the first carries the UDP header
    send(c, "udp6-big", S6, "7005")
    assert reader.take(3) == [rec("ingress", C6, S6, "udp", 7005)] + [rec("ingress", C6, S6, "udp", None)] * 2
    send(s, "udp", C4, "7011")  # logged with another prefix: not ours
    send(s, "forge", str(reader.hello["portid"]))  # any process may write to our port
    assert reader.idle(0.5) == []
    done = reader.finish()
    assert done["skipped"] == {"foreign": 2} and done["delivered"] == 11 and not done["unexpected"]
    assert not done["alive"] and done["stopped_in"] < 1.0


def test_a_flood_yields_at_most_limit_plus_burst_messages(pair):
    c, s = pair["client"], pair["server"]
    nft(s, f"""table inet pwdl-test {{
  chain input {{ type filter hook input priority 0
    udp dport 7020 limit rate 10/second burst 20 packets counter log prefix "pw-deny-in" group {GROUP}
    udp dport 7020 counter drop
  }}
}}
""")
    reader = pair["reader"]()
    seconds = float(send(c, "flood", S4, "7020", "20000"))
    text = sh("ip", "netns", "exec", s, "nft", "list", "chain", "inet", "pwdl-test", "input")
    logged, dropped = (int(x) for x in re.findall(r"counter packets (\d+)", text))
    got = reader.take(logged)
    extra = reader.idle(0.5)
    done = reader.finish()
    print(f"\nflood of 20000 denied packets in {seconds:.2f} s: {dropped} dropped, {logged} logged, "
          f"{len(got) + len(extra)} decoded")
    assert dropped == 20000
    assert 20 <= logged <= 20 + 10 * (seconds + 1)
    assert got == [rec("ingress", C4, S4, "udp", 7020)] * logged and extra == []
    assert done["skipped"] == {} and done["delivered"] == logged


def test_the_reader_survives_socket_overruns(pair):
    """A stalled consumer with a small buffer under an unlimited log rule: the kernel drops messages
    (ENOBUFS), the reader counts that and goes on decoding what comes after."""
    c, s = pair["client"], pair["server"]
    nft(s, f"""table inet pwdl-test {{
  chain input {{ type filter hook input priority 0
    udp dport {{ 7030, 7031 }} log prefix "pw-deny-in" group {GROUP} drop
  }}
}}
""")
    reader = pair["reader"](rcvbuf=4096, slow=1.0)
    send(c, "udp", S4, "7030")  # the first record stalls the reader for 1 s
    send(c, "flood", S4, "7030", "5000")
    time.sleep(1.5)
    send(c, "udp", S4, "7031")
    got = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not got or got[-1]["port"] != 7031):
        got.append(reader.next())
    done = reader.finish()
    print(f"\noverrun: {len(got)} of 5002 records decoded, skipped {done['skipped']}")
    assert got[-1] == rec("ingress", C4, S4, "udp", 7031)
    assert done["skipped"].get("overrun", 0) >= 1 and len(got) < 5002
    assert set(done["skipped"]) == {"overrun"}


def test_reporter_logs_and_counts_real_denials(pair):
    """Reader and reporter together, as the daemon will host them: x/a -> y/b with y/deny-all."""
    c, s = pair["client"], pair["server"]
    nft(s, f"""table inet pwdl-test {{
  chain input {{ type filter hook input priority 0
    ip saddr {C4} meta l4proto {{ tcp, icmp }} log prefix "pw-deny-in" group {GROUP} drop
  }}
}}
""")
    reader = pair["reader"](mode="report")
    send(c, "tcp", S4, "80")
    send(c, "icmp", S4)
    assert reader.take(2) == [
        {"log": f"denied ingress tcp x/a {C4} -> y/b {S4}:80: ingress to y/b denied: namespace y pod b is isolated "
                "for ingress by policies [y/deny-all]; none allows x/a on TCP/80"},
        {"log": f"denied ingress icmp x/a {C4} -> y/b {S4}: y/b is isolated for ingress by policies [y/deny-all]; "
                "icmp can be allowed only by rules without ports"}]
    for _ in range(5):  # burst 3: the third is logged, the next ones counted as suppressed
        send(c, "icmp", S4)
    assert len(reader.take(1)) == 1 and reader.idle(0.5) == []
    metrics = reader.finish()["metrics"]
    assert 'podwire_policy_denied_total{direction="ingress",namespace="y"} 7.0' in metrics
    assert "podwire_policy_deny_log_suppressed_total 4.0" in metrics
