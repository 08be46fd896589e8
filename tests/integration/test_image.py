"""The podwire image in a real containerd: imported as `kind load` does, the daemon and the userland run
inside it, the init container installs a working CNI plugin, and what the DaemonSet's securityContext
relies on (NET_ADMIN, read-only /proc/sys) holds.

Fixtures (also used by test_image_layout.py): the frozen bundles, the image tarball, a private containerd.

The private containerd follows test_cni_containerd.py: its own root, state and socket under the
test's tmp dir, a unique containerd namespace (runc keeps state per namespace under
/run/containerd), and afterwards the shims of that namespace are ended by pid. It runs inside a
network namespace of our own, and `ctr run` gives each container a fresh empty network namespace
(no --net-host, no CNI), so nothing the containers do reaches the machine's network.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.integration.cni_harness import kill_container_cgroups

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAEMON = os.path.join(ROOT, "dist", "podwire-daemon", "podwire-daemon")
PLUGIN = os.path.join(ROOT, "dist", "podwire", "podwire")
CONTAINERD_BIN = os.path.join(os.environ.get("PODWIRE_CACHE", "/var/cache/podwire"), "tools", "containerd-v2.2.1",
                              "bin")
IMAGE = "docker.io/podwire/podwire:pwm-test"
DEFAULT_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
                "CAP_KILL", "CAP_AUDIT_WRITE")  # containerd's default set
DAEMON_SOURCES = ("node_daemon", "proxy", "netkit", "packaging/podwire-daemon.spec", "packaging/daemon_entry.py")


def _newest(paths) -> float:
    newest = 0.0
    for p in paths:
        p = os.path.join(ROOT, p)
        if os.path.isfile(p):
            newest = max(newest, os.stat(p).st_mtime)
        for base, _, files in os.walk(p):
            newest = max([newest, *(os.stat(os.path.join(base, f)).st_mtime for f in files if f.endswith(".py"))])
    return newest


def build_daemon() -> str:
    """dist/podwire-daemon, rebuilt when a source is newer (what a `make dist-daemon` would do)."""
    if not os.access(DAEMON, os.X_OK) or os.stat(DAEMON).st_mtime < _newest(DAEMON_SOURCES):
        subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN", "--distpath",
                        "dist", "--workpath", "build/pyinstaller", "packaging/podwire-daemon.spec"],
                       cwd=ROOT, check=True, capture_output=True)
        os.utime(DAEMON)
    return DAEMON


@pytest.fixture(scope="session")
def frozen_bundles() -> tuple[str, str]:
    subprocess.run(["make", "-s", "dist"], cwd=ROOT, check=True, capture_output=True)
    return build_daemon(), PLUGIN


@pytest.fixture(scope="session")
def image_tar(frozen_bundles, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("image") / "podwire-image.tar")
    r = subprocess.run([sys.executable, "packaging/image.py", "--out", out, "--name", IMAGE], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def _shim_pids(namespace: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and namespace.encode() in argv:
            pids.append(int(pid))
    return pids


class Ctr:
    def __init__(self, sock: str, namespace: str, netns: str, env: dict):
        self.sock, self.namespace, self.netns, self.env = sock, namespace, netns, env

    def __call__(self, *args, check=True, timeout=60) -> subprocess.CompletedProcess:
        r = subprocess.run(["nsenter", f"--net=/run/netns/{self.netns}", "ctr", "--address", self.sock,
                            "--namespace", self.namespace, *args], capture_output=True, text=True,
                           timeout=timeout, env=self.env)
        if check:
            assert r.returncode == 0, f"{args}\nstdout: {r.stdout}\nstderr: {r.stderr}"
        return r

    def run(self, *args, opts=(), check=True) -> subprocess.CompletedProcess:
        """`ctr run --rm` of the test image with a fresh container id."""
        return self(*["run", "--rm", "--snapshotter", "native", *opts, IMAGE, "pwm-" + secrets.token_hex(4), *args],
                    check=check)


@contextlib.contextmanager
def running_containerd(netns: str, root, image_tar: str):
    """A private containerd in network namespace `netns` with the image imported; yields a Ctr.
    Everything it made is gone afterwards (tasks, containers, shims, runc state, mounts)."""
    if not os.access(os.path.join(CONTAINERD_BIN, "containerd"), os.X_OK):
        pytest.fail(f"{CONTAINERD_BIN}/containerd missing: run scripts/install-deps.sh")
    root.mkdir()
    sock = str(root / "containerd.sock")
    namespace = f"podwire-image-test-{uuid.uuid4().hex[:8]}"
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
    env = {**os.environ, "PATH": f"{CONTAINERD_BIN}:{os.environ['PATH']}"}
    from tests.integration.cni_harness import FixedRunDir

    rundir = FixedRunDir()
    log = open(root / "containerd.log", "w")
    proc = None
    ctr = Ctr(sock, namespace, netns, env)
    try:
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", "containerd", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.1)
        assert os.path.exists(sock), (root / "containerd.log").read_text()[-2000:]
        ctr("images", "import", "--snapshotter", "native", image_tar, timeout=180)
        yield ctr
    finally:
        for task in ctr("tasks", "ls", "-q", check=False).stdout.split():
            ctr("tasks", "kill", "-s", "KILL", task, check=False)
            for _ in range(50):
                if ctr("tasks", "delete", task, check=False).returncode == 0:
                    break
                time.sleep(0.1)
        for container in ctr("containers", "ls", "-q", check=False).stdout.split():
            ctr("containers", "delete", container, check=False)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        for pid in _shim_pids(namespace):  # shims outlive containerd by design
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kill_container_cgroups(namespace)
        shutil.rmtree(f"/run/containerd/runc/{namespace}", ignore_errors=True)
        rundir.clean()
        subprocess.run(["sh", "-c", f"grep ' {root}' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l"],
                       capture_output=True)


@pytest.fixture
def containerd(tmp_path, image_tar):
    netns = "pwm-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        with running_containerd(netns, tmp_path / "ctrd", image_tar) as ctr:
            yield ctr
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


# ---- the tests ---------------------------------------------------------------------------------
pytestmark = [pytest.mark.root, pytest.mark.frozen, pytest.mark.slow]


def test_daemon_and_userland_run_in_the_image(containerd):
    r = containerd.run("podwire-daemon", "--help")
    assert "usage: podwire-daemon" in r.stdout and "--cluster-cidr" in r.stdout
    assert containerd.run("nft", "--version").stdout.startswith("nftables v")
    assert "conntrack v" in containerd.run("conntrack", "--version").stdout
    assert "iproute2" in containerd.run("ip", "-V").stdout
    # the image's entrypoint is the daemon: started for real with nothing to talk to (no service
    # account, no API server), it fails at once with one clear line instead of a traceback
    r = containerd.run("/usr/local/bin/podwire-daemon", "--node-name", "n1", check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    out = r.stdout + r.stderr
    assert "fatal: ConfigException: Service host/port is not set" in out and "Traceback" not in out


def test_nft_and_conntrack_work_with_net_admin(containerd):
    """The userland is complete (libraries, /etc/protocols): the daemon's own egress ruleset goes in
    through `nft -f -` as the daemon sends it, and conntrack reads the table. In the container's netns."""
    import ipaddress

    from node_daemon import egress

    ruleset = egress.render([ipaddress.ip_network("10.244.0.0/16")], [ipaddress.ip_address("172.30.0.11")])
    script = f"nft -f - <<'EOF'\n{ruleset}EOF\nnft list table ip podwire-egress && conntrack -L"
    r = containerd.run("sh", "-c", script, opts=("--cap-add", "CAP_NET_ADMIN"))
    assert "masquerade fully-random" in r.stdout and "172.30.0.11" in r.stdout
    assert "flow entries have been shown" in r.stderr


