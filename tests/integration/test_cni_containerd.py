"""A real CNI client: containerd's `ctr run --cni` (go-cni inside ctr) wires containers with podwire.

containerd 2.2 built from its Go module (scripts/install-deps.sh): Debian's 1.6.20 vendors a libcni that
rejects CNI 1.1.0 results, and libcni 1.3 runs podwire's conflist at 1.1.0 (the version that gets STATUS and GC).

The test runs its own containerd (private root, state and socket) inside a node namespace. ctr reads
the CNI config from /etc/cni/net.d and plugins from /opt/cni/bin with no flag to change that, so every
ctr call runs in a private mount namespace where our directories are bind-mounted over those paths.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
import uuid

import pytest

from e2e.images import busybox_image
from node_daemon import cniconf
from tests.integration.cni_harness import REF_DIR, FixedRunDir, allocated, kill_container_cgroups

pytestmark = [pytest.mark.root, pytest.mark.frozen, pytest.mark.slow]

IMAGE = "docker.io/library/busybox:podwire-test"
CONTAINERD_BIN = os.path.join(os.environ.get("PODWIRE_CACHE", "/var/cache/podwire"),
                              "tools", "containerd-v2.2.1", "bin")
MOUNTPOINTS = ("/etc/cni/net.d", "/opt/cni/bin")


@pytest.fixture
def mountpoints():
    """The two fixed paths must exist to be bind-mounted over; remove what we created."""
    created = []
    for path in MOUNTPOINTS:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/" + "/".join(parts[:i])
            if not os.path.exists(p):
                os.mkdir(p)
                created.append(p)
    try:
        yield
    finally:
        for p in reversed(created):
            os.rmdir(p)


@pytest.fixture
def containerd(node, tmp_path, mountpoints, frozen_plugin):
    root = tmp_path / "ctrd"
    netd, bindir = root / "net.d", root / "bin"
    for d in (netd, bindir):
        d.mkdir(parents=True)
    os.symlink(frozen_plugin, bindir / "podwire")
    os.symlink(os.path.join(REF_DIR, "loopback"), bindir / "loopback")
    # the daemon's conflist (libcni 1.3 in ctr picks 1.1.0 from its cniVersions), paths in tmp_path
    conflist = cniconf.conflist((ipaddress.ip_network("10.244.5.0/24"),), 1450,
                                cniconf.CniSettings(log_file=f"{tmp_path}/cni.log", data_dir=f"{tmp_path}/ipam"),
                                name="podwire-ctr", state_dir=f"{tmp_path}/state")
    (netd / "10-podwire.conflist").write_text(json.dumps(conflist))
    sock = root / "containerd.sock"
    namespace = f"podwire-test-{uuid.uuid4().hex[:8]}"  # runc keeps state per namespace under /run/containerd
    config = root / "config.toml"
    config.write_text(f"""version = 3
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "native"
""")
    if not os.access(os.path.join(CONTAINERD_BIN, "containerd"), os.X_OK):
        pytest.fail(f"{CONTAINERD_BIN}/containerd missing: run scripts/install-deps.sh")
    env = {**os.environ, "PATH": f"{CONTAINERD_BIN}:{os.environ['PATH']}"}  # its shim and ctr come first
    rundir = FixedRunDir()
    log = open(root / "containerd.log", "w")
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{node}", "containerd", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        assert sock.exists(), (root / "containerd.log").read_text()[-2000:]

        def ctr(*args, check=True, timeout=60):
            mounts = " && ".join(f"mount --bind {src} {dst}"
                                 for src, dst in zip((netd, bindir), MOUNTPOINTS, strict=True))
            cmd = " ".join(["exec", "nsenter", f"--net=/run/netns/{node}", "ctr", "--address", str(sock),
                            "--namespace", namespace, *[f"'{a}'" for a in args]])
            r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", f"{mounts} && {cmd}"],
                               capture_output=True, text=True, timeout=timeout, env=env)
            if check:
                assert r.returncode == 0, (args, r.stdout, r.stderr)
            return r

        image = busybox_image(root / "busybox.tar", IMAGE)
        ctr("images", "import", "--snapshotter", "native", image)
        yield ctr
    finally:
        _cleanup(node, sock, namespace, env)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        # shims outlive containerd by design: end ours, then runc's state and our mounts
        subprocess.run(["pkill", "-KILL", "-f", f"containerd-shim-runc-v2 -namespace {namespace}"], capture_output=True)
        kill_container_cgroups(namespace)
        shutil.rmtree(f"/run/containerd/runc/{namespace}", ignore_errors=True)
        rundir.clean()
        subprocess.run(["sh", "-c", f"grep {root} /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l"],
                       capture_output=True)


def _cleanup(node, sock, namespace, env) -> None:
    """Kill, delete (ctr runs no CNI DEL for these; the test namespaces and tmp dirs go anyway)."""
    def ctr(*args):
        return subprocess.run(["nsenter", f"--net=/run/netns/{node}", "ctr", "--address", str(sock), "-n", namespace,
                               *args], capture_output=True, text=True, env=env, timeout=30)

    for task in ctr("tasks", "ls", "-q").stdout.split():
        ctr("tasks", "kill", "-s", "KILL", task)
        for _ in range(50):
            if ctr("tasks", "delete", task).returncode == 0:
                break
            time.sleep(0.1)
    for container in ctr("containers", "ls", "-q").stdout.split():
        ctr("containers", "delete", container)


def test_containers_get_addresses_from_podwire_and_reach_each_other(containerd, node, tmp_path):
    ctr = containerd
    ctr("run", "-d", "--cni", "--snapshotter", "native", IMAGE, "server", "sh", "-c",
        "while true; do nc -l -p 80 -e echo hello-from-container; done")
    server_ip = None
    for _ in range(50):
        ips = allocated(str(tmp_path), "podwire-ctr")
        if ips:
            server_ip = ips[0]
            break
        time.sleep(0.1)
    assert server_ip == "10.244.5.2"
    r = ctr("run", "--rm", "--cni", "--snapshotter", "native", IMAGE, "client", "sh", "-c",
            f"ip -o addr show eth0; ip link show eth0; nc -w 3 {server_ip} 80")
    assert "10.244.5.3/24" in r.stdout, r.stdout  # the client got the next address from podwire
    assert "mtu 1450" in r.stdout
    assert "hello-from-container" in r.stdout, r.stdout
    # `ctr run --rm` ran DEL for the client: its address is back in the pool
    assert allocated(str(tmp_path), "podwire-ctr") == ["10.244.5.2"]
    log = (tmp_path / "cni.log").read_text()
    assert "ADD" in log and "DEL" in log
