"""Per-node cgroup roots in every cgroup v1 hierarchy (and the unified one of a hybrid host).

Why it is built so: several kubelets share one machine, so each gets its own `cgroupRoot`
(`/pwe-<cluster>-<node>`); kubelet requires that root to exist in every hierarchy it uses,
and its pods' cgroups (kubepods/...) are created below it by kubelet and runc. Removing a
root means killing what still runs in it (containers whose shim died) and removing the
directories deepest first — cgroupfs directories cannot be removed recursively.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")


def hierarchies() -> list[Path]:
    """Mount points of the cgroup hierarchies (v1 controllers, name=systemd, unified)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split()[0] if right else ""
        if fstype in ("cgroup", "cgroup2"):
            out.append(Path(left.split()[4]))
    return sorted(out)


def create(name: str) -> None:
    """mkdir /<name> in every hierarchy; cpuset needs cpus and mems copied from its parent."""
    for h in hierarchies():
        path = h / name
        path.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (path / knob).exists() and not (path / knob).read_text().strip():
                (path / knob).write_text((h / knob).read_text())


def _tree(path: Path) -> list[Path]:
    """path and every cgroup below it, deepest first."""
    found = []
    for dirpath, dirnames, _ in os.walk(path):
        found += [Path(dirpath) / d for d in dirnames]
    return sorted(found, key=lambda p: len(p.parts), reverse=True) + [path]


def pids(name: str) -> set[int]:
    out: set[int] = set()
    for h in hierarchies():
        if (h / name).is_dir():
            for cg in _tree(h / name):
                try:
                    out |= {int(p) for p in (cg / "cgroup.procs").read_text().split()}
                except OSError:
                    pass
    return out


def remove(name: str, timeout: float = 10) -> None:
    """Kill every process in /<name>'s subtree, then remove the subtree in every hierarchy."""
    deadline = time.monotonic() + timeout
    while (left := pids(name)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    errors = []
    for h in hierarchies():
        if not (h / name).is_dir():
            continue
        for cg in _tree(h / name):
            for _ in range(50):  # a killed task leaves its cgroup a moment later
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as err:
                    last = err
                    time.sleep(0.1)
            else:
                errors.append(f"{cg}: {last}")
    if errors:
        raise OSError("cgroups not removed: " + "; ".join(errors))


def list_roots(prefix: str) -> list[str]:
    names = set()
    for h in hierarchies():
        if h.is_dir():
            names |= {p.name for p in h.iterdir() if p.is_dir() and p.name.startswith(prefix)}
    return sorted(names)
