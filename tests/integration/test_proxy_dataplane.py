"""The proxy against the real kernel: Proxier -> nft -> packets, inside namespaces we make.

    client (10.0.1.2) --veth-- node (10.0.1.1 | 10.0.2.1) --veth-- server (10.0.2.2-.4)

The node namespace gets the ruleset; "pods" (10.0.2.0/24, the cluster CIDR here) listen in
the server namespace and answer with the address they were reached on. The client sits
outside the cluster CIDR. Everything is torn down also when a test fails.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest

from proxy.conntrack import ConntrackRunner
from proxy.model import ProxyConfig
from proxy.proxier import Proxier
from proxy.sync import NftRunner
from tests.unit.test_proxy_plan import ep, port, slc, svc

pytestmark = [pytest.mark.root]

SERVER = r"""
import socket, sys, threading
ip, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
t = socket.socket(fam); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((ip, port)); t.listen(64)
u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((ip, port))
def tcp():
    while True:
        c, _ = t.accept(); c.sendall(ip.encode()); c.close()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
while True:
    d, a = u.recvfrom(100); u.sendto(ip.encode(), a)
"""

CLIENT = r"""
import json, socket, sys, time
proto, dst, port, n, sport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
out = []
for i in range(n):
    t0 = time.monotonic()
    try:
        if proto == "tcp":
            s = socket.create_connection((dst, port), timeout=3)
        else:
            v6 = ":" in dst
            s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::" if v6 else "0.0.0.0", sport)); s.settimeout(2); s.connect((dst, port)); s.send(b"x")
        data = s.recv(100); s.close()
        out.append(["ok", data.decode(), time.monotonic() - t0])
    except ConnectionRefusedError:
        out.append(["refused", "", time.monotonic() - t0])
    except (socket.timeout, TimeoutError):
        out.append(["timeout", "", time.monotonic() - t0])
    except OSError as e:
        out.append([type(e).__name__, str(e), time.monotonic() - t0])
print(json.dumps(out))
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@dataclass
class Topo:
    client: str
    node: str
    server: str
    procs: list

    def path(self, ns: str) -> str:
        return f"/run/netns/{ns}"

    def serve(self, ip: str, port: int) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", self.server, sys.executable, "-c", SERVER, ip, str(port)],
                             stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout.readline().strip() == "ready"

    def client_run(self, proto: str, dst: str, dport: int, n: int = 1, sport: int = 0) -> list:
        out = subprocess.run(["ip", "netns", "exec", self.client, sys.executable, "-c", CLIENT,
                              proto, dst, str(dport), str(n), str(sport)],
                             check=True, capture_output=True, text=True, timeout=60).stdout
        return json.loads(out)

    def proxier(self, conntrack: bool = True) -> Proxier:
        return Proxier("node-a", ProxyConfig(cluster_cidrs=(ipaddress.ip_network("10.0.2.0/24"),
                                                            ipaddress.ip_network("fd00:2::/64"))),
                       {4: NftRunner(self.path(self.node)), 6: NftRunner(self.path(self.node))},
                       conntrack_runner=ConntrackRunner(self.path(self.node)) if conntrack else None)


@contextlib.contextmanager
def topology():
    sfx = uuid.uuid4().hex[:6]
    t = Topo(f"pwp-c-{sfx}", f"pwp-n-{sfx}", f"pwp-s-{sfx}", [])
    made = []
    try:
        for ns in (t.client, t.node, t.server):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        sh("ip", "-n", t.node, "link", "add", "toc", "type", "veth", "peer", "name", "eth0", "netns", t.client)
        sh("ip", "-n", t.node, "link", "add", "tos", "type", "veth", "peer", "name", "eth0", "netns", t.server)
        for ns, dev, addrs in ((t.node, "toc", ["10.0.1.1/24", "fd00:1::1/64"]),
                               (t.node, "tos", ["10.0.2.1/24", "fd00:2::1/64"]),
                               (t.client, "eth0", ["10.0.1.2/24", "fd00:1::2/64"]),
                               (t.server, "eth0", ["10.0.2.2/24", "10.0.2.3/24", "10.0.2.4/24", "fd00:2::2/64"])):
            for a in addrs:
                sh("ip", "-n", ns, "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", t.client, "route", "add", "default", "via", "10.0.1.1")
        sh("ip", "-n", t.server, "route", "add", "default", "via", "10.0.2.1")
        sh("ip", "-n", t.client, "-6", "route", "add", "default", "via", "fd00:1::1")
        sh("ip", "-n", t.server, "-6", "route", "add", "default", "via", "fd00:2::1")
        sh("ip", "netns", "exec", t.node, "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.ipv6.conf.all.forwarding=1")
        yield t
    finally:
        for p in t.procs:
            p.kill()
            p.wait()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def topo():
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with topology() as t:
        yield t


