"""Running the podwire CNI executable the way a runtime does, inside namespaces the tests own."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

from node_daemon import cniconf

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FROZEN = os.path.join(ROOT, "dist", "podwire", "podwire")
REF_DIR = "/usr/lib/cni"


def netns_add(prefix: str = "pwc") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def netns_del(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def in_ns(ns: str, *cmd: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *cmd], capture_output=True, text=True,
                          check=check, timeout=timeout, **kw)


class CNIResult:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.json = json.loads(proc.stdout) if proc.stdout.strip() else None

    def __repr__(self):
        return f"CNIResult(rc={self.rc}, stdout={self.stdout!r}, stderr={self.stderr[-500:]!r})"


class Plugin:
    """Invokes one CNI executable (env + config on stdin) from inside a node namespace."""

    def __init__(self, binary: str, node: str):
        self.binary, self.node = binary, node

    def call(self, command: str, conf: dict | str, container_id: str = "", pod_ns: str | None = None,
             ifname: str = "eth0", netns_path: str | None = None, env: dict | None = None) -> CNIResult:
        e = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
             "CNI_PATH": REF_DIR}
        if container_id:
            e["CNI_CONTAINERID"] = container_id
        if ifname:
            e["CNI_IFNAME"] = ifname
        if netns_path or pod_ns:
            e["CNI_NETNS"] = netns_path or f"/run/netns/{pod_ns}"
        e.update(env or {})
        stdin = conf if isinstance(conf, str) else json.dumps(conf)
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{self.node}", self.binary], input=stdin,
                              capture_output=True, text=True, env=e, timeout=60)
        return CNIResult(proc)

    def add(self, conf, cid, pod_ns, **kw) -> CNIResult:
        return self.call("ADD", conf, cid, pod_ns, **kw)

    def delete(self, conf, cid, pod_ns=None, **kw) -> CNIResult:
        return self.call("DEL", conf, cid, pod_ns, **kw)


def netconf(tmp: str, version: str = "1.1.0", subnet: str = "10.244.7.0/24", **extra) -> dict:
    ipam = {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": f"{tmp}/ipam"}
    ipam.update(extra.pop("ipam", {}))
    conf = {"cniVersion": version, "name": "podnet", "type": "podwire", "bridge": "podwire0",
            "logFile": f"{tmp}/cni.log", "stateDir": f"{tmp}/state", "ipam": ipam}
    conf.update(extra)
    return conf


def daemon_conf(conflist_path, work: Path, negotiate: bool) -> dict:
    """The network config a runtime hands podwire from the daemon's conflist, its host paths (IPAM
    store, log, state) moved under `work`. negotiate: the version libcni >= 1.2 (containerd 2.x)
    picks, the highest of cniVersion and cniVersions; else `cniVersion`, as older libcni reads it."""
    conflist = json.loads(Path(conflist_path).read_text())
    offered = [conflist["cniVersion"], *(conflist.get("cniVersions") or [])] if negotiate else [conflist["cniVersion"]]
    version = max(offered, key=lambda v: tuple(map(int, v.split("."))))
    conf = cniconf.network_config(conflist, cni_version=version)
    conf["ipam"] = dict(conf["ipam"], dataDir=str(work / "ipam"))
    conf.update(logFile=str(work / "cni.log"), stateDir=str(work / "state"))
    return conf


def allocated(tmp: str, network: str = "podnet") -> list[str]:
    d = os.path.join(tmp, "ipam", network)
    if not os.path.isdir(d):
        return []
    return sorted(f for f in os.listdir(d) if f != "lock" and not f.startswith("last_reserved_ip"))


def fetch_from_pod_server(pod: str, client_ns: str, address: str, port: int, banner: str) -> str:
    """Start a one-line TCP server (port 80) in `pod`, connect from `client_ns` to address:port
    (retrying while rules settle) and return what the client read."""

    server = subprocess.Popen(["nsenter", f"--net=/run/netns/{pod}", "busybox", "nc", "-l", "-p", "80", "-e",
                               "echo", banner], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        got = ""
        for _ in range(20):
            got = in_ns(client_ns, "busybox", "nc", "-w", "2", address, str(port), check=False, input="").stdout
            if banner in got:
                break
            time.sleep(0.1)
        return got
    finally:
        server.kill()
        server.wait()


def underlay(node: str, outside: str, link: str, subnet_prefix: str) -> str:
    """A veth between the node and an outside namespace: node .1, outside .2; returns the node address."""
    subprocess.run(["ip", "link", "add", link, "netns", node, "type", "veth", "peer", "name", "eth0",
                    "netns", outside], check=True)
    for ns, dev, host in ((node, link, 1), (outside, "eth0", 2)):
        in_ns(ns, "ip", "addr", "add", f"{subnet_prefix}.{host}/24", "dev", dev)
        in_ns(ns, "ip", "link", "set", dev, "up")
    return f"{subnet_prefix}.1"


class FixedRunDir:
    """containerd 2.x keeps shim sockets and fifos under /run/containerd whatever its config says:
    remember what was there and remove what a test's private containerd added (and the dir if we made it)."""

    PATH = "/run/containerd"

    def __init__(self):
        self.existed = os.path.isdir(self.PATH)
        self.subdirs = {sub for sub in ("s", "fifo") if os.path.isdir(os.path.join(self.PATH, sub))}
        self.before = self._entries()

    def _entries(self) -> set:
        out = set()
        for sub in ("s", "fifo"):
            d = os.path.join(self.PATH, sub)
            if os.path.isdir(d):
                out |= {os.path.join(d, name) for name in os.listdir(d)}
        return out

    def clean(self) -> None:
        import shutil

        for path in self._entries() - self.before:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        for sub in {"s", "fifo"} - self.subdirs:
            try:
                os.rmdir(os.path.join(self.PATH, sub))
            except OSError:
                pass
        if not self.existed:
            shutil.rmtree(self.PATH, ignore_errors=True)


def kill_container_cgroups(namespace: str) -> None:
    """Containers runc left behind (their cgroups are /<namespace>/<id> in every v1 hierarchy): killed,
    then their cgroups removed, so no test process outlives the test."""
    from e2e import cgroups

    cgroups.remove(namespace)
