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


# -- the node image's pure parts (e2e/kind_image.py) --------------------------------------------

KIND_CONTAINERD = """\
[plugins."io.containerd.grpc.v1.cri"]
  # use fixed sandbox image
  sandbox_image = "registry.k8s.io/pause:3.10"
  tolerate_missing_hugepages_controller = true
  restrict_oom_score_adj = false
"""


def test_containerd_config_sets_the_sandbox_image_and_restricts_oom_score_adj():
    from e2e import kind_image

    out = kind_image.containerd_config(KIND_CONTAINERD, "registry.k8s.io/pause:3.10.1").splitlines()
    assert '  sandbox_image = "registry.k8s.io/pause:3.10.1"' in out
    assert "  restrict_oom_score_adj = true" in out
    assert "  tolerate_missing_hugepages_controller = true" in out and "  # use fixed sandbox image" in out


def test_cri_base_spec_adds_kinds_hook_and_drops_rlimits_without_touching_its_input():
    from e2e import kind_image

    spec = {"process": {"rlimits": [{"type": "RLIMIT_NOFILE"}], "cwd": "/"}, "hooks": {}}
    out = kind_image.cri_base_spec(spec)
    assert out["hooks"]["createContainer"] == [{"path": "/kind/bin/mount-product-files.sh"}]
    assert "rlimits" not in out["process"] and spec["process"]["rlimits"]


def test_the_mask_covers_every_host_global_sysctl_kubelet_writes():
    """The node masks what host_sysctls watches as kubelet's: the two lists cannot drift apart."""
    from e2e import host_sysctls, kind_image

    assert set(kind_image.KUBELET_SYSCTLS) == set(host_sysctls.KUBELET)
    script = kind_image.mask_sysctls_script(kind_image.KUBELET_SYSCTLS)
    assert "echo 1 > /run/pwk-sysctls/kernel.panic_on_oops" in script
    assert "mount --bind /run/pwk-sysctls/kernel.panic_on_oops /proc/sys/kernel/panic_on_oops" in script
    assert script.count("mount --bind") == len(kind_image.KUBELET_SYSCTLS)
    assert "systemd-sysctl.service" in kind_image.MASKED  # it would apply /usr/lib/sysctl.d to the host


def test_units_run_once_before_kubelet():
    from e2e import kind_image

    text = kind_image.unit("x", "/kind/bin/x.sh", after="containerd.service")
    assert "Before=kubelet.service" in text and "Type=oneshot" in text and "WantedBy=multi-user.target" in text
    assert {"pwk-mask-sysctls.service", "pwk-preload-images.service", "kubelet.service"} <= set(kind_image.ENABLED)


def test_kind_hosts_offer_what_the_demo_checks_read():
    """Demo.run_checks reads every family's address of each node and of the outside host (`ips`): the kind
    demo's stand-ins must have them too (a missing one failed make kind-e2e after the demo went dual-stack)."""
    import ipaddress

    from e2e.kind_demo import DockerHost, KindNode

    ip = ipaddress.ip_address("172.18.0.2")
    assert KindNode("n", ip).ips == (ip,)
    assert DockerHost(None, ip).ips == (ip,)  # type: ignore[arg-type]
