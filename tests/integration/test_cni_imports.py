"""The frozen plugin's import set on a real kernel: ADD and DEL of a plain pod, and of one with a hostPort.

PODWIRE_CNI_TRACE makes the plugin list sys.modules at exit (cni_plugin/main.py Trace). Beyond what the
interpreter's start loads before our code runs (packaging/launcher/podwire.c: no PyInstaller bootstrap any
more), a call may load only tests/unit/test_cni_imports.py's allow-list, plus `_ctypes` (setns into the
pod's namespace); hostPort also loads its own two modules.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.cni_harness import netconf
from tests.unit.test_cni_imports import DEL_EXTRA, HOT_PATH, NEVER

pytestmark = [pytest.mark.root, pytest.mark.frozen]

# loaded by the interpreter's start before cni_plugin/__main__.py runs (the launcher imports that module)
BOOTSTRAP = frozenset({
    "__main__", "_abc", "_codecs", "_collections_abc", "_frozen_importlib", "_frozen_importlib_external", "_imp",
    "_io", "_signal", "_stat", "_thread", "_warnings", "_weakref", "abc", "builtins", "codecs",
    "encodings", "encodings.aliases", "encodings.utf_8", "genericpath", "io", "marshal", "os", "os.path", "posix",
    "posixpath", "stat", "sys", "time", "zipimport", "cni_plugin.__main__",
    "gc",  # builtin; our __main__ turns the cyclic GC off before anything else
})
SETNS = frozenset({"_ctypes"})
# hostPort and ipMasq only: the rules, and `nft -f -` run by posix_spawn (no subprocess, no netkit.nft)
HOSTPORT = frozenset({"cni_plugin.hostport", "netkit.nftexec"})


def modules(r) -> set:
    assert r.rc == 0, r
    lines = [line for line in r.stderr.splitlines() if line.startswith("podwire-modules ")]
    assert len(lines) == 1, r.stderr
    return set(json.loads(lines[0][len("podwire-modules "):]))


def call(plugin, verb, conf, pod):
    return plugin.call(verb, conf, "c1", pod, env={"PODWIRE_CNI_TRACE": str(time.monotonic_ns())})


def test_plain_pod_add_and_del_load_only_the_allow_list(plugin, pods, tmp_path):
    conf, pod = netconf(str(tmp_path)), pods()
    add = modules(call(plugin, "ADD", conf, pod))
    assert {"cni_plugin.verbs", "netkit.rtnl", "ipam.store"} <= add
    assert add <= BOOTSTRAP | HOT_PATH | SETNS, f"new on ADD's path: {sorted(add - BOOTSTRAP - HOT_PATH - SETNS)}"
    assert not add & set(NEVER)
    gone = modules(call(plugin, "DEL", conf, pod))
    assert gone <= BOOTSTRAP | HOT_PATH | DEL_EXTRA, f"new on DEL's path: {sorted(gone - BOOTSTRAP - HOT_PATH)}"
    assert not gone & set(NEVER)


def test_hostport_pod_loads_its_two_modules_and_nothing_else(plugin, pods, tmp_path):
    conf = netconf(str(tmp_path), runtimeConfig={"portMappings": [{"hostPort": 18081, "containerPort": 80}]})
    pod = pods()
    add = modules(call(plugin, "ADD", conf, pod))
    assert HOSTPORT <= add
    allowed = BOOTSTRAP | HOT_PATH | SETNS | HOSTPORT
    assert add <= allowed, f"new on a hostPort ADD's path: {sorted(add - allowed)}"
    assert not add & set(NEVER)
    gone = modules(call(plugin, "DEL", conf, pod))
    assert "netkit.nftexec" in gone and gone <= allowed and not gone & set(NEVER)
