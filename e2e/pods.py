"""A "pod" on a node: a network namespace wired by a CNI plugin, called exactly as a runtime
calls it.

Why it is built so: the plugin under test (podwire's own `dist/podwire/podwire` in later
issues, Debian's reference `bridge` + `host-local` here) must see what containerd would give
it: the CNI_* environment, the network config on stdin, and the caller's network namespace
being the *node's* (so the command runs under `nsenter --net=<node netns>`). ADD on entry,
DEL on exit — also when the test failed — and the pod's namespace is in the cluster ledger,
so even a pod nobody closed is removed at teardown.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import json
import os
import subprocess
from pathlib import Path

from e2e import netns as ns
from e2e.topology import Node

REFERENCE_CNI_DIR = Path("/usr/lib/cni")
_ids = itertools.count(1)


class CniError(RuntimeError):
    def __init__(self, command: str, code: int | None, msg: str, details: str = "", output: str = ""):
        self.command, self.code, self.msg, self.details, self.output = command, code, msg, details, output
        super().__init__(f"CNI {command} failed (code {code}): {msg} {details}".strip())


@dataclasses.dataclass(frozen=True)
class CniPlugin:
    """An executable plus the network config a runtime would hand it."""

    executable: Path
    config: dict
    cni_path: tuple[Path, ...] = (REFERENCE_CNI_DIR,)

    def stdin(self, prev_result: dict | None = None) -> str:
        """The config on stdin; CHECK and DEL also get the ADD result, as libcni injects it."""
        config = dict(self.config, prevResult=prev_result) if prev_result else self.config
        return json.dumps(config)


def reference_bridge(node: Node, *, name: str = "pwe-bridge", bridge: str = "cni0",
                     cni_version: str = "1.0.0") -> CniPlugin:
    """Debian's reference bridge + host-local plugins on the node's podCIDR.

    host-local keeps its allocations in the node's own directory (its default,
    /var/lib/cni/networks, is one directory shared by every "node" of this machine).
    """
    if node.pod_cidr is None:
        raise ValueError(f"{node.name} has no podCIDR yet")
    return CniPlugin(
        REFERENCE_CNI_DIR / "bridge",
        {
            "cniVersion": cni_version,
            "name": name,
            "type": "bridge",
            "bridge": bridge,
            "isGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(node.pod_cidr)}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(node.dir / "cni-ipam"),
            },
        },
    )


def invoke(node: Node, plugin: CniPlugin, command: str, *, container_id: str, netns: str,
           ifname: str = "eth0", cni_args: str = "", prev_result: dict | None = None, timeout: float = 30) -> dict:
    """Run one CNI command inside the node's namespace; return the parsed stdout (or {})."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": ":".join(map(str, plugin.cni_path)),
    }
    if cni_args:
        env["CNI_ARGS"] = cni_args
    stdin = plugin.stdin(prev_result if command != "ADD" else None)
    proc = subprocess.run(node.argv([plugin.executable]), input=stdin, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = proc.stdout.strip()
    if proc.returncode != 0:
        try:
            err = json.loads(out)
            raise CniError(command, err.get("code"), err.get("msg", ""), err.get("details", ""), out + proc.stderr)
        except ValueError:
            raise CniError(command, None, (out + "\n" + proc.stderr).strip()) from None
    return json.loads(out) if out else {}


class Pod:
    """Context manager: a pod namespace on `node`, networked by `plugin` (ADD/DEL)."""

    def __init__(self, node: Node, plugin: CniPlugin, name: str | None = None, *, ifname: str = "eth0",
                 namespace: str = "default"):
        self.node, self.plugin, self.ifname = node, plugin, ifname
        self.name = name or f"pod{next(_ids)}"
        self.namespace = namespace
        self.netns = f"{node.netns}-{self.name}"
        self.container_id = f"pwe{os.getpid()}{self.name}".ljust(16, "0")
        self.result: dict | None = None
        self._entry = None

    @property
    def netns_path(self) -> str:
        return str(ns.netns_path(self.netns))

    @property
    def cni_args(self) -> str:
        return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.name};"
                f"K8S_POD_INFRA_CONTAINER_ID={self.container_id}")

    @property
    def ips(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        return [ipaddress.ip_interface(i["address"]) for i in (self.result or {}).get("ips", [])]

    @property
    def ip(self):
        return self.ips[0].ip

    def _cni(self, command: str) -> dict:
        return invoke(self.node, self.plugin, command, container_id=self.container_id, netns=self.netns_path,
                      ifname=self.ifname, cni_args=self.cni_args, prev_result=self.result)

    def add(self) -> dict:
        self._entry = self.node.ledger.netns(self.netns)
        ns.create_netns(self.netns)
        self.result = self._cni("ADD")
        return self.result

    def check(self) -> None:
        self._cni("CHECK")

    def delete(self) -> None:
        """DEL, then remove the namespace. Safe to call twice."""
        try:
            if ns.netns_exists(self.netns) or self.result is not None:
                self._cni("DEL")
        finally:
            if self._entry is not None:
                self.node.ledger.undo(self._entry)
                self._entry = None
            self.result = None

    def run(self, argv, **kw) -> subprocess.CompletedProcess:
        return ns.run(ns.in_netns(self.netns, argv), **kw)

    def __enter__(self) -> "Pod":
        try:
            self.add()
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.delete()
