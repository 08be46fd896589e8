"""The image tarball itself (no root, no containerd): a valid OCI layout, reproducible, and holding
what the DaemonSet and the init containers run."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from tests.integration.test_image import IMAGE, ROOT, frozen_bundles, image_tar  # noqa: F401

pytestmark = [pytest.mark.frozen, pytest.mark.slow]


def read_layout(path: str) -> tuple[dict, dict[str, bytes]]:
    with tarfile.open(path) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    return json.loads(files["index.json"]), files


def blob(files, digest: str) -> bytes:
    return files["blobs/sha256/" + digest.split(":", 1)[1]]


def test_oci_layout_is_valid_and_named(image_tar):  # noqa: F811
    index, files = read_layout(image_tar)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    [entry] = index["manifests"]
    assert entry["annotations"] == {"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": IMAGE}
    manifest = json.loads(blob(files, entry["digest"]))
    config = json.loads(blob(files, manifest["config"]["digest"]))
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/podwire-daemon"]
    assert config["os"] == "linux" and len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) == 2
    for layer in manifest["layers"]:
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        assert layer["size"] == len(blob(files, layer["digest"]))


def test_rootfs_holds_the_bundles_the_userland_and_the_install_script(image_tar):  # noqa: F811
    index, files = read_layout(image_tar)
    manifest = json.loads(blob(files, index["manifests"][0]["digest"]))
    config = json.loads(blob(files, manifest["config"]["digest"]))
    members: dict[str, tarfile.TarInfo] = {}
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        raw = gzip.decompress(blob(files, layer["digest"]))
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == diff_id
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            for m in tar.getmembers():
                assert (m.uid, m.gid, m.mtime) == (0, 0, 0), m.name  # reproducible
                members[m.name] = m
    for path in ("opt/podwire/daemon/podwire-daemon", "opt/podwire/cni/podwire", "opt/podwire/cni/.bundle-id",
                 "opt/podwire/install-cni.sh", "usr/sbin/nft", "usr/sbin/conntrack", "usr/bin/ip",
                 "usr/bin/busybox", "usr/lib64/ld-linux-x86-64.so.2", "usr/lib/x86_64-linux-gnu/libc.so.6",
                 "usr/lib/x86_64-linux-gnu/libnftables.so.1", "etc/protocols", "etc/passwd"):
        assert members[path].isfile(), path
        if not path.startswith("etc/") and not path.endswith(".bundle-id"):
            assert members[path].mode & 0o111, f"{path} is not executable"
    for link, target in (("lib64", "usr/lib64"), ("lib", "usr/lib"), ("bin", "usr/bin"), ("sbin", "usr/sbin"),
                         ("usr/bin/sh", "busybox"), ("usr/bin/sysctl", "busybox"),
                         ("usr/local/bin/podwire-daemon", "/opt/podwire/daemon/podwire-daemon")):
        assert members[link].issym() and members[link].linkname == target, link
    assert members["tmp"].mode == 0o1777


def test_build_is_reproducible_from_a_cold_cache(image_tar, tmp_path):  # noqa: F811
    """A second build with an empty cache (every layer re-made) gives the same manifest digest."""
    out = tmp_path / "again.tar"
    env = {**os.environ, "PODWIRE_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "packaging/image.py", "--out", str(out), "--name", IMAGE], cwd=ROOT,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "userland layer" in r.stderr and "built" in r.stderr
    assert read_layout(str(out))[0] == read_layout(image_tar)[0]
