"""policy.conntrack against the real kernel: an allow removed -> its established flows keep working
(`ct state established` comes first) -> ConntrackCleaner -> they are dead, the rest is untouched.

    pod a 10.0.1.2 fd00:1::2 -+
    pod b 10.0.1.3 fd00:1::3 -+- podwire0 [node 10.0.1.1 fd00:1::1]
    pod c 10.0.1.4           -+

Same-node traffic is bridged and reaches the policy table through podwire0's own nf_call_iptables
(as in test_policy_dataplane); a DNAT rule stands in for the proxy (10.96.0.10:80 -> b:8080). Each
long-lived flow is a driver process holding one socket; a line on its stdin sends one datagram or
segment and reports whether the echo came back. Figures of the cleanup cost go to stdout (-s).
"""
from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import sys
import uuid
from dataclasses import dataclass, field

import pytest

from netkit.nft import apply as nft_apply
from policy.conntrack import ConntrackCleaner, conntrack_binary, parse_listing
from policy.ruleset import Allow, Ruleset, render_diff, render_full

pytestmark = [pytest.mark.root]

A = ipaddress.ip_address
N = ipaddress.ip_network
PA, PB, PC = A("10.0.1.2"), A("10.0.1.3"), A("10.0.1.4")
PA6, PB6 = A("fd00:1::2"), A("fd00:1::3")
SVC = "10.96.0.10"

ECHO = r"""
import socket, sys, threading
def sock(kind):
    s = socket.socket(socket.AF_INET6, kind); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); return s
def conn(c):
    with c:
        try:
            while (d := c.recv(100)):
                c.sendall(d)
        except OSError:  # the test's drivers end with a reset
            pass
def tcp(port):
    t = sock(socket.SOCK_STREAM); t.bind(("::", port)); t.listen(64)
    while True:
        threading.Thread(target=conn, args=(t.accept()[0],), daemon=True).start()
def udp(port):
    u = sock(socket.SOCK_DGRAM); u.bind(("::", port))
    while True:
        d, a = u.recvfrom(100); u.sendto(d, a)
for p in sys.argv[1:]:
    threading.Thread(target=tcp, args=(int(p),), daemon=True).start()
    threading.Thread(target=udp, args=(int(p),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# holds one socket; each stdin line (a timeout in seconds) sends one message and reports the echo
DRIVER = r"""
import socket, struct, sys
proto, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if proto == "tcp":
    s = socket.create_connection((dst, port), timeout=3)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # killed: one RST, no retransmits
else:
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM); s.connect((dst, port))
print("ready", flush=True)
n = 0
for line in sys.stdin:
    n += 1
    s.settimeout(float(line))
    want = b"m%d." % n
    try:
        s.send(want)
        got = b""
        while not got.endswith(want):
            d = s.recv(100)
            if not d:
                raise ConnectionResetError("closed")
            got += d
        print("ok", flush=True)
    except (socket.timeout, TimeoutError):
        print("timeout", flush=True)
    except OSError as e:
        print(type(e).__name__, flush=True)
