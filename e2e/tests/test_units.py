"""Fast tests of the harness's pure parts and its process plumbing (no root, no cluster)."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import threading
import time

import pytest
from cryptography import x509

from e2e import build, topology
from e2e import netns as ns
from e2e.control_plane import FORWARDER, kubeconfig
from e2e.ledger import Ledger
from e2e.pki import CertificateAuthority

UPSTREAM_GOMOD = """\
module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

require (
\tgithub.com/blang/semver/v4 v4.0.0
\tk8s.io/api v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/kubectl => ./staging/src/k8s.io/kubectl
)
"""


def test_consumer_gomod_replaces_staging_modules_with_published_versions():
    source = build.Source("kubernetes", "k8s.io/kubernetes", "v1.34.10")
    assert build.consumer_gomod(source, UPSTREAM_GOMOD) == (
        "module podwire.local/build/kubernetes\n\n"
        "go 1.24.0\ngodebug default=go1.24\n\n"
        "require k8s.io/kubernetes v1.34.10\n\n"
        "replace (\n"
        "\tk8s.io/api => k8s.io/api v0.34.10\n"
        "\tk8s.io/kubectl => k8s.io/kubectl v0.34.10\n"
        ")\n"
    )


def test_consumer_gomod_without_staging_has_no_replace():
    source = build.Source("coredns", "github.com/coredns/coredns", "v1.12.4")
    text = build.consumer_gomod(source, "module github.com/coredns/coredns\n\ngo 1.24.0\n")
    assert "replace" not in text and "require github.com/coredns/coredns v1.12.4" in text


def test_k8s_ldflags_set_both_version_packages():
    flags = build._k8s_ldflags("v1.34.10")
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {pkg}.gitVersion=v1.34.10" in flags
        assert f"-X {pkg}.gitMajor=1" in flags and f"-X {pkg}.gitMinor=34" in flags


def test_every_target_has_a_unique_binary_name():
    names = [t.binary for t in build.TARGETS]
    assert len(names) == len(set(names))
    assert {"kube-apiserver", "kubelet", "kubectl", "etcd", "coredns"} <= set(names)


def test_stamp_decides_freshness(tmp_path):
    target = build.TARGETS[0]
    assert build.missing([target], tmp_path) == [target]
    binary = build.binary(target.binary, tmp_path)
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert not build.is_fresh(target, tmp_path)  # no stamp: built by someone else
    build._stamp_path(target, tmp_path).write_text(json.dumps(build._stamp_of(target)))
    assert build.missing([target], tmp_path) == []
    other = build.Target(target.binary, build.Source("kubernetes", "k8s.io/kubernetes", "v1.34.0"), target.package)
    assert not build.is_fresh(other, tmp_path)  # a different version is a different build


def test_l2_plan_puts_everyone_on_one_subnet():
    p = topology.plan("x", "l2", 3)
    assert [h.name for h in p.hosts] == ["cp", "node1", "node2", "node3", "outside"]
    assert {h.subnet for h in p.hosts} == {0}
    assert [str(h.address) for h in p.hosts] == [
        "172.30.0.2/24", "172.30.0.11/24", "172.30.0.12/24", "172.30.0.13/24", "172.30.0.100/24"]
    assert all(str(h.gateway) == "172.30.0.1" for h in p.hosts)
    assert p.netns("node1") == "pwe-x-node1" and p.router_netns is None


def test_routed_plan_alternates_nodes_between_subnets():
    p = topology.plan("x", "routed", 3)
    by_name = {h.name: h for h in p.hosts}
    assert [by_name[n].subnet for n in ("cp", "node1", "node2", "node3", "outside")] == [0, 0, 1, 0, 1]
    assert str(by_name["node2"].address) == "172.30.2.12/24" and str(by_name["node2"].gateway) == "172.30.2.1"
    assert p.router_netns == "pwe-x-router"


def test_plan_rejects_unknown_shapes():
    with pytest.raises(ValueError):
        topology.plan("x", "mesh", 2)
    with pytest.raises(ValueError):
        topology.plan("x", "l2", 2, "ipv5")


def test_ipv6_plan_mirrors_the_ipv4_one_and_dual_has_both_ipv4_first():
    v4, v6, dual = (topology.plan("x", "routed", 3, f) for f in ("ipv4", "ipv6", "dual"))
    for a, b in zip(v4.hosts, v6.hosts, strict=True):  # the same host reads the same in both families
        assert str(b.address) == "fd00:" + str(a.address.ip).replace(".", ":").rsplit(":", 1)[0] \
            + "::" + str(a.address.ip).rsplit(".", 1)[1] + "/64"
        assert b.addresses == (b.address,) and b.gateway.version == 6
    assert [str(n) for n in v6.subnets] == ["fd00:172:30:1::/64", "fd00:172:30:2::/64"]
    node2 = {h.name: h for h in dual.hosts}["node2"]
    assert [str(a) for a in node2.addresses] == ["172.30.2.12/24", "fd00:172:30:2::12/64"]
    assert [str(g) for g in node2.gateways] == ["172.30.2.1", "fd00:172:30:2::1"]
    assert node2.address == node2.addresses[0] and dual.subnets == v4.subnets  # IPv4 primary, as kind's
    assert [str(g) for g in dual.gateways(0)] == ["172.30.1.1/24", "fd00:172:30:1::1/64"]
    assert v4.hosts == topology.plan("x", "routed", 3).hosts  # the default is what it always was


def test_apiserver_certificate_has_the_sans_clients_use():
    ca = CertificateAuthority()
    pem, _ = ca.issue("kube-apiserver", client=False, server_names=("kubernetes.default.svc",),
                      server_ips=("127.0.0.1", "10.96.0.1"))
    cert = x509.load_pem_x509_certificate(pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["kubernetes.default.svc"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(a) for a in ("127.0.0.1", "10.96.0.1")]
    cert.verify_directly_issued_by(ca.cert)


def test_client_certificate_carries_groups_as_organizations():
    ca = CertificateAuthority()
    cert = x509.load_pem_x509_certificate(ca.issue("system:node:node1", orgs=("system:nodes",))[0])
    assert cert.subject.rfc4514_string() == "CN=system:node:node1,O=system:nodes"


def test_kubeconfig_embeds_credentials():
    doc = kubeconfig("https://127.0.0.1:1234", b"CA", b"CERT", b"KEY", "admin")
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1234"
    assert doc["users"][0]["user"]["client-key-data"] == "S0VZ"


def test_proc_stop_kills_only_the_recorded_process(tmp_path):
    proc = ns.spawn("sleep", ["sleep", "60"], tmp_path / "sleep.log")
    impostor = ns.Proc("sleep", proc.pid, proc.start_time + 1)  # same pid, other start time
    impostor.stop()
    assert proc.alive()
    proc.stop()
    assert not proc.alive()


def test_ledger_teardown_stops_processes_and_removes_paths(tmp_path):
    ledger = Ledger(tmp_path / "state" / "ledger.json")
    work = tmp_path / "work"
    work.mkdir()
    ledger.dir(work)
    proc = ns.spawn("sleep", ["sleep", "60"], work / "sleep.log")
    ledger.proc(proc)
    # A second process (e.g. `cluster down`) sees the same ledger.
    assert [e["kind"] for e in Ledger(ledger.path).entries] == ["path", "proc"]
    assert Ledger(ledger.path).teardown() == []
    assert not proc.alive() and not work.exists() and not ledger.path.exists()
    assert Ledger(ledger.path).teardown() == []  # idempotent


def _echo_server():
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data.upper())
    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_forwarder_copies_both_ways_and_half_closes():
    upstream = _echo_server()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(FORWARDER), "--fd", str(listener.fileno()),
         "--connect", f"127.0.0.1:{upstream.getsockname()[1]}"],
        pass_fds=(listener.fileno(),),
    )
    listener.close()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"hello " * 20000)
            conn.shutdown(socket.SHUT_WR)  # half-close: the reply must still arrive
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
        assert received == b"HELLO " * 20000
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
        upstream.close()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("forwarder still listening after SIGTERM")