def test_what_the_daemonset_security_context_relies_on(containerd):
    """NET_ADMIN is enough for links and rulesets, but not for /proc/sys/net: runtimes mount /proc/sys
    read-only in every unprivileged container, which is why forwarding is switched on by a privileged
    init container in manifests/ and the daemon itself runs with capabilities only."""
    caps = ("--cap-add", "CAP_NET_ADMIN", "--cap-add", "CAP_NET_RAW")
    # full path: busybox's sh runs its own `ip` applet before searching PATH
    r = containerd.run("sh", "-c", "/usr/bin/ip link add pwm0 type vxlan id 1 dstport 8472 && "
                       "/usr/bin/ip -o -d link show pwm0", opts=caps)
    assert "vxlan id 1" in r.stdout
    r = containerd.run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward", opts=caps, check=False)
    assert r.returncode != 0 and "Read-only file system" in r.stderr, (r.stdout, r.stderr)
    r = containerd.run("sh", "-c", "sysctl -w net.ipv4.ip_forward=1 && cat /proc/sys/net/ipv4/ip_forward",
                       opts=("--privileged",))
    assert r.stdout.strip().endswith("1")


def test_init_container_installs_a_working_plugin(containerd, tmp_path):
    target = tmp_path / "opt-cni-bin"
    target.mkdir()
    (target / "loopback").write_text("someone else's plugin\n")
    # as in the DaemonSet: no capabilities at all (root writing a root-owned directory needs none)
    # (ctr has no "drop ALL": every capability of containerd's default set is dropped by name)
    drop = [x for cap in DEFAULT_CAPS for x in ("--cap-drop", cap)]
    mount = ("--mount", f"type=bind,src={target},dst=/host/opt/cni/bin,options=rbind:rw", *drop)
    for _ in range(2):  # a restarted init container finds its own install and keeps it
        r = containerd.run("sh", "-c", "grep CapEff /proc/self/status && /opt/podwire/install-cni.sh", opts=mount)
        assert "CapEff:\t0000000000000000" in r.stdout and "podwire CNI plugin" in r.stdout
    link = target / "podwire"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    bundles = [p.name for p in target.iterdir() if p.name.startswith("podwire-")]
    assert len(bundles) == 1 and os.readlink(link) == f"{bundles[0]}/podwire"
    assert (target / "loopback").read_text() == "someone else's plugin\n"
    # the installed plugin, called on this host as a runtime would
    r = subprocess.run([str(link)], env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}, input="",
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "1.1.0" in json.loads(r.stdout)["supportedVersions"]
    # a stale bundle of an earlier version is replaced, the link moved, the old folder removed
    old = target / "podwire-000000000000"
    shutil.copytree(target / bundles[0], old, symlinks=True)
    (old / ".bundle-id").write_text("000000000000\n")
    link.unlink()
    os.symlink("podwire-000000000000/podwire", link)
    containerd.run("/opt/podwire/install-cni.sh", opts=mount)
    assert os.readlink(link) == f"{bundles[0]}/podwire" and not old.exists()
