"""Build podwire's container image as an OCI layout tarball, without Docker.

    python3 packaging/image.py --out dist/podwire-image.tar --name docker.io/podwire/podwire:dev

(Not `python3 -m packaging.image`: PyPI's `packaging`, which pip, pytest and PyInstaller import,
owns that top-level name, and a package directory here would shadow it for every tool run from the
checkout.)

Two layers:
  1. userland, copied from the build host: busybox (static: sh, cp, ln, sysctl for the init
     containers), nft (the proxy and egress pipe rulesets to `nft -f -`), conntrack (stale UDP
     flows), iproute2's ip (debugging), each with the shared libraries `ldd` names, glibc included.
     Cached under ${PODWIRE_CACHE:-/var/cache/podwire}/image/, keyed by the sources' paths, sizes
     and mtimes, so a warm build only re-packs layer 2.
  2. podwire: the frozen daemon (/opt/podwire/daemon/), the frozen CNI plugin (/opt/podwire/cni/),
     the init container's install script, and any host library the bundles need beyond layer 1.

Why host binaries and not an mmdebstrap'd Debian: the PyInstaller bundles are linked against the
build host's glibc and need that glibc (or newer) at run time, so the host's own libraries are the
exact match; and the result is ~4 MB compressed instead of ~67 MB (minbase + nftables, conntrack,
iproute2: 188 MB unpacked, 17 s to build here), with no mirror needed at build time. The price:
no package database in the image, and security fixes arrive by rebuilding on an updated host.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oci import PATH, Layer, LayerSpec, image_config, write_layout  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(os.environ.get("PODWIRE_CACHE", "/var/cache/podwire"), "image")
FORMAT = 1  # bump when the userland layer's recipe changes

TOOLS = {  # path in the image -> host path
    "usr/bin/busybox": "/bin/busybox",
    "usr/sbin/nft": "/usr/sbin/nft",
    "usr/sbin/conntrack": "/usr/sbin/conntrack",
    "usr/bin/ip": "/usr/bin/ip",
}
APPLETS = ("sh", "ash", "cat", "cp", "ln", "ls", "mkdir", "mv", "rm", "rmdir", "readlink", "realpath",
           "chmod", "echo", "printf", "test", "[", "true", "false", "sleep", "env", "grep", "sed", "head",
           "tail", "sysctl", "ps", "wget", "sha256sum", "mktemp", "dirname", "basename", "id", "stat",
           "find", "xargs", "nsenter", "sync", "uname")
ETC = {  # small host files nft, conntrack and glibc consult (protocol and service names, NSS)
    "etc/protocols": "/etc/protocols",
    "etc/services": "/etc/services",
}
ETC_DATA = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
    "etc/nsswitch.conf": b"passwd: files\ngroup: files\nhosts: files dns\nprotocols: files\nservices: files\n",
    "etc/hosts": b"127.0.0.1 localhost\n::1 localhost\n",
}
DAEMON_DIR, CNI_DIR = "opt/podwire/daemon", "opt/podwire/cni"
INSTALL_SCRIPT = os.path.join(ROOT, "packaging", "install-cni.sh")


class ImageError(RuntimeError):
    pass


# ---- shared libraries ----------------------------------------------------------------------
_LDD_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)")


def is_elf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def needed_libraries(path: str) -> set[str]:
    """Absolute host paths of the libraries the dynamic loader would map for `path` (ldd)."""
    r = subprocess.run(["ldd", path], capture_output=True, text=True)
    if r.returncode != 0:  # "not a dynamic executable" (static busybox) or not ELF
        return set()
    libs = set()
    for line in r.stdout.splitlines():
        if "=> not found" in line:
            name = line.split()[0]
            if not _bundled(path, name):
                raise ImageError(f"{path}: {name} not found on the build host")
            continue
        m = _LDD_LINE.match(line)
        if m:
            libs.add(m.group(1))
    return libs


def _bundled(path: str, name: str) -> bool:
    """True when a PyInstaller bundle carries `name` itself (its _internal/ is searched at run time)."""
    d = os.path.dirname(path)
    while d and d != "/":
        if os.path.exists(os.path.join(d, name)) or os.path.exists(os.path.join(d, "_internal", name)):
            return True
        d = os.path.dirname(d)
    return False


def image_path_of_lib(host_path: str) -> str:
    """Merged-/usr layout: /lib/x/libc.so.6 -> usr/lib/x/libc.so.6 (the image has /lib -> usr/lib)."""
    p = os.path.normpath(host_path).lstrip("/")
    for top in ("lib", "lib64", "bin", "sbin"):
        if p == top or p.startswith(top + "/"):
            return "usr/" + p
    return p


def add_libraries(spec: LayerSpec, elves: list[str], skip: set[str] = frozenset(),
                  carried: set[str] = frozenset()) -> set[str]:
    """Add every library the ELF files need (dereferenced, at the path the loader asks for),
    except paths in `skip` and sonames in `carried` (a bundle's own copies)."""
    wanted = set()
    for path in elves:
        wanted |= needed_libraries(path)
    added = set()
    for lib in sorted(wanted):
        dest = image_path_of_lib(lib)
        if dest in skip or os.path.basename(lib) in carried:
            continue
        spec.file(dest, os.path.realpath(lib), mode=0o755)
        added.add(dest)
    return added


# ---- layer 1: userland ------------------------------------------------------------------------
def userland_spec() -> LayerSpec:
    spec = LayerSpec()
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "usr/local/bin", "etc", "proc", "sys", "dev",
              "run", "var/log", "root", "opt/podwire"):
        spec.dir(d)
    spec.dir("tmp", 0o1777)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"),
                         ("var/run", "../run")):
        spec.symlink(link, target)
    for dest, src in TOOLS.items():
        spec.file(dest, os.path.realpath(src), mode=0o755)
    for applet in APPLETS:
        spec.symlink(f"usr/bin/{applet}", "busybox")
    for dest, src in ETC.items():
        spec.file(dest, src, mode=0o644)
    for dest, data in ETC_DATA.items():
        spec.data(dest, data)
    add_libraries(spec, [os.path.realpath(p) for p in TOOLS.values()])
    # the loader where every dynamic executable asks for it (PT_INTERP), and glibc's pieces that
    # programs load without ldd seeing them
    for lib in ("/lib64/ld-linux-x86-64.so.2", *_glibc_extras()):
        spec.file(image_path_of_lib(lib), os.path.realpath(lib), mode=0o755)
    return spec


