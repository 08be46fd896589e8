"""Building a small OCI image tarball without Docker or a registry (for `ctr images import`)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ls", "cat", "echo", "sleep", "ip", "ping", "nc", "wget", "httpd", "hostname", "ifconfig", "true")


def _layer(files: dict[str, bytes], links: dict[str, str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        for path, target in links.items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return raw.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}", len(data)


def busybox_image(path: str, name: str) -> str:
    """Write an OCI image layout tarball holding busybox-static under `name`; return `path`."""
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    layer = _layer({"bin/busybox": busybox, "etc/passwd": b"root:x:0:0:root:/:/bin/sh\n"},
                   {f"bin/{a}": "busybox" for a in APPLETS})
    gz = gzip.compress(layer, mtime=0)
    with tarfile.open(path, "w") as tar:
        def add(name_: str, data: bytes) -> None:
            info = tarfile.TarInfo(name_)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        layer_digest, layer_size = _blob(tar, gz)
        config = {
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
        }
        config_digest, config_size = _blob(tar, json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                       "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                        "size": layer_size}],
        }
        manifest_digest, manifest_size = _blob(tar, json.dumps(manifest).encode())
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}}]}
        add("index.json", json.dumps(index).encode())
        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    os.chmod(path, 0o644)
    return path
