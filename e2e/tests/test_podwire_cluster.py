"""podwire installed like a user installs it, on real nodes: the demo's checks as assertions, a podwire
pod deleted under traffic, a node rebooted.

One routed 3-node cluster (node pairs use direct routes and VXLAN) with full nodes (containerd + kubelet),
no kube-proxy; podwire from `make image` + `kubectl apply -f manifests/podwire.yaml` (e2e/podwire_install.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from e2e import cgroups
from e2e.demo import Demo
from e2e.podwire_install import build_image, install

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.slow, pytest.mark.frozen]


@pytest.fixture(scope="module")
def demo():
    from e2e.cluster import Cluster

    image = build_image()
    with Cluster(f"w{os.getpid() % 100000}", "routed", 3, full_nodes=True) as cluster:
        install(cluster, image)
        d = Demo(cluster)
        d.deploy()
        yield d


def pods_by_name(d: Demo, *selector: str) -> dict:
    items = json.loads(d.kubectl("get", "pods", *selector, "-o", "json"))["items"]
    return {p["metadata"]["name"]: p for p in items}


def ping_summary(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def test_the_demo_checks_pass(demo):
    demo.results.clear()
    demo.run_checks()
    failed = [f"{label}: {detail}" for label, ok, detail in demo.results if not ok]
    assert not failed, failed
    assert len(demo.results) == 11
    assert any(label.startswith("LoadBalancer: EXTERNAL-IP") for label, _, _ in demo.results)


def test_deleting_a_podwire_pod_does_not_interrupt_pod_traffic(demo):
    client = pods_by_name(demo)["client"]
    node = client["spec"]["nodeName"]
    far = [p for p in pods_by_name(demo, "-l", "app=web").values() if p["spec"]["nodeName"] != node][0]
    ping = subprocess.Popen([str(demo.c.bin_dir / "kubectl"), "--kubeconfig", str(demo.c.kubeconfig), "exec", "client",
                             "--", "ping", "-i", "0.1", "-c", "150", "-W", "1", far["status"]["podIP"]],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1)
        old = [name for name, p in pods_by_name(demo, "-n", "podwire").items() if p["spec"]["nodeName"] == node]
        assert len(old) == 1
        demo.kubectl("-n", "podwire", "delete", "pod", old[0], "--wait=true", timeout=90)
        demo.kubectl("-n", "podwire", "rollout", "status", "daemonset/podwire", "--timeout=120s", timeout=140)
        new = [name for name, p in pods_by_name(demo, "-n", "podwire").items() if p["spec"]["nodeName"] == node]
        assert new and new != old
        out, _ = ping.communicate(timeout=60)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    sent, received = ping_summary(out)
    assert sent == 150 and received == sent, out[-500:]


def reboot(runtime) -> None:
    """What a power cut does to a node's workloads, then its runtime coming back: kubelet and containerd
    stop, every pod process and shim dies, containerd and kubelet start again on the same state."""
    for name in ("kubelet", "containerd"):
        runtime.procs.pop(name).stop()  # out of the table: its liveness check covers running ones
    for pid in cgroups.pids(runtime.cgroup_root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["pkill", "-KILL", "-f", f"containerd-shim-runc-v2 .*{runtime.containerd_socket}"],
                   capture_output=True)
    runtime._start_containerd()
    runtime.wait_containerd(time.monotonic() + 60)
    runtime.launch_kubelet()


def allocations(runtime) -> list[str]:
    d = runtime.tree_upper("/var/lib") / "cni" / "networks" / "podwire"
    return sorted(f.name for f in d.iterdir() if f.name[0].isdigit()) if d.exists() else []


def test_a_rebooted_node_gets_its_pods_networking_back(demo):
    client_node = pods_by_name(demo)["client"]["spec"]["nodeName"]
    victim = next(p for p in pods_by_name(demo, "-l", "app=web").values() if p["spec"]["nodeName"] != client_node)
    node = victim["spec"]["nodeName"]
    runtime = demo.c.node_runtimes()[node]
    before = victim["status"]["podIP"]
    reboot(runtime)

    deadline = time.monotonic() + 180
    while True:  # the same pod object comes back Ready with a new sandbox (restartCount grows)
        pod = pods_by_name(demo, "-l", "app=web").get(victim["metadata"]["name"])
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        if pod and statuses[0].get("ready") and statuses[0].get("restartCount", 0) >= 1 and pod["status"].get("podIP"):
            break
        assert time.monotonic() < deadline, json.dumps(pod or {}, indent=1)[-3000:]
        time.sleep(1)
    demo.kubectl("-n", "podwire", "rollout", "status", "daemonset/podwire", "--timeout=120s", timeout=140)
    demo.kubectl("wait", "--for=condition=Ready", "nodes", "--all", "--timeout=120s", timeout=140)

    after = pod["status"]["podIP"]
    ok, out = demo.retry(lambda: (lambda r: (r[0] and r[1] == victim["metadata"]["name"], r[1]))(
        demo.http_get(after, 8080)), seconds=30)
    assert ok, f"client -> rebooted node's pod {after} (was {before}): {out}"
    demo.results.clear()
    demo.run_checks()
    failed = [f"{label}: {detail}" for label, ok, detail in demo.results if not ok]
    assert not failed, failed
    # the dead sandboxes' addresses were released (kubelet's StopPodSandbox -> CNI DEL), none leaked
    live = {p["status"]["podIP"] for p in pods_by_name(demo, "-A").values()
            if p["spec"]["nodeName"] == node and not p["spec"].get("hostNetwork") and p["status"].get("podIP")}
    deadline = time.monotonic() + 60
    while sorted(live) != allocations(runtime) and time.monotonic() < deadline:
        time.sleep(1)
    assert allocations(runtime) == sorted(live)
