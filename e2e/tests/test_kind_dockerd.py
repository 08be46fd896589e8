"""The kind path's Docker engine for real: dockerd in a network namespace of ours, a privileged
container run and exec'd into (this machine's capability quirk), and a teardown that leaves nothing."""

from __future__ import annotations

import os
import subprocess

import pytest

from e2e import dockerd, host_sysctls
from e2e import netns as ns

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(dockerd.DOCKERD), reason="docker.io not installed "
                                 "(scripts/install-deps.sh)")]


def test_dockerd_runs_privileged_containers_in_its_namespace_and_leaves_nothing():
    name = f"t{os.getpid() % 100000}"
    dockerd.sweep(abandoned_only=True)  # engines of killed sessions
    engine = dockerd.Dockerd(name, ns.this_process("pytest"))
    before, sysctls = dockerd.root_namespace_view(), host_sysctls.snapshot()
    try:
        with engine:
            subprocess.run([dockerd.DOCKER, "-H", engine.host, "import", "-", "pwk/busybox:t"],
                           input=dockerd.busybox_rootfs_tar(), check=True, capture_output=True)
            # the container's network is the engine's docker0, inside our namespace
            addrs = engine.docker("run", "--rm", "pwk/busybox:t", "ip", "-o", "-4", "addr", "show", "eth0")
            assert " 172.17." in addrs
            assert "docker0" in ns.run(["ip", "-n", engine.netns, "-o", "link"]).stdout
            # privileged (what kind nodes are) and docker exec into it: both fail without the runc wrapper here
            engine.docker("run", "-d", "--name", "pwk-priv", "--privileged", "pwk/busybox:t", "sleep", "600")
            assert engine.docker("exec", "pwk-priv", "cat", "/proc/self/status").count("CapBnd") == 1
            # the container's processes live under the engine's cgroup parent (how teardown finds them)
            from e2e import cgroups
            assert cgroups.pids(engine.cgroup_parent)
            assert dockerd.root_namespace_view() == before  # docker0, iptables rules: none of it in the root namespace
    finally:
        assert engine.leftovers() == []
    assert dockerd.root_namespace_view() == before
    assert host_sysctls.changed(sysctls, host_sysctls.snapshot()) == {}
    assert not any("pwk-priv" in line or engine.netns in line
                   for line in ns.run(["ps", "-eo", "args"]).stdout.splitlines() if "pytest" not in line)


def test_a_failed_start_is_torn_down(monkeypatch):
    """dockerd that exits at once (a bad flag): up raises, and nothing is left behind."""
    engine = dockerd.Dockerd(f"f{os.getpid() % 100000}")
    monkeypatch.setattr(dockerd, "launcher_script", lambda mounts, argv, path: "#!/bin/sh\nexec " +
                        " ".join(argv) + " --no-such-flag\n")
    with pytest.raises(dockerd.DockerdError, match="exited"):
        with engine:
            pass
    assert engine.leftovers() == []
