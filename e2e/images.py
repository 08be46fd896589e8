"""Container images for the harness's nodes, built locally as OCI image-layout tarballs.

Why it is built so: nothing can be pulled here (no registry), so every image a pod asks for
is written by this module — a rootfs as one uncompressed tar layer, an image config, a
manifest and an index naming the image — and imported into each node's containerd
(namespace k8s.io) under the exact name the pod spec uses, as `kind load` does. Pods then run
with the default pull policy (IfNotPresent: tags are never `latest`).

Images (name → what it holds):

* PAUSE   the sandbox image containerd's CRI starts for every pod: upstream's pause.c from
          the Kubernetes module (build/pause), compiled with `gcc -static`.
* BUSYBOX the test image: Debian's busybox-static with its applets as symlinks. It carries
          the name upstream e2e uses for busybox.
* COREDNS the CoreDNS binary the builder made, on an empty rootfs.
* AGNHOST hook for a later issue: agnhost needs a Debian rootfs (mmdebstrap) + the agnhost
          binary (a build.py target); `images()` leaves it out until both exist.

Tarballs are cached under ${PODWIRE_CACHE}/images/ and rebuilt only when their inputs change
(a stamp of the input hashes), so a warm cluster-up writes nothing.
`import_image(nodes, tarball)` loads any OCI tarball (e.g. podwire's own image) into nodes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

from e2e import build

PAUSE = "registry.k8s.io/pause:3.10.1"  # containerd 2.2's default sandbox image, kubelet 1.34's too
BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"  # the name e2e.test v1.34 asks for
COREDNS = f"registry.k8s.io/coredns/coredns:{build.COREDNS_VERSION}"
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.56"  # not built yet (see module doc)

BUSYBOX_BIN = Path("/bin/busybox")
BUSYBOX_APPLETS = (
    "sh", "ash", "ls", "cat", "echo", "sleep", "ip", "ping", "nc", "wget", "httpd", "hostname", "ifconfig",
    "true", "false", "nslookup", "env", "id", "ps", "grep", "sed", "awk", "head", "tail", "mkdir", "rm", "test",
    "date", "uname", "mount", "df", "wc", "tr", "cut", "touch", "stat", "readlink", "route", "netstat", "kill",
)


def images_dir() -> Path:
    return build.cache_root() / "images"


# -- the OCI image layout, pure -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rootfs:
    """A layer's content: files (path → (bytes, mode)), symlinks (path → target), dirs."""

    files: dict = dataclasses.field(default_factory=dict)
    symlinks: dict = dataclasses.field(default_factory=dict)
    dirs: tuple = ("bin", "etc", "tmp", "proc", "sys", "dev", "var", "run")

    def tar(self) -> bytes:
        """The layer as a reproducible tar (mtime 0, root-owned, sorted)."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            parents = {str(Path(p).parent) for p in [*self.files, *self.symlinks]} - {"."}
            for d in sorted(set(self.dirs) | parents):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
                tar.addfile(info)
            for path, (data, mode) in sorted(self.files.items()):
                info = tarfile.TarInfo(path)
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
            for path, target in sorted(self.symlinks.items()):
                info = tarfile.TarInfo(path)
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
        return raw.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_oci_tarball(path: Path, name: str, layer: bytes, config: dict) -> Path:
    """Write an OCI image-layout tarball holding one image `name` (one uncompressed layer).

    `config` is the image's runtime config (Env, Entrypoint, Cmd, ...). The index names the
    image both ways containerd reads (`io.containerd.image.name`, `org.opencontainers.image.ref.name`).
    """
    image_config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [_sha(layer)]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _sha(image_config),
                   "size": len(image_config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _sha(layer),
                    "size": len(layer)}],
    }, sort_keys=True).encode()
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _sha(manifest), "size": len(manifest),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name},
    }]}, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        def add(member: str, data: bytes) -> None:
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        for blob in (layer, image_config, manifest):
            add("blobs/sha256/" + _sha(blob).split(":")[1], blob)
        add("index.json", index)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return path


# -- the images -------------------------------------------------------------------------------

ETC = {
    "etc/passwd": (b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n", 0o644),
    "etc/group": (b"root:x:0:\nnogroup:x:65534:\n", 0o644),
}


def pause_source() -> Path:
    return build.cache_root() / "gomodcache" / f"k8s.io/kubernetes@{build.KUBERNETES_VERSION}" / "build/pause/linux/pause.c"


def _pause_binary() -> bytes:
    """upstream pause.c, compiled static (the module cache has it once the builder ran)."""
    out = images_dir() / "pause.bin"
    src = pause_source()
    if not src.exists():  # the module is in GOMODCACHE once kubernetes was built; fetch it if not
        subprocess.run([build.GO, "mod", "download", f"k8s.io/kubernetes@{build.KUBERNETES_VERSION}"],
                       env=build.go_env(), check=True, cwd=build.cache_root())
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-Os", "-Wall", "-Werror", "-static", "-DVERSION=v3.10.1-podwire",
                        "-o", f"{out}.tmp", str(src)], check=True)
        os.replace(f"{out}.tmp", out)
    return out.read_bytes()


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    name: str
    inputs: tuple  # paths whose content decides the tarball (with `config`)
    config: dict

    @property
    def filename(self) -> str:
        return self.name.rsplit("/", 1)[-1].replace(":", "_") + ".tar"

    def rootfs(self) -> Rootfs:
        if self.name == PAUSE:
            return Rootfs({"pause": (_pause_binary(), 0o755), **ETC}, dirs=("etc", "proc", "sys", "dev"))
        if self.name == BUSYBOX:
            return Rootfs({"bin/busybox": (BUSYBOX_BIN.read_bytes(), 0o755), **ETC},
                          {f"bin/{a}": "busybox" for a in BUSYBOX_APPLETS})
        if self.name == COREDNS:
            return Rootfs({"coredns": (build.binary("coredns").read_bytes(), 0o755), **ETC},
                          dirs=("etc", "tmp", "proc", "sys", "dev"))
        raise ValueError(f"no recipe for {self.name}")


SPECS = (
    ImageSpec(PAUSE, (), {"Entrypoint": ["/pause"], "User": "65535:65535"}),
    ImageSpec(BUSYBOX, (BUSYBOX_BIN,), {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}),
    ImageSpec(COREDNS, (), {"Entrypoint": ["/coredns"], "ExposedPorts": {"53/tcp": {}, "53/udp": {}}}),
)


def _stamp(spec: ImageSpec) -> str:
    h = hashlib.sha256(json.dumps([spec.name, spec.config], sort_keys=True).encode())
    extra = [pause_source()] if spec.name == PAUSE else [build.binary("coredns")] if spec.name == COREDNS else []
    for p in (*spec.inputs, *extra):
        st = Path(p).stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def ensure_image(spec: ImageSpec) -> Path:
    """The tarball of `spec`, built when missing or when an input changed."""
    path = images_dir() / spec.filename
    stamp_file = path.with_name("." + path.name + ".stamp")
    stamp = _stamp(spec)
    if path.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return path
    write_oci_tarball(path, spec.name, spec.rootfs().tar(), spec.config)
    stamp_file.write_text(stamp)
    return path


def images() -> dict[str, Path]:
    """Every image the nodes get at start: name → tarball."""
    return {spec.name: ensure_image(spec) for spec in SPECS}
