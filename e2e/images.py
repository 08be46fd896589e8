"""Container images for the harness's nodes, built locally as OCI image-layout tarballs.

Why it is built so: nothing can be pulled here (no registry), so every image a pod asks for
is written by this module — a rootfs as one uncompressed tar layer, an image config, a
manifest and an index naming the image, through packaging/oci.py (the one OCI writer) — and
imported into each node's containerd (namespace k8s.io) under the exact name the pod spec
uses, as `kind load` does. Pods then run with the default pull policy (IfNotPresent: tags are never `latest`).

Images (name → what it holds):

* PAUSE   the sandbox image containerd's CRI starts for every pod: upstream's pause.c from
          the Kubernetes module (build/pause), compiled with `gcc -static`.
* BUSYBOX the test image: Debian's busybox-static with its applets as symlinks. It carries
          the name upstream e2e uses for busybox.
* COREDNS the CoreDNS binary the builder made, on an empty rootfs.
* AGNHOST and the other images upstream e2e.test runs (end of this module): a Debian rootfs
          (mmdebstrap) + the agnhost binary (a build.py target); not in the nodes' start set,
          `e2e_test_images()` builds them and e2e/conformance.py imports them.

Tarballs are cached under ${PODWIRE_CACHE}/images/ and rebuilt only when their inputs change
(a stamp of the input hashes), so a warm cluster-up writes nothing.
`import_image(nodes, tarball)` loads any OCI tarball (e.g. podwire's own image) into nodes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from e2e import build

ROOT = Path(__file__).resolve().parents[1]

PAUSE = "registry.k8s.io/pause:3.10.1"  # containerd 2.2's default sandbox image, kubelet 1.34's too
BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"  # the name e2e.test v1.34 asks for
COREDNS = f"registry.k8s.io/coredns/coredns:{build.COREDNS_VERSION}"
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.56"  # e2e_test_images() (end of module)

BUSYBOX_BIN = Path("/bin/busybox")
BUSYBOX_APPLETS = (
    "sh", "ash", "ls", "cat", "echo", "sleep", "ip", "ping", "nc", "wget", "httpd", "hostname", "ifconfig",
    "true", "false", "nslookup", "env", "id", "ps", "grep", "sed", "awk", "head", "tail", "mkdir", "rm", "test",
    "date", "uname", "mount", "df", "wc", "tr", "cut", "touch", "stat", "readlink", "route", "netstat", "kill",
)


def images_dir() -> Path:
    return build.cache_root() / "images"


# -- the OCI image layout: packaging/oci.py, the one writer ---------------------------------


def _load_oci():
    """packaging/oci.py, loaded by path once per process: packaging/ is no Python package
    (PyPI's `packaging`, which pip and pytest import, owns the name)."""
    module = sys.modules.get("podwire_oci")
    if module is None:
        spec = importlib.util.spec_from_file_location("podwire_oci", ROOT / "packaging" / "oci.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["podwire_oci"] = module  # before running it: dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


oci = _load_oci()
ROOTFS_DIRS = ("bin", "etc", "tmp", "proc", "sys", "dev", "var", "run")


def rootfs(files: dict | None = None, symlinks: dict | None = None, dirs=ROOTFS_DIRS):
    """A layer's content (an `oci.LayerSpec`): files (path → (bytes, mode)), symlinks (path →
    target), empty directories (`tmp` sticky and world-writable)."""
    spec = oci.LayerSpec()
    for d in dirs:
        spec.dir(d, 0o1777 if d == "tmp" else 0o755)
    for path, (data, mode) in (files or {}).items():
        spec.data(path, data, mode)
    for path, target in (symlinks or {}).items():
        spec.symlink(path, target)
    return spec


def write_image(path: Path, name: str, layer_tar: bytes, runtime: dict) -> Path:
    """An OCI image-layout tarball holding one image `name` with one uncompressed layer
    (imported locally at once: gzip would cost more than it saves); `runtime` is the image's
    config object (Env, Entrypoint, Cmd, ...)."""
    layer = oci.Layer.of_tar(layer_tar, compress=False)
    oci.write_layout(path, name, [layer], oci.image_config([layer], runtime))
    return path


# -- the images -------------------------------------------------------------------------------

ETC = {
    "etc/passwd": (b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n", 0o644),
    "etc/group": (b"root:x:0:\nnogroup:x:65534:\n", 0o644),
}


def pause_source() -> Path:
    module = build.cache_root() / "gomodcache" / f"k8s.io/kubernetes@{build.KUBERNETES_VERSION}"
    return module / "build/pause/linux/pause.c"


def _pause_binary() -> bytes:
    """upstream pause.c, compiled static (the module cache has it once the builder ran)."""
    out = images_dir() / "pause.bin"
    src = pause_source()
    if not src.exists():  # the module is in GOMODCACHE once kubernetes was built; fetch it if not
        subprocess.run([build.GO, "mod", "download", f"k8s.io/kubernetes@{build.KUBERNETES_VERSION}"],
                       env=build.go_env(), check=True, cwd=build.cache_root())
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{out}.{os.getpid()}.tmp"
        subprocess.run(["gcc", "-Os", "-Wall", "-Werror", "-static", "-DVERSION=v3.10.1-podwire",
                        "-o", tmp, str(src)], check=True)
        os.replace(tmp, out)
    return out.read_bytes()


def busybox_rootfs(extra: dict | None = None):
    """Debian's busybox-static with its applets as symlinks (and `extra` files)."""
    return rootfs({"bin/busybox": (BUSYBOX_BIN.read_bytes(), 0o755), **ETC, **(extra or {})},
                  {f"bin/{a}": "busybox" for a in BUSYBOX_APPLETS})


def busybox_image(path: Path, name: str) -> Path:
    """The busybox test image under any `name`, written to `path` (not cached)."""
    return write_image(path, name, oci.layer_tar(busybox_rootfs()), {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]})


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    name: str
    inputs: tuple  # paths whose content decides the tarball (with `config`)
    config: dict

    @property
    def filename(self) -> str:
        return self.name.rsplit("/", 1)[-1].replace(":", "_") + ".tar"

    def rootfs(self):
        if self.name == PAUSE:
            return rootfs({"pause": (_pause_binary(), 0o755), **ETC}, dirs=("etc", "proc", "sys", "dev"))
        if self.name == BUSYBOX:
            return busybox_rootfs()
        if self.name == COREDNS:
            return rootfs({"coredns": (build.binary("coredns").read_bytes(), 0o755), **ETC},
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
    write_image(path, spec.name, oci.layer_tar(spec.rootfs()), spec.config)
    tmp = stamp_file.with_name(f"{stamp_file.name}.{os.getpid()}.tmp")
    tmp.write_text(stamp)
    os.replace(tmp, stamp_file)
    return path


def images() -> dict[str, Path]:
    """Every image the nodes get at start: name → tarball."""
    return {spec.name: ensure_image(spec) for spec in SPECS}


# -- the images upstream e2e.test asks for (e2e/conformance.py) -------------------------------
#
# `e2e.test --list-images` names them; the sig-network tests run these four. The first three are
# one Debian rootfs (mmdebstrap, cached) plus the agnhost binary (a build.py target), because
# the tests need agnhost's behaviour and the userland they shell out to (dig, getent, curl, nc,
# ip, bash, and wget, which Alpine's busybox has: the service-proxy-name/headless tests use it),
# not the upstream bytes:
#   agnhost          upstream's recipe (test/images/agnhost/Dockerfile) on Debian instead of Alpine:
#                    /agnhost, /agnhost-2, /coredns (the built one), porter's certificate, /uploads,
#                    user 1000 in group 50000
#   jessie-dnsutils  the DNS tests' second querier: only runs `sh -c` with dig/getent/hostname
#   nginx            the EndpointSlice tests only need a container that keeps running (and
#                    serves HTTP on 80 as nginx would): agnhost test-webserver
#   regression-issue-74839  the Conntrack INVALID-state test's raw-socket client: its own static
#                    binary (a build.py target) on an empty rootfs, as upstream's
# They are not in SPECS (the nodes' start set): ~240 MB each would slow every full cluster.

JESSIE_DNSUTILS = "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7"
REGRESSION_74839 = "registry.k8s.io/e2e-test-images/regression-issue-74839:1.2"
NGINX = "registry.k8s.io/e2e-test-images/nginx:1.14-4"
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("curl", "wget", "netcat-openbsd", "bind9-dnsutils", "iproute2", "iputils-ping", "procps")
DEBIAN_HOOKS = (
    'chroot "$1" groupadd -g 50000 group-defined-in-image',
    'chroot "$1" useradd -u 1000 -G group-defined-in-image user-defined-in-image',
    'mkdir -p "$1/uploads"',
    'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
)
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TEST_IMAGE_CONFIGS = {
    AGNHOST: {"Env": [_PATH], "Entrypoint": ["/agnhost"], "Cmd": ["pause"],
              "ExposedPorts": {f"{p}/tcp": {} for p in (80, 8080, 8081, 9376, 5000)}},
    JESSIE_DNSUTILS: {"Env": [_PATH], "Cmd": ["/bin/sh"]},
    NGINX: {"Env": [_PATH], "Entrypoint": ["/agnhost", "test-webserver"], "ExposedPorts": {"80/tcp": {}}},
    REGRESSION_74839: {"Entrypoint": ["/regression-issue-74839"]},
}
STATIC_TEST_IMAGES = {REGRESSION_74839: "regression-issue-74839"}  # name -> build.py binary, alone


def debian_rootfs() -> Path:
    """A Debian rootfs tarball (mmdebstrap, minbase + DEBIAN_PACKAGES), cached by its recipe.
    Needs root and a Debian mirror (PODWIRE_DEBIAN_MIRROR, default deb.debian.org)."""
    recipe = json.dumps([DEBIAN_SUITE, DEBIAN_PACKAGES, DEBIAN_HOOKS])
    out = images_dir() / f"debian-{DEBIAN_SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.tar")
    mirror = os.environ.get("PODWIRE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    argv = ["mmdebstrap", "--quiet", "--variant=minbase", "--include=" + ",".join(DEBIAN_PACKAGES),
            *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale")),
            *(f"--customize-hook={h}" for h in DEBIAN_HOOKS), DEBIAN_SUITE, str(tmp), mirror]
    try:
        subprocess.run(argv, check=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def debian_layer(base: Path, extra) -> bytes:
    """One layer: the members of the `base` rootfs tarball, then `extra`'s files and symlinks
    (they replace base members of the same path)."""
    extra_tar = tarfile.open(fileobj=io.BytesIO(oci.layer_tar(extra)))
    extra_members = extra_tar.getmembers()
    replaced = {m.name.lstrip("./") for m in extra_members if not m.isdir()}
    raw = io.BytesIO()
    with tarfile.open(base) as src, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in src:
            if member.name.lstrip("./") in replaced:
                continue
            tar.addfile(member, src.extractfile(member) if member.isreg() else None)
        for member in extra_members:
            if member.isdir():
                continue  # the base has them, with their real modes
            tar.addfile(member, extra_tar.extractfile(member) if member.isreg() else None)
    return raw.getvalue()


def _agnhost_extra():
    porter = pause_source().parents[3] / "test/images/agnhost/porter"
    # upstream's agnhost also carries /coredns (its Dockerfile unpacks a CoreDNS release there): the
    # DNS tests' server pods run `/coredns -conf ...` from the agnhost image (generateCoreDNSServerPod)
    files = {"agnhost": (build.binary("agnhost").read_bytes(), 0o755),
             "coredns": (build.binary("coredns").read_bytes(), 0o755)}
    for name in ("localhost.crt", "localhost.key"):
        if (porter / name).exists():
            files[name] = ((porter / name).read_bytes(), 0o644)
    return rootfs(files, {"agnhost-2": "agnhost"}, dirs=())


def e2e_test_images(names=tuple(TEST_IMAGE_CONFIGS)) -> dict[str, Path]:
    """The e2e.test images (name → tarball), built when missing or when an input changed:
    the agnhost binary is built first if needed, the Debian rootfs made once."""
    binaries = {"agnhost", "coredns", *(STATIC_TEST_IMAGES[n] for n in names if n in STATIC_TEST_IMAGES)}
    build.ensure_built([t for t in build.TARGETS if t.binary in binaries])
    base = debian_rootfs() if any(n not in STATIC_TEST_IMAGES for n in names) else None
    layer = None
    out = {}
    for name in names:
        config = TEST_IMAGE_CONFIGS[name]
        static = STATIC_TEST_IMAGES.get(name)
        path = images_dir() / (name.rsplit("/", 1)[-1].replace(":", "_") + ".tar")
        stamp_file = path.with_name("." + path.name + ".stamp")
        h = hashlib.sha256(json.dumps([name, config], sort_keys=True).encode())
        for p in [build.binary(static)] if static else [base, build.binary("agnhost"), build.binary("coredns")]:
            st = p.stat()
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
        if not (path.exists() and stamp_file.exists() and stamp_file.read_text() == h.hexdigest()):
            if static:
                alone = rootfs({static: (build.binary(static).read_bytes(), 0o755), **ETC}, dirs=("etc", "tmp"))
                write_image(path, name, oci.layer_tar(alone), config)
            else:
                layer = layer or debian_layer(base, _agnhost_extra())
                write_image(path, name, layer, config)
            stamp_file.write_text(h.hexdigest())
        out[name] = path
    return out