"""


def sh(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, check=True, capture_output=True, text=True, timeout=60).stdout


@dataclass
class Node:
    ns: dict[str, str]
    procs: list = field(default_factory=list)

    def path(self) -> str:
        return f"/run/netns/{self.ns['n']}"

    def ip(self, role: str, *args: str) -> None:
        sh("ip", "-n", self.ns[role], *args)

    def nft(self, text: str) -> None:
        nft_apply(text, self.path())

    def conntrack(self, *args: str, stdin: str | None = None) -> str:
        return sh("ip", "netns", "exec", self.ns["n"], conntrack_binary(), *args, stdin=stdin)

    def spawn(self, role: str, script: str, *args: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[role], sys.executable, "-c", script, *args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return p

    def stop(self, procs: list) -> None:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
            self.procs.remove(p)


@pytest.fixture
def node(node_env):
    """The node; processes a test spawns die with the test (a dead flow's retransmits would come back
    under the next test's rules and add entries to its table)."""
    before = list(node_env.procs)
    try:
        yield node_env
    finally:
        node_env.stop([p for p in node_env.procs if p not in before])


def ping(p: subprocess.Popen, timeout: float = 1.5) -> str:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(f"{timeout}\n")
    p.stdin.flush()
    return p.stdout.readline().strip()


def pings(drivers: dict[str, subprocess.Popen]) -> dict[str, str]:
    """All at once: a dead flow costs its whole timeout."""
    for p in drivers.values():
        assert p.stdin is not None
        p.stdin.write("1.5\n")
        p.stdin.flush()
    return {k: p.stdout.readline().strip() for k, p in drivers.items() if p.stdout is not None}


def _build(t: Node) -> None:
    for role, ns in t.ns.items():
        sh("ip", "netns", "add", ns)
        t.ip(role, "link", "set", "lo", "up")
    t.ip("n", "link", "add", "podwire0", "type", "bridge")
    t.ip("n", "addr", "add", "10.0.1.1/24", "dev", "podwire0")
    t.ip("n", "addr", "add", "fd00:1::1/64", "dev", "podwire0", "nodad")
    t.ip("n", "link", "set", "podwire0", "up")
    for pod, addr, addr6 in (("a", PA, PA6), ("b", PB, PB6), ("c", PC, None)):
        t.ip("n", "link", "add", f"pw{pod}", "type", "veth", "peer", "name", "eth0", "netns", t.ns[pod])
        t.ip("n", "link", "set", f"pw{pod}", "master", "podwire0", "up")
        t.ip(pod, "addr", "add", f"{addr}/24", "dev", "eth0")
        if addr6:
            t.ip(pod, "addr", "add", f"{addr6}/64", "dev", "eth0", "nodad")
        t.ip(pod, "link", "set", "eth0", "up")
        t.ip(pod, "route", "add", "default", "via", "10.0.1.1")
    sh("ip", "netns", "exec", t.ns["n"], "sysctl", "-qw", "net.ipv4.ip_forward=1",
       "net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0")
    t.ip("n", "link", "set", "podwire0", "type", "bridge", "nf_call_iptables", "1", "nf_call_ip6tables", "1")
    t.nft("add table ip pwct-svc\n"
          "add chain ip pwct-svc dstnat { type nat hook prerouting priority -100 ; }\n"
          f"add rule ip pwct-svc dstnat ip daddr {SVC} tcp dport 80 dnat to {PB}:8080\n")
    t.spawn("b", ECHO, "8080", "9090", "7070")


@pytest.fixture(scope="module")
def node_env():
    tag = uuid.uuid4().hex[:6]
    t = Node({r: f"pwct-{tag}-{r}" for r in ("n", "a", "b", "c")})
    try:
        _build(t)
        yield t
    finally:
        t.stop(list(t.procs))
        for ns in t.ns.values():  # tables, bridge, veths and conntrack entries go with the namespaces
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def old_rules() -> Ruleset:
    """b isolated for ingress: a may reach 8080/tcp, 9090/udp (and over IPv6 8080/tcp); c 7070/tcp."""
    return Ruleset(
        isolated_ingress=frozenset({PB, PB6}),
        ingress=frozenset({Allow(PB, N(f"{PA}/32"), "tcp", 8080, 8080), Allow(PB, N(f"{PA}/32"), "udp", 9090, 9090),
                           Allow(PB, N(f"{PC}/32"), "tcp", 7070, 7070),
                           Allow(PB6, N(f"{PA6}/128"), "tcp", 8080, 8080)}))


def new_rules() -> Ruleset:
    """a loses everything towards b; c keeps 7070/tcp."""
    return Ruleset(isolated_ingress=frozenset({PB, PB6}),
                   ingress=frozenset({Allow(PB, N(f"{PC}/32"), "tcp", 7070, 7070)}))


def test_removed_allow_ends_established_flows(node):
    old, new = old_rules(), new_rules()
    node.nft(render_full(old))
    node.conntrack("-F")
    drivers = {
        "a->b tcp": node.spawn("a", DRIVER, "tcp", str(PB), "8080"),
        "a->b udp": node.spawn("a", DRIVER, "udp", str(PB), "9090"),
        "a->svc tcp (dnat b)": node.spawn("a", DRIVER, "tcp", SVC, "80"),
        "a6->b6 tcp": node.spawn("a", DRIVER, "tcp", str(PB6), "8080"),
        "c->b tcp (kept)": node.spawn("c", DRIVER, "tcp", str(PB), "7070"),
        "node->b tcp (probe)": node.spawn("n", DRIVER, "tcp", str(PB), "8080"),
    }
    all_ok = {k: "ok" for k in drivers}
    assert pings(drivers) == all_ok

    diff = render_diff(old, new)
    assert diff is not None and diff.startswith("delete element") and "add element" not in diff
    node.nft(diff)
    assert pings(drivers) == all_ok  # established: the removal alone changes nothing for them
    with pytest.raises(subprocess.CalledProcessError):  # while a new connection is refused at once
        sh("ip", "netns", "exec", node.ns["a"], sys.executable, "-c",
           f"import socket; socket.create_connection(('{PB}', 8080), timeout=1)")

    cleaner = ConntrackCleaner(node.path())
    deleted = cleaner(old, new)
    rep = cleaner.last
    print(f"\ncleanup of the live flows: {rep}")
    assert rep.errors == []
    assert deleted == rep.denied == 4  # a->b tcp, udp, via the Service, over IPv6 (and the probe is exempt)
    assert pings(drivers) == {**{k: "timeout" for k in drivers}, "c->b tcp (kept)": "ok", "node->b tcp (probe)": "ok"}
    assert pings(drivers)["c->b tcp (kept)"] == "ok"
    # the kept flows' entries are still there, none of a's towards b
    left, _, _ = parse_listing(node.conntrack("-L", "-f", "ipv4", "--reply-src", str(PB)))
    assert {(f.src, f.reply_sport) for f in left} == {(PC, 7070), (A("10.0.1.1"), 8080)}
    assert cleaner(new, new) == 0 and cleaner.last.listings == 0  # nothing removed: nothing listed


def test_first_sync_after_a_start_cleans_everything_denied(node):
    """old None: every isolated pod is checked (a change may have happened while the daemon was down)."""
    node.nft(render_full(old_rules()))
    node.conntrack("-F")
    held = node.spawn("a", DRIVER, "tcp", str(PB), "8080")
    kept = node.spawn("c", DRIVER, "tcp", str(PB), "7070")
    assert (ping(held), ping(kept)) == ("ok", "ok")
    node.nft(render_full(new_rules()))
    cleaner = ConntrackCleaner(node.path())
    assert cleaner(None, new_rules()) == 1, cleaner.last
    assert cleaner.last.affected == 2  # b and b6
    assert (ping(held), ping(kept)) == ("timeout", "ok")


def _fill(node: Node, n_peers: int, per_peer: int) -> None:
    """n_peers * per_peer ESTABLISHED tcp entries 10.0.3.x:port -> b:8080 (one `conntrack -R` batch)."""
    lines = []
    for i in range(n_peers):
        for j in range(per_peer):
            lines.append(f"-I -p tcp -s 10.0.3.{i} -d {PB} --sport {20000 + j} --dport 8080 "
                         f"--state ESTABLISHED -u ASSURED -t 600")
    node.conntrack("-R", "-", stdin="\n".join(lines) + "\n")


def test_cleanup_cost_with_1000_entries(node):
    """1,000 (then 10,000) entries towards b; the change keeps 10.0.3.0/25 and drops 10.0.3.128/25."""
    old = Ruleset(isolated_ingress=frozenset({PB}), ingress=frozenset({Allow(PB, N("10.0.3.0/24"), "tcp", 8080, 8080)}))
    new = Ruleset(isolated_ingress=frozenset({PB}), ingress=frozenset({Allow(PB, N("10.0.3.0/25"), "tcp", 8080, 8080)}))
    node.nft(render_full(new))
    figures = []
    for per_peer in (4, 40):
        for mode, above in (("per address", 256), ("full listing", 0)):
            node.conntrack("-F")
            _fill(node, 250, per_peer)
            total = len(parse_listing(node.conntrack("-L"))[0])
            assert total == 250 * per_peer
            cleaner = ConntrackCleaner(node.path(), full_list_above=above)
            deleted = cleaner(old, new)
            rep = cleaner.last
            assert rep.errors == [] and deleted == rep.denied == (250 - 128) * per_peer
            left, _, _ = parse_listing(node.conntrack("-L"))
            assert len(left) == total - deleted and all(int(f.src) < int(A("10.0.3.128")) for f in left)
            # nothing to delete: the cost of listing and judging only
            assert cleaner(old, new) == 0
            again = cleaner.last.seconds * 1000
            figures.append(f"{mode}: {total} entries, {deleted} deleted in {rep.seconds * 1000:.0f} ms (list+parse "
                           f"{rep.list_seconds * 1000:.0f}, delete {rep.delete_seconds * 1000:.0f}, listings "
                           f"{rep.listings}); again, nothing left to delete: {again:.0f} ms")
    # 1,000 entries in the table, one entry affected: the listing is filtered, the rest is not read
    node.conntrack("-F")
    _fill(node, 250, 4)
    one = Ruleset(isolated_ingress=frozenset({PB, PC}),
                  ingress=frozenset({Allow(PB, N("10.0.3.0/24"), "tcp", 8080, 8080)}))
    node.conntrack("-I", "-p", "tcp", "-s", str(PA), "-d", str(PC), "--sport", "1234", "--dport", "80",
                   "--state", "ESTABLISHED", "-t", "600")
    cleaner = ConntrackCleaner(node.path())
    assert cleaner(Ruleset(isolated_ingress=frozenset({PB}), ingress=one.ingress), one) == 1
    assert cleaner.last.listed == 1
    figures.append(f"1 affected pod with 1 entry among 1,001: {cleaner.last.seconds * 1000:.0f} ms")
    print("\n" + "\n".join(figures))


def test_failures_are_reported_not_raised(tmp_path):
    """A namespace that is gone: the sync goes on, the error is in `last` (and logged)."""
    cleaner = ConntrackCleaner(str(tmp_path / "gone"))
    assert cleaner(None, old_rules()) == 0
    assert cleaner.last.errors and cleaner.last.deleted == 0