WEB = svc("web", cip="10.96.0.10", type_="NodePort",
          ports=[port("http", "TCP", 80, "http", 30080), port("dns", "UDP", 53, "dns", 30053)])
WEB_PORTS = [{"name": "http", "protocol": "TCP", "port": 8080}, {"name": "dns", "protocol": "UDP", "port": 8080}]


def web_slice(*ips):
    return slc("web", [ep(ip) for ip in ips], ports=WEB_PORTS, name="web-x")


def answers(results) -> set[str]:
    assert all(r[0] == "ok" for r in results), results
    return {r[1] for r in results}


def test_clusterip_and_nodeport_tcp_udp_then_partial_sync(topo):
    for ip in ("10.0.2.2", "10.0.2.3"):
        topo.serve(ip, 8080)
    px = topo.proxier()
    px.on_service(WEB)
    px.on_service(svc("broken", cip="not-an-ip"))  # skipped, does not break the transaction
    px.on_slice(web_slice("10.0.2.2", "10.0.2.3"))
    assert px.sync()
    assert ("Service", "default", "broken") in px.skipped
    assert answers(topo.client_run("tcp", "10.96.0.10", 80, n=16)) == {"10.0.2.2", "10.0.2.3"}
    assert answers(topo.client_run("tcp", "10.0.1.1", 30080, n=16)) == {"10.0.2.2", "10.0.2.3"}
    assert answers(topo.client_run("udp", "10.96.0.10", 53, n=3)) <= {"10.0.2.2", "10.0.2.3"}
    assert answers(topo.client_run("udp", "10.0.1.1", 30053, n=3)) <= {"10.0.2.2", "10.0.2.3"}
    # a port the Service does not have is refused, not left to time out
    assert topo.client_run("tcp", "10.96.0.10", 81)[0][0] == "refused"

    px.on_slice(web_slice("10.0.2.3"))  # partial sync: one endpoint gone
    assert px.sync()
    partial = "kubeproxy_sync_partial_proxy_rules_duration_seconds_count"
    assert px.metrics.registry.get_sample_value(partial, {"ip_family": "IPv4"}) == 1
    assert answers(topo.client_run("tcp", "10.96.0.10", 80, n=8)) == {"10.0.2.3"}
    assert answers(topo.client_run("tcp", "10.0.1.1", 30080, n=8)) == {"10.0.2.3"}


def test_service_without_endpoints_refuses_at_once(topo):
    px = topo.proxier()
    px.on_service(WEB)
    assert px.sync()
    for proto, dst, dport in (("tcp", "10.96.0.10", 80), ("tcp", "10.0.1.1", 30080), ("udp", "10.96.0.10", 53)):
        (status, _, took), = topo.client_run(proto, dst, dport)
        assert status == "refused" and took < 1.0, (proto, dst, dport, status, took)


def test_client_ip_affinity_sticks(topo):
    for ip in ("10.0.2.2", "10.0.2.3", "10.0.2.4"):
        topo.serve(ip, 8080)
    px = topo.proxier()
    px.on_service(svc("web", cip="10.96.0.10", sessionAffinity="ClientIP",
                      sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}))
    px.on_slice(slc("web", [ep("10.0.2.2"), ep("10.0.2.3"), ep("10.0.2.4")], name="web-x"))
    assert px.sync()
    assert len(answers(topo.client_run("tcp", "10.96.0.10", 80, n=12))) == 1


def test_udp_conntrack_cleanup_when_an_endpoint_is_replaced(topo):
    for ip in ("10.0.2.2", "10.0.2.3", "10.0.2.4"):
        topo.serve(ip, 8080)
    px = topo.proxier(conntrack=False)
    px.on_service(WEB)
    px.on_slice(web_slice("10.0.2.2"))
    assert px.sync()
    assert answers(topo.client_run("udp", "10.96.0.10", 53, sport=40000)) == {"10.0.2.2"}
    # Control: without cleanup the old conntrack entry keeps the flow on the removed endpoint.
    px.on_slice(web_slice("10.0.2.3"))
    assert px.sync()
    assert answers(topo.client_run("udp", "10.96.0.10", 53, sport=40000)) == {"10.0.2.2"}
    # With cleanup, a flow follows the replacement on its very next datagram.
    px.conntrack = ConntrackRunner(topo.path(topo.node))
    assert answers(topo.client_run("udp", "10.96.0.10", 53, sport=40001)) == {"10.0.2.3"}
    px.on_slice(web_slice("10.0.2.4"))
    assert px.sync()
    assert answers(topo.client_run("udp", "10.96.0.10", 53, sport=40001)) == {"10.0.2.4"}
    # the unrelated (stale on purpose) flow of the control part was not touched: no flush-all
    assert answers(topo.client_run("udp", "10.96.0.10", 53, sport=40000)) == {"10.0.2.2"}


