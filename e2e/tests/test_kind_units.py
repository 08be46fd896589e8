"""Pure parts of the kind path: the runc wrapper's edits, dockerd's launcher, names (no root)."""

from __future__ import annotations

import json

import pytest

from e2e import dockerd, runc_nocap

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /run rw - tmpfs tmpfs rw
"""


def test_strip_capability_removes_it_from_every_set_and_only_it():
    process = {"capabilities": {"bounding": ["CAP_NET_ADMIN", "CAP_SYS_RESOURCE"], "effective": ["CAP_SYS_RESOURCE"],
                                "ambient": []}}
    assert runc_nocap.strip_capability(process)
    assert process["capabilities"] == {"bounding": ["CAP_NET_ADMIN"], "effective": [], "ambient": []}
    assert not runc_nocap.strip_capability(process)  # idempotent: nothing left to drop
    assert not runc_nocap.strip_capability({})  # a process without capabilities


@pytest.mark.parametrize("argv, want", [
    (["--root", "/r", "--log", "/l", "create", "--bundle", "/b", "id"], [("/b/config.json", True)]),
    (["run", "--bundle=/x", "id"], [("/x/config.json", True)]),
    (["--root", "/r", "create", "id"], [("./config.json", True)]),
    (["exec", "--process", "/tmp/p.json", "--detach", "id"], [("/tmp/p.json", False)]),
    (["exec", "-p", "/tmp/p.json", "id"], [("/tmp/p.json", False)]),
    (["exec", "id", "sh"], []),
    (["--root", "/r", "delete", "--force", "id"], []),
    (["state", "id"], []),
])
def test_files_to_edit(argv, want):
    assert runc_nocap.files_to_edit(argv) == want


def test_edit_rewrites_a_bundle_config_and_leaves_a_clean_one_alone(tmp_path):
    config = tmp_path / "config.json"
    caps = {"bounding": ["CAP_SYS_RESOURCE"]}
    config.write_text(json.dumps({"ociVersion": "1.0.2", "process": {"capabilities": caps}}))
    runc_nocap.edit(str(config), True)
    assert json.loads(config.read_text())["process"]["capabilities"] == {"bounding": []}
    before = config.stat().st_mtime_ns
    runc_nocap.edit(str(config), True)
    assert config.stat().st_mtime_ns == before


def test_cgroup_mounts_keep_the_superblock_options():
    assert dockerd.cgroup_mounts(MOUNTINFO) == [
        ("cgroup", "cpu", "/sys/fs/cgroup/cpu"),
        ("cgroup", "name=systemd", "/sys/fs/cgroup/systemd"),
        ("cgroup2", "", "/sys/fs/cgroup/unified"),
    ]


def test_launcher_mounts_then_execs_dockerd_with_quoted_arguments():
    script = dockerd.launcher_script(dockerd.cgroup_mounts(MOUNTINFO), ["/usr/sbin/dockerd", "--data-root", "/a b"],
                                     ["/s", "/usr/bin"])
    lines = script.splitlines()
    assert "mount -t cgroup -o name=systemd cgroup /sys/fs/cgroup/systemd" in lines
    assert "mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified" in lines
    assert "mount -t tmpfs -o mode=755 pwk-etc-docker /etc/docker" in lines
    assert lines[-1] == "exec /usr/sbin/dockerd --data-root '/a b'"
    root = lines.index("mount -t tmpfs -o mode=755 cgroup-root /sys/fs/cgroup")
    assert root < lines.index("mkdir -p /sys/fs/cgroup/cpu")


def test_lacks_capability_reads_the_bounding_set():
    assert dockerd.lacks_capability(24, "CapEff:\t0\nCapBnd:\t000001fffeffffff\n")
    assert not dockerd.lacks_capability(24, "CapBnd:\t000001ffffffffff\n")


@pytest.mark.parametrize("name", ["", "a" * 13, "A", "a/b", "a b", "-a", "../x", "é"])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError):
        dockerd.valid_name(name)


def test_busybox_rootfs_has_a_shell(tmp_path):
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(dockerd.busybox_rootfs_tar())) as tar:
        names = tar.getnames()
        assert tar.getmember("bin/sh").linkname == "busybox"
    assert {"bin/busybox", "bin/sh", "tmp", "proc"} <= set(names)
