"""podwire's conflist on two containerd generations: 2.2 (libcni v1.3) and Debian's 1.6.20 (libcni v1.1).

A 2-node cluster of full nodes: node1 runs containerd 2.2, node2 Debian's containerd 1.6.20
(kubelet v1.34 on both). Each node gets the conflist node_daemon/cniconf.py renders, and as
/opt/cni/bin/podwire a wrapper that records each call's verb and the cniVersion the runtime
chose, then runs the frozen plugin. Issue 10 item 10: the conflist said only "1.1.0", and
containerd 1.6/1.7 failed every pod (`unsupported CNI result version "1.1.0"`); it now offers
cniVersion 1.0.0 plus cniVersions [1.0.0, 1.1.0], so 1.6 runs pods at 1.0.0 while 2.2 still
negotiates 1.1.0 (STATUS, GC). No CoreDNS, no node daemon: one pod per node is enough.
The machine's host-global sysctls are checked before, during and after, as in test_nodes.py
(kubelet on containerd 1.6 too).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import time

import pytest

from e2e import host_sysctls, images
from e2e import netns as ns
from e2e.cluster import Cluster
from e2e.node_runtime import KUBELET_SYSCTLS, node_ready, podwire_conflist

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.slow, pytest.mark.frozen]

NAMESPACE = "ctrd-versions"
RUNTIMES = {"node1": "2.2", "node2": "1.6"}
SYSCTLS_BEFORE: dict[str, str] = {}
# Records "VERB cniVersion" per call, then hands the same stdin to podwire.
TRACER = """#!/bin/sh
conf=$(cat)
echo "$CNI_COMMAND $(printf '%s' "$conf" | grep -o '"cniVersion": *"[^"]*"' | head -n 1 | cut -d'"' -f4)" >> {log}
printf '%s' "$conf" | exec {plugin}
"""


def wait(fn, timeout, what, interval=0.3):
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return value


def calls(node) -> list[str]:
    path = node.dir / "logs" / "cni-calls.log"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def cv(k8s_bin, podwire_dist):
    Cluster.sweep_abandoned()
    SYSCTLS_BEFORE.update(host_sysctls.snapshot())
    with Cluster(f"cv{os.getpid() % 100000}", "l2", 2, bin_dir=k8s_bin, full_nodes=True, coredns=False,
                 containerd=RUNTIMES, owner=ns.this_process("pytest")) as c:
        dist = c.dir / "podwire-dist"  # a private copy: another `make dist` must not swap it mid-run
        shutil.copytree(podwire_dist, dist, symlinks=True)
        for rt in c.runtimes.values():
            tracer = rt.dir / "podwire-traced"
            tracer.write_text(TRACER.format(log=rt.node.dir / "logs" / "cni-calls.log", plugin=dist / "podwire"))
            tracer.chmod(0o755)
            rt.install_cni(podwire_conflist(rt), {"podwire": tracer, **rt.support_plugins()})
        core = core_api(c)
        wait(lambda: all(node_ready(core.read_node(n)) for n in RUNTIMES), 90, "both nodes Ready")
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        wait(lambda: core.list_namespaced_service_account(NAMESPACE, field_selector="metadata.name=default").items,
             30, "default ServiceAccount")
        yield c
    after = host_sysctls.snapshot()
    print(f"\nhost sysctls after teardown: {host_sysctls.kubelet_view(after)}")
    assert host_sysctls.changed(SYSCTLS_BEFORE, after) == {}


def core_api(c):
    from kubernetes import client

    return client.CoreV1Api(c.api_client())


def run_pod(c, name: str, node: str):
    core = core_api(c)
    core.create_namespaced_pod(NAMESPACE, {
        "metadata": {"name": name},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": images.BUSYBOX, "command": ["sleep", "3600"]}]},
    })

    def running():
        pod = core.read_namespaced_pod(name, NAMESPACE)
        return pod if pod.status.phase == "Running" and pod.status.pod_ip else None

    try:
        return wait(running, 90, f"pod {name} Running")
    except AssertionError:
        events = c.kubectl("get", "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={name}",
                           check=False).stdout
        raise AssertionError(f"pod {name} not Running:\n{events}") from None


def test_each_node_runs_its_containerd(cv):
    nodes = {n.metadata.name: n for n in core_api(cv).list_node().items}
    assert nodes["node1"].status.node_info.container_runtime_version == "containerd://2.2.1"
    assert nodes["node2"].status.node_info.container_runtime_version.startswith("containerd://1.6.20")
    assert all(node_ready(n) for n in nodes.values())


def test_kubelets_leave_the_machines_kernel_settings_as_found(cv):
    now = host_sysctls.snapshot()
    print(f"\nhost sysctls before: {host_sysctls.kubelet_view(SYSCTLS_BEFORE)}"
          f"\n  with kubelets Ready on containerd 2.2 and 1.6: {host_sysctls.kubelet_view(now)}")
    assert host_sysctls.changed(SYSCTLS_BEFORE, now) == {}
    for rt in cv.runtimes.values():  # kubelet reads files of the node, whatever the host's values
        assert rt.proc_sys_mounts() == {f"/proc/sys/{k}" for k in KUBELET_SYSCTLS}, rt.node.name


def test_containerd_1_6_pod_gets_its_network_from_podwire_at_cni_1_0_0(cv):
    """The fix: a real pod, started by kubelet through containerd 1.6, wired by podwire."""
    node = cv.node("node2")
    pod = run_pod(cv, "on-1-6", "node2")
    assert ipaddress.ip_address(pod.status.pod_ip) in node.pod_cidr
    assert f"-> {pod.status.pod_ip}/{node.pod_cidr.prefixlen}" in (node.dir / "logs" / "podwire-cni.log").read_text()
    assert node.ping(pod.status.pod_ip)
    # libcni v1.1 ignores cniVersions and ran podwire at the conflist's cniVersion; no STATUS or GC
    assert "ADD 1.0.0" in calls(node)
    assert not [c for c in calls(node) if not c.endswith(" 1.0.0")], calls(node)
    assert not [c for c in calls(node) if c.startswith(("STATUS", "GC"))]
    core_api(cv).delete_namespaced_pod("on-1-6", NAMESPACE, grace_period_seconds=0)
    wait(lambda: "DEL 1.0.0" in calls(node), 60, "DEL through containerd 1.6")


def test_containerd_2_2_still_negotiates_1_1_0_and_asks_status(cv):
    """The same conflist on containerd 2.2: libcni v1.3 picks 1.1.0 from cniVersions, so it
    keeps asking podwire for STATUS (node readiness) and pods run at 1.1.0."""
    node = cv.node("node1")
    pod = run_pod(cv, "on-2-2", "node1")
    assert ipaddress.ip_address(pod.status.pod_ip) in node.pod_cidr
    seen = calls(node)
    assert "STATUS 1.1.0" in seen and "ADD 1.1.0" in seen, seen
    assert not [c for c in seen if not c.endswith(" 1.1.0")], seen