def test_udp_client_refused_then_served_when_a_service_gets_its_first_endpoint(topo):
    topo.serve("10.0.2.2", 8080)
    px = topo.proxier()
    px.on_service(WEB)
    assert px.sync()
    assert topo.client_run("udp", "10.96.0.10", 53, sport=40002)[0][0] == "refused"
    px.on_slice(web_slice("10.0.2.2"))
    assert px.sync()
    assert answers(topo.client_run("udp", "10.96.0.10", 53, sport=40002)) == {"10.0.2.2"}


def test_failed_partial_sync_is_followed_by_a_full_one(topo):
    topo.serve("10.0.2.2", 8080)
    topo.serve("10.0.2.3", 8080)
    px = topo.proxier()
    px.on_service(WEB)
    px.on_slice(web_slice("10.0.2.2"))
    assert px.sync()
    # Someone deletes our table behind our back: the partial sync fails, the next is full.
    sh("ip", "netns", "exec", topo.node, "nft", "delete", "table", "ip", "podwire-proxy")
    px.on_slice(web_slice("10.0.2.2", "10.0.2.3"))
    assert not px.sync()
    assert px.sync()
    assert px.metrics.sync_failures._value.get() == 1
    assert answers(topo.client_run("tcp", "10.96.0.10", 80, n=16)) == {"10.0.2.2", "10.0.2.3"}
    tables = sh("ip", "netns", "exec", topo.node, "nft", "list", "tables")
    assert "table ip podwire-proxy" in tables


def test_periodic_full_resync_repairs_a_tampered_table(topo):
    topo.serve("10.0.2.2", 8080)
    px = topo.proxier()
    px.on_service(WEB)
    px.on_slice(web_slice("10.0.2.2"))
    assert px.sync()
    sh("ip", "netns", "exec", topo.node, "nft", "flush", "map", "ip", "podwire-proxy", "service-ips")
    assert topo.client_run("tcp", "10.96.0.10", 80)[0][0] != "ok"
    assert px.sync()  # nothing changed in memory: nothing sent, the damage stays
    assert topo.client_run("tcp", "10.96.0.10", 80)[0][0] != "ok"
    px.request_full_sync()
    assert px.sync()
    assert answers(topo.client_run("tcp", "10.96.0.10", 80)) == {"10.0.2.2"}
    px.cleanup()
    px.cleanup()  # idempotent: nothing left is fine
    assert "podwire-proxy" not in sh("ip", "netns", "exec", topo.node, "nft", "list", "tables")


def test_dual_stack_clusterip_and_nodeport_over_ipv6(topo):
    topo.serve("10.0.2.2", 8080)
    topo.serve("fd00:2::2", 8080)
    px = topo.proxier()
    px.on_service(svc("web", cip=["10.96.0.10", "fd00:96::10"], type_="NodePort", ipFamilies=["IPv4", "IPv6"],
                      ports=[port("http", "TCP", 80, "http", 30080), port("dns", "UDP", 53, "dns", 30053)]))
    px.on_slice(web_slice("10.0.2.2"))
    px.on_slice(slc("web", [ep("fd00:2::2")], ports=WEB_PORTS, name="web-6", family="IPv6"))
    assert px.sync()
    assert answers(topo.client_run("tcp", "fd00:96::10", 80, n=3)) == {"fd00:2::2"}
    assert answers(topo.client_run("udp", "fd00:96::10", 53)) == {"fd00:2::2"}
    assert answers(topo.client_run("tcp", "fd00:1::1", 30080)) == {"fd00:2::2"}
    assert answers(topo.client_run("tcp", "10.96.0.10", 80)) == {"10.0.2.2"}
    assert topo.client_run("tcp", "fd00:96::10", 81)[0][0] == "refused"


def _objects(topo) -> set[str]:
    """Names of the chains and sets of our IPv4 table in the node namespace (read with nft itself)."""
    out = set()
    for kind in ("chains", "sets"):
        listing = json.loads(sh("ip", "netns", "exec", topo.node, "nft", "-j", "-t", "list", kind, "ip"))
        for item in listing["nftables"]:
            obj = item.get(kind[:-1])
            if obj and obj["table"] == "podwire-proxy":
                out.add(obj["name"])
    return out


