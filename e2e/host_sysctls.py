"""The machine's host-global kernel settings, read so tests can show the harness leaves them as found.

Why it is built so: the nodes share one kernel with everyone else on the machine, and some
sysctls have no namespace (vm.*, kernel.*, fs.*, user.*): what a node's kubelet writes there
changes the machine (kernel.panic_on_oops=1 turns any later oops into a reboot). A snapshot of
all of them from the harness's own namespaces, before and after, catches any such write, not
only the ones we know about. Counters and random values that change by themselves are left out.
"""

from __future__ import annotations

import os

ROOTS = ("kernel", "vm", "fs", "user")
# Change on their own (counters, per-read random values, the kernel's own throttling): not settings.
VOLATILE = frozenset({
    "kernel/ns_last_pid", "kernel/random/uuid", "kernel/random/entropy_avail", "kernel/pty/nr", "kernel/tainted",
    "kernel/perf_event_max_sample_rate", "fs/dentry-state", "fs/file-nr", "fs/inode-nr", "fs/inode-state",
    "fs/aio-nr", "fs/dentry-negative",
})
VOLATILE_DIRS = ("fs/quota/",)
# Of the per-namespace net.*: conntrack's global table size, and the root namespace's forwarding.
NET = ("net/netfilter/nf_conntrack_max", "net/nf_conntrack_max", "net/ipv4/ip_forward",
       "net/ipv6/conf/all/forwarding")
# What kubelet's setupKernelTunables sets (e2e/node_runtime.py KUBELET_SYSCTLS), shown first.
KUBELET = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")


def snapshot(base: str = "/proc/sys") -> dict[str, str]:
    """key (path under /proc/sys) -> value, for every readable host-global sysctl."""
    values = {}
    for key in NET:
        try:
            with open(os.path.join(base, key)) as f:
                values[key] = f.read().strip()
        except OSError:  # module not loaded
            pass
    for root in ROOTS:
        for directory, _, files in os.walk(os.path.join(base, root)):
            for name in files:
                path = os.path.join(directory, name)
                key = os.path.relpath(path, base)
                if key in VOLATILE or key.startswith(VOLATILE_DIRS):
                    continue
                try:
                    with open(path) as f:
                        values[key] = f.read().strip()
                except OSError:  # write-only (vm/drop_caches, fs/binfmt_misc/register)
                    continue
    return values


def changed(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """Settings whose value differs (or that vanished); keys new in `after` (a module loaded) are not
    changes of what was found."""
    return {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}


def kubelet_view(values: dict[str, str]) -> str:
    """The six kubelet tunables as one line, for test output and reports."""
    return " ".join(f"{k.replace('/', '.')}={values.get(k)}" for k in KUBELET)
