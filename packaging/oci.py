"""OCI image layout tarballs without Docker or a registry: what `ctr images import` and `kind load
image-archive` read. The one writer: podwire's image (packaging/image.py), the e2e harness's node
images (e2e/images.py) and the integration tests' busybox image all go through it.

A layer is a plain description (path -> file, directory or symlink), written as a reproducible tar:
sorted entries, uid/gid 0, mtime 0, gzip without a timestamp. Equal inputs give equal digests, so
an unchanged layer is byte-identical across builds and its digest can be cached by the caller.
A layer may stay uncompressed (the harness's ~240 MB test rootfs: gzip would cost more than the
local import it is made for saves).

packaging/ is no Python package (PyPI's `packaging` owns that name): packaging/image.py imports this
file as a sibling, e2e/images.py loads it by path (`e2e.images.oci`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class Entry:
    """One tar member. Exactly one of `source` (a host file, copied dereferenced), `data`,
    `link` (a symlink target) is set; none of them means a directory."""
    mode: int = 0o755
    source: str | None = None
    data: bytes | None = None
    link: str | None = None


@dataclass
class LayerSpec:
    """path (relative, no leading slash) -> Entry; parents are added as directories."""
    entries: dict[str, Entry] = field(default_factory=dict)

    def dir(self, path: str, mode: int = 0o755) -> None:
        self.entries[path.strip("/")] = Entry(mode=mode)

    def file(self, path: str, source: str, mode: int | None = None) -> None:
        self.entries[path.strip("/")] = Entry(mode=mode if mode is not None else os.stat(source).st_mode & 0o7777,
                                              source=source)

    def data(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.entries[path.strip("/")] = Entry(mode=mode, data=data)

    def symlink(self, path: str, target: str) -> None:
        self.entries[path.strip("/")] = Entry(mode=0o777, link=target)

    def tree(self, dest: str, src: str) -> None:
        """Copy a host directory (symlinks kept as symlinks, as PyInstaller bundles contain some)."""
        dest = dest.strip("/")
        self.dir(dest, os.stat(src).st_mode & 0o7777)
        for base, dirs, files in os.walk(src):
            rel = os.path.relpath(base, src)
            for name in dirs + files:
                host = os.path.join(base, name)
                path = os.path.normpath(os.path.join(dest, rel, name))
                if os.path.islink(host):
                    self.symlink(path, os.readlink(host))
                elif os.path.isdir(host):
                    self.dir(path, os.stat(host).st_mode & 0o7777)
                else:
                    self.file(path, host)


def layer_tar(spec: LayerSpec) -> bytes:
    """The uncompressed, reproducible tar of a layer."""
    entries = dict(spec.entries)
    for path in list(entries):  # parents first-class, so modes and order never depend on tar readers
        parts = path.split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), Entry())
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            e = entries[path]
            info = tarfile.TarInfo(path)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = e.mode, 0, 0, 0, "", ""
            if e.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, e.link
                tar.addfile(info)
            elif e.source is None and e.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                data = e.data
                if data is None:
                    with open(e.source, "rb") as f:
                        data = f.read()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Layer:
    """A finished layer: its blob (gzip, or the tar itself) plus the digest of its uncompressed
    tar (the config's diff_id)."""
    blob: bytes
    diff_id: str
    media_type: str = LAYER_GZIP

    @classmethod
    def build(cls, spec: LayerSpec, compress: bool = True) -> "Layer":
        return cls.of_tar(layer_tar(spec), compress)

    @classmethod
    def of_tar(cls, tar: bytes, compress: bool = True) -> "Layer":
        if not compress:
            return cls(tar, sha256(tar), LAYER_TAR)
        # level 6: level 9 costs ~2x the time for ~1% on these binaries
        return cls(gzip.compress(tar, compresslevel=6, mtime=0), sha256(tar))

    @property
    def digest(self) -> str:
        return sha256(self.blob)


PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def image_config(layers: list[Layer], runtime: dict, architecture: str = "amd64") -> dict:
    """The image config: `runtime` is its `config` object as the spec names it (Env, Entrypoint,
    Cmd, User, ExposedPorts, Labels...), taken as given."""
    return {"architecture": architecture, "os": "linux", "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}}


def write_layout(path: str | os.PathLike, name: str, layers: list[Layer], config: dict) -> str:
    """Write the OCI image layout as a tarball at `path` (atomically); return the manifest digest.

    `name` goes into both annotations importers read: io.containerd.image.name (ctr, kind load)
    and org.opencontainers.image.ref.name.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"  # two sessions may build the same tarball at once
    blobs: list[tuple[str, bytes]] = []

    def blob(data: bytes) -> tuple[str, int]:
        digest = sha256(data)
        blobs.append((digest, data))
        return digest, len(data)

    for layer in layers:
        blobs.append((layer.digest, layer.blob))
    config_digest, config_size = blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": len(layer.blob)}
                   for layer in layers],
    }
    manifest_digest, manifest_size = blob(json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [{
        "mediaType": MANIFEST, "digest": manifest_digest, "size": manifest_size,
        "platform": {"architecture": config.get("architecture", "amd64"), "os": config.get("os", "linux")},
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}}]}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with tarfile.open(tmp, "w") as tar:
            def add(member: str, data: bytes) -> None:
                info = tarfile.TarInfo(member)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))

            add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            seen = set()
            for digest, data in blobs:
                if digest not in seen:
                    seen.add(digest)
                    add("blobs/sha256/" + digest.split(":", 1)[1], data)
            add("index.json", json.dumps(index, sort_keys=True).encode())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return manifest_digest

