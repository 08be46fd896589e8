"""The modules a CNI call loads: kubelet starts the plugin once per pod, and every import is paid there.

The allow-lists below are what an ADD and a DEL load today, beyond the bare interpreter (`python3 -S`);
a new import on the hot path fails here until it is added on purpose (and measured: bench/cni_startup.py).
tests/integration/test_cni_imports.py checks the same lists against the frozen binary on a real kernel,
where the lazy paths (the pod's namespace, hostPort) run too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ours, and the few standard modules they need: addresses are ipam.addr's (not ipaddress), the undo of a
# failed ADD cni_plugin.undo's (not contextlib), JSON cni_plugin.wirejson's on the C `_json`.
HOT_PATH = frozenset({
    "cni_plugin", "cni_plugin.config", "cni_plugin.dataplane", "cni_plugin.errors", "cni_plugin.main",
    "cni_plugin.plan", "cni_plugin.result", "cni_plugin.undo", "cni_plugin.verbs", "cni_plugin.wirejson",
    "ipam", "ipam.addr", "ipam.allocator", "ipam.config", "ipam.errors", "ipam.store",
    "netkit", "netkit.netns", "netkit.record", "netkit.rtnl",
    "__future__", "_json", "_socket", "_struct", "errno", "fcntl", "struct", "zlib",
})
DEL_EXTRA = frozenset({"cni_plugin.hostport"})  # one failed open() of the pod's hostPort state file
# each costs milliseconds per start (json: re, enum; socket: enum, selectors; ipaddress and contextlib:
# functools, collections) or belongs to a rare path
NEVER = ("json", "re", "enum", "typing", "pathlib", "tempfile", "dataclasses", "subprocess", "ctypes",
         "ipaddress", "contextlib", "functools", "collections", "operator", "types",
         "socket", "selectors", "logging", "inspect", "fnmatch", "traceback", "netkit.nft", "cni_plugin.policy_gate",
         "kubernetes", "pyroute2")

PROBE = """
import os, sys  # os: every interpreter start loads it (the frozen bootstrap too)
sys.path.insert(0, {root!r})
before = set(sys.modules)
from cni_plugin.main import dispatch
conf = {conf!r}
env = {{"CNI_COMMAND": {verb!r}, "CNI_CONTAINERID": "c1", "CNI_NETNS": {netns!r}, "CNI_IFNAME": "eth0",
        "PODWIRE_CNI_LOG": {log!r}}}
rc, out = dispatch(env, conf.encode())
print(out)
print(repr(sorted(set(sys.modules) - before)))
"""


def loaded_by(verb: str, tmp_path) -> tuple[str, set]:
    """(stdout of the call, modules it loaded) in a fresh `python3 -S`; the pod's netns does not exist,
    so ADD stops with code 3 after the module-level imports and DEL runs to the end."""
    conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "podwire", "logFile": str(tmp_path / "log"),
                       "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24"}]],
                                "dataDir": str(tmp_path / "ipam")}})
    code = PROBE.format(root=ROOT, conf=conf, verb=verb, netns=str(tmp_path / "no-such-netns"),
                        log=str(tmp_path / "log"))
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True).stdout
    result, modules = out.rstrip("\n").split("\n")
    return result, set(eval(modules))  # a repr of a list of str, written by the probe above


def test_add_loads_only_the_allowed_modules(tmp_path):
    result, added = loaded_by("ADD", tmp_path)
    assert json.loads(result)["code"] == 3  # got as far as the pod's namespace: every module-level import ran
    assert "cni_plugin.verbs" in added and "ipam.allocator" in added
    assert added <= HOT_PATH, f"new on ADD's path: {sorted(added - HOT_PATH)}"
    assert not added & set(NEVER)


def test_del_loads_only_the_allowed_modules(tmp_path):
    result, added = loaded_by("DEL", tmp_path)
    assert result == ""  # success: the namespace is gone, nothing was allocated
    assert "cni_plugin.verbs" in added and "cni_plugin.hostport" in added
    assert added <= HOT_PATH | DEL_EXTRA, f"new on DEL's path: {sorted(added - HOT_PATH - DEL_EXTRA)}"
    assert not added & set(NEVER)