def test_a_restart_deletes_what_a_service_deleted_meanwhile_left(topo):
    """Issue 12: a Service deleted while the daemon was down kept its chains forever. The first
    (full) sync of the next run flushes them, the next sync deletes them; traffic is served
    throughout."""
    topo.serve("10.0.2.2", 8080)
    first = topo.proxier()
    first.on_service(WEB)
    first.on_slice(web_slice("10.0.2.2"))
    first.on_service(svc("gone", cip="10.96.0.11", sessionAffinity="ClientIP"))
    first.on_slice(slc("gone", [ep("10.0.2.3")], name="gone-x"))
    assert first.sync()
    before = {n for n in _objects(topo) if "/gone/" in n}
    assert {n.split("-")[0] for n in before} == {"svc", "ep", "aff"}
    # a new process: `gone` was deleted while none ran
    second = topo.proxier()
    second.on_service(WEB)
    second.on_slice(web_slice("10.0.2.2"))
    assert second.sync()
    assert {n for n in _objects(topo) if "/gone/" in n} == before  # flushed, referenced until this sync
    listing = sh("ip", "netns", "exec", topo.node, "nft", "list", "chain", "ip", "podwire-proxy",
                 sorted(n for n in before if n.startswith("svc-"))[0])
    assert "goto" not in listing and "dnat" not in listing
    assert second.sync()  # nothing changed: still one transaction, the deletions
    assert not {n for n in _objects(topo) if "/gone/" in n}
    assert answers(topo.client_run("tcp", "10.96.0.10", 80)) == {"10.0.2.2"}


def test_a_removed_service_is_deleted_one_sync_later(topo):
    topo.serve("10.0.2.2", 8080)
    px = topo.proxier()
    px.on_service(WEB)
    px.on_slice(web_slice("10.0.2.2"))
    px.on_service(svc("gone", cip="10.96.0.11"))
    px.on_slice(slc("gone", [ep("10.0.2.2")], name="gone-x"))
    assert px.sync()
    chains = {n for n in _objects(topo) if "/gone/" in n}
    assert chains
    px.on_service(svc("gone", cip="10.96.0.11"), deleted=True)
    assert px.sync()
    assert {n for n in _objects(topo) if "/gone/" in n} == chains  # emptied, not yet deleted
    assert topo.client_run("tcp", "10.96.0.11", 80)[0][0] != "ok"
    assert px.sync()
    assert not {n for n in _objects(topo) if "/gone/" in n}
    px.request_full_sync()  # a full sync finds nothing stale: the listing is exact
    assert px.sync() and not px.syncers[4].stale


def _udp_entries(topo) -> list[tuple[str, str]]:
    """The node's UDP conntrack entries to the test's Service port, as `conntrack -L` shows them:
    (original source port, reply source = the endpoint it was DNATed to)."""
    out = sh("ip", "netns", "exec", topo.node, "conntrack", "-L", "-p", "udp", "--orig-port-dst", "53")
    entries = []
    for ln in out.splitlines():
        if ln.startswith("udp"):
            fields = [t.split("=", 1) for t in ln.split() if "=" in t]
            entries.append((dict(fields[:4])["sport"], [v for k, v in fields if k == "src"][1]))
    return entries


def test_udp_conntrack_entry_of_a_gone_endpoint_is_deleted_over_netlink(topo):
    """The proxy's stale-UDP cleanup through netkit.conntrack (one ctnetlink dump, deletes by
    tuple, no `conntrack` process): the entry DNATed to the endpoint that went away is deleted,
    the one to the endpoint that stays is kept."""
    for ip in ("10.0.2.2", "10.0.2.3"):
        topo.serve(ip, 8080)
    px = topo.proxier()
    px.on_service(WEB)
    px.on_slice(web_slice("10.0.2.2"))
    assert px.sync()
    assert answers(topo.client_run("udp", "10.96.0.10", 53, sport=40010)) == {"10.0.2.2"}
    px.on_slice(web_slice("10.0.2.2", "10.0.2.3"))
    assert px.sync()
    kept = [r for r in topo.client_run("udp", "10.96.0.10", 53, n=12) if r[1] == "10.0.2.3"]
    assert kept, "no flow reached the second endpoint"
    entries = _udp_entries(topo)
    assert ("40010", "10.0.2.2") in entries and any(ep == "10.0.2.3" for _, ep in entries), entries
    px.on_slice(web_slice("10.0.2.3"))  # 10.0.2.2 goes away
    calls = []
    real = subprocess.run
    subprocess.run = lambda *a, **k: (calls.append(a), real(*a, **k))[1]  # type: ignore[assignment]
    try:
        assert px.sync()
    finally:
        subprocess.run = real  # type: ignore[assignment]
    assert not [c for c in calls if "conntrack" in str(c)]  # no process per filter any more
    assert px.conntrack.deleted >= 1
    after = _udp_entries(topo)
    assert not any(ep == "10.0.2.2" for _, ep in after), after
    assert {e for e in entries if e[1] == "10.0.2.3"} <= set(after), after  # the other endpoint's flows stay
    assert answers(topo.client_run("udp", "10.96.0.10", 53, sport=40010)) == {"10.0.2.3"}