def _glibc_extras() -> list[str]:
    libdir = os.path.dirname(os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6"))
    names = ("libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libutil.so.1", "libresolv.so.2",
             "libnss_files.so.2", "libnss_dns.so.2", "libgcc_s.so.1")
    return [os.path.join("/lib/x86_64-linux-gnu", n) for n in names if os.path.exists(os.path.join(libdir, n))]


def userland_key() -> str:
    """Cache key: the recipe version and every source file's path, size and mtime."""
    sources = sorted({*TOOLS.values(), *ETC.values(), "/lib64/ld-linux-x86-64.so.2", *_glibc_extras()})
    for p in list(sources):
        sources += sorted(needed_libraries(os.path.realpath(p)))
    h = hashlib.sha256(f"{FORMAT}\n{APPLETS}\n{sorted(ETC_DATA.items())}\n".encode())
    for p in sources:
        st = os.stat(p)
        h.update(f"{p} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def userland_layer(log) -> tuple[Layer, set[str]]:
    """Layer 1 from the cache, or built and cached. Also returns the paths it holds."""
    os.makedirs(CACHE, exist_ok=True)
    key = userland_key()
    cached = _cached_layer(f"userland-{key}")
    if cached:
        log(f"userland layer {key}: cached")
        return cached[0], set(cached[1]["paths"])
    spec = userland_spec()
    layer = Layer.build(spec)
    _write_cache(f"userland-{key}", layer, {"paths": sorted(spec.entries)})
    log(f"userland layer {key}: built ({len(layer.blob) / 1e6:.1f} MB)")
    return layer, set(spec.entries)


# ---- layer 2: podwire -------------------------------------------------------------------------
def bundle_id(path: str) -> str:
    """A short content hash of a bundle: the install script keys the host folder by it."""
    h = hashlib.sha256()
    for base, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(base, name)
            h.update(os.path.relpath(p, path).encode() + b"\0")
            if os.path.islink(p):
                h.update(os.readlink(p).encode())
            else:
                with open(p, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:12]


def podwire_spec(daemon: str, plugin: str, have: set[str]) -> LayerSpec:
    for exe in (os.path.join(daemon, "podwire-daemon"), os.path.join(plugin, "podwire")):
        if not os.access(exe, os.X_OK):
            raise ImageError(f"{exe} missing: build it first (make dist, and the daemon spec)")
    spec = LayerSpec()
    spec.tree(DAEMON_DIR, daemon)
    spec.tree(CNI_DIR, plugin)
    spec.data(f"{CNI_DIR}/.bundle-id", (bundle_id(plugin) + "\n").encode())
    spec.file("opt/podwire/install-cni.sh", INSTALL_SCRIPT, mode=0o755)
    spec.symlink("usr/local/bin/podwire-daemon", f"/{DAEMON_DIR}/podwire-daemon")
    elves = [os.path.join(b, f) for d in (daemon, plugin) for b, _, fs in os.walk(d) for f in fs
             if not os.path.islink(os.path.join(b, f)) and is_elf(os.path.join(b, f))]
    carried = {f for d in (daemon, plugin) for f in os.listdir(os.path.join(d, "_internal"))}
    add_libraries(spec, elves, skip=have | set(spec.entries), carried=carried)
    return spec


def podwire_layer(daemon: str, plugin: str, have: set[str], userland: Layer, log) -> Layer:
    """Layer 2, reused from the cache while the bundles, the script and layer 1 are unchanged
    (re-compressing ~100 MB of bundles is most of a build's time)."""
    with open(INSTALL_SCRIPT, "rb") as f:
        script = hashlib.sha256(f.read()).hexdigest()
    key = hashlib.sha256(f"{FORMAT} {bundle_id(daemon)} {bundle_id(plugin)} {script} {userland.digest}".encode()
                         ).hexdigest()[:16]
    cached = _cached_layer(f"podwire-{key}")
    if cached:
        log(f"podwire layer {key}: cached")
        return cached[0]
    layer = Layer.build(podwire_spec(daemon, plugin, have))
    for stale in os.listdir(CACHE):  # one podwire layer is enough; they are ~50 MB each
        if stale.startswith("podwire-"):
            os.unlink(os.path.join(CACHE, stale))
    _write_cache(f"podwire-{key}", layer, {})
    log(f"podwire layer {key}: built ({len(layer.blob) / 1e6:.1f} MB)")
    return layer


def _cache_paths(name: str) -> tuple[str, str]:
    return os.path.join(CACHE, f"{name}.tar.gz"), os.path.join(CACHE, f"{name}.json")


def _cached_layer(name: str) -> tuple[Layer, dict] | None:
    """A layer cached under `name` and its metadata, when both are there and the blob is intact."""
    blob_path, meta_path = _cache_paths(name)
    if not (os.path.exists(blob_path) and os.path.exists(meta_path)):
        return None
    with open(meta_path) as f:
        meta = json.load(f)
    with open(blob_path, "rb") as f:
        layer = Layer(f.read(), meta["diff_id"])
    return (layer, meta) if layer.digest == meta["digest"] else None


def _write_cache(name: str, layer: Layer, extra: dict) -> None:
    blob_path, meta_path = _cache_paths(name)
    for path, data in ((blob_path, layer.blob),
                       (meta_path, json.dumps({"diff_id": layer.diff_id, "digest": layer.digest, **extra}).encode())):
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)


def build(out: str, name: str, daemon: str, plugin: str, log=print) -> dict:
    started = time.monotonic()
    userland, have = userland_layer(log)
    podwire = podwire_layer(daemon, plugin, have, userland, log)
    config = image_config([userland, podwire], {
        "Env": [PATH], "Entrypoint": ["/usr/local/bin/podwire-daemon"],
        "Labels": {"org.opencontainers.image.title": "podwire", "org.opencontainers.image.source": "podwire"}})
    digest = write_layout(out, name, [userland, podwire], config)
    info = {"out": out, "name": name, "manifest": digest, "bytes": os.path.getsize(out),
            "layers": [{"digest": lay.digest, "bytes": len(lay.blob)} for lay in (userland, podwire)],
            "seconds": round(time.monotonic() - started, 2)}
    log(json.dumps(info))
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="packaging/image.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "dist", "podwire-image.tar"))
    p.add_argument("--name", default="docker.io/podwire/podwire:dev")
    p.add_argument("--daemon", default=os.path.join(ROOT, "dist", "podwire-daemon"), help="the frozen daemon folder")
    p.add_argument("--plugin", default=os.path.join(ROOT, "dist", "podwire"), help="the frozen CNI plugin folder")
    a = p.parse_args(argv)
    try:
        build(a.out, a.name, a.daemon, a.plugin, log=lambda m: print(m, file=sys.stderr))
    except (ImageError, OSError) as e:
        print(f"image: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
