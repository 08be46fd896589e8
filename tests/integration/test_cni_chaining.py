"""podwire inside a conflist, driven by libcni's own client (cnitool), chained with the Debian
reference plugins: prevResult must flow through and DEL must run in reverse."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess

import pytest

from node_daemon import cniconf
from tests.integration.cni_harness import REF_DIR, allocated, fetch_from_pod_server, in_ns, underlay

pytestmark = [pytest.mark.root, pytest.mark.frozen]

CNITOOL = os.path.join(os.environ.get("PODWIRE_CACHE", "/var/cache/podwire"), "tools", "bin", "cnitool")


@pytest.fixture
def cni_bin(tmp_path, frozen_plugin):
    """A CNI_PATH holding the reference plugins and podwire, as a node's /opt/cni/bin would."""
    if not os.access(CNITOOL, os.X_OK):
        pytest.fail(f"{CNITOOL} missing: run scripts/install-deps.sh")
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("portmap", "bandwidth", "loopback"):
        os.symlink(os.path.join(REF_DIR, name), d / name)
    os.symlink(frozen_plugin, d / "podwire")
    return str(d)


def cnitool(node, verb, net, pod, confdir, cni_path, cap_args=None, check=True):
    env = {"PATH": os.environ["PATH"], "NETCONFPATH": str(confdir), "CNI_PATH": cni_path, "CNI_IFNAME": "eth0"}
    if cap_args:
        env["CAP_ARGS"] = json.dumps(cap_args)
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{node}", CNITOOL, verb, net, f"/run/netns/{pod}"],
                          capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert proc.returncode == 0, (verb, proc.stdout, proc.stderr)
    return proc


def write_conflist(confdir, tmp, second: dict | None, version: str = "1.0.0") -> None:
    """The daemon's conflist with `second` chained after podwire. Debian's reference plugins (1.1.1)
    speak up to CNI 1.0.0, so chains with them declare that version alone (no cniVersions to
    negotiate up from), and podwire leaves portMappings to a chained portmap."""
    confdir.mkdir(exist_ok=True)
    conflist = cniconf.conflist((ipaddress.ip_network("10.244.8.0/24"),), 1500,
                                cniconf.CniSettings(log_file=f"{tmp}/cni.log", data_dir=f"{tmp}/ipam"),
                                name="chain", cni_version=version, cni_versions=(), state_dir=f"{tmp}/state",
                                port_mappings=False, chained=(second,) if second else ())
    (confdir / "10-chain.conflist").write_text(json.dumps(conflist))


def test_podwire_then_portmap(node, pods, tmp_path, cni_bin):
    confdir = tmp_path / "net.d"
    write_conflist(confdir, tmp_path, {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    pod, outside = pods(), pods()
    node_ip = underlay(node, outside, "pwc-ul1", "192.168.78")
    caps = {"portMappings": [{"hostPort": 8181, "containerPort": 80, "protocol": "tcp"}]}
    out = cnitool(node, "add", "chain", pod, confdir, cni_bin, caps)
    result = json.loads(out.stdout)
    assert result["ips"][0]["address"] == "10.244.8.2/24"  # podwire's result came through portmap
    assert allocated(str(tmp_path), "chain") == ["10.244.8.2"]
    # no CHECK here: Debian's portmap 1.1.1 fails CHECK on IPv4-only pods (it looks for its IPv6 chain)
    assert "via-portmap" in fetch_from_pod_server(pod, outside, node_ip, 8181, "via-portmap")
    cnitool(node, "del", "chain", pod, confdir, cni_bin, caps)
    assert allocated(str(tmp_path), "chain") == []
    assert "8181" not in in_ns(node, "iptables-save", "-t", "nat").stdout  # portmap cleaned up too


def test_podwire_then_bandwidth(node, pods, tmp_path, cni_bin):
    confdir = tmp_path / "net.d"
    write_conflist(confdir, tmp_path, {"type": "bandwidth", "capabilities": {"bandwidth": True}})
    pod = pods()
    caps = {"bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 100_000}}
    result = json.loads(cnitool(node, "add", "chain", pod, confdir, cni_bin, caps).stdout)
    host_if = result["interfaces"][1]["name"]
    assert allocated(str(tmp_path), "chain") == ["10.244.8.2"]
    qdisc = in_ns(node, "tc", "qdisc", "show", "dev", host_if).stdout
    assert "tbf" in qdisc, qdisc  # bandwidth found the host veth through podwire's prevResult
    assert cnitool(node, "check", "chain", pod, confdir, cni_bin, caps).returncode == 0
    cnitool(node, "del", "chain", pod, confdir, cni_bin, caps)
    assert allocated(str(tmp_path), "chain") == []
    assert in_ns(node, "ip", "link", "show", host_if, check=False).returncode != 0


def test_status_and_gc_through_libcni(node, pods, tmp_path, cni_bin):
    confdir = tmp_path / "net.d"
    write_conflist(confdir, tmp_path, None, "1.1.0")  # libcni sends STATUS and GC only to 1.1.0 configs
    keep, drop = pods(), pods()
    cnitool(node, "add", "chain", keep, confdir, cni_bin)
    cnitool(node, "add", "chain", drop, confdir, cni_bin)
    assert len(allocated(str(tmp_path), "chain")) == 2
    assert cnitool(node, "status", "chain", keep, confdir, cni_bin).returncode == 0
    # cnitool 1.3 runs GC with no valid attachments ("everything is garbage"): libcni first DELs every
    # cached attachment, then sends GC; the selective case is in test_cni_plugin.py
    cnitool(node, "gc", "chain", keep, confdir, cni_bin)
    assert allocated(str(tmp_path), "chain") == []
    cnitool(node, "del", "chain", keep, confdir, cni_bin)  # DEL after GC still succeeds
    cnitool(node, "del", "chain", drop, confdir, cni_bin)
    log = (tmp_path / "cni.log").read_text()
    assert "GC kept 0 attachment(s)" in log and log.count("released 1 address(es)") == 2


def teardown_module(module):
    shutil.rmtree("/var/lib/cni/results/none", ignore_errors=True)
