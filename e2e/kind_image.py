"""kind's node image, made offline from our own binaries (what `kind build node-image` would pull).

Why it is built so: `kind build node-image` fetches a base image and the control-plane images from
registries, and none is reachable here. A node image is only a root filesystem plus three lines of
image config, so it is assembled from what the machine has (shared/notes/kind.md):

- a Debian bookworm rootfs with systemd (mmdebstrap), trimmed as kind's images/base/Dockerfile does;
- kind's own base files from the kind module in GOMODCACHE (`images/base/files`: entrypoint, systemd
  units for containerd and kubelet, kubeadm drop-ins, containerd config), `/etc/containerd/cri-base.json`
  from `ctr oci spec` as kind makes it;
- containerd 2.2 (scripts/install-deps.sh builds it), Debian's runc and reference CNI plugins,
  kubeadm/kubelet/kubectl (e2e/build.py), `/kind/version`;
- the images kubeadm asks for (`kubeadm config images list`), one-binary images from our builds, as
  OCI tarballs under /kind/images that a unit imports into containerd's k8s.io namespace before kubelet
  starts (kind skips kubeadm's preflight pull);
- this machine's quirks, inside the node only: containerd's `restrict_oom_score_adj` (negative
  oom_score_adj is refused here), and the host-global sysctls kubelet would write masked by files bound
  over them (systemd-sysctl is masked too; the node's own net.* settings are per namespace and applied).

The result is a rootfs tarball cached under ${PODWIRE_CACHE}/kind/ by a hash of every input;
e2e/kind.py imports it into its dockerd (`docker import` + a one-line build for STOPSIGNAL, which
`docker import --change` refuses).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from e2e import build, images

SUITE = "bookworm"
# kind's base image packages (images/base/Dockerfile) less NFS/iSCSI/fuse tooling, plus Debian's runc and
# reference CNI plugins (kind builds its own from source). jq: kind's mount-product-files.sh hook needs it.
PACKAGES = ("systemd", "dbus", "conntrack", "iptables", "nftables", "iproute2", "ethtool", "util-linux", "mount",
            "kmod", "libseccomp2", "pigz", "bash", "ca-certificates", "procps", "jq", "runc",
            "containernetworking-plugins")
# What kind's Dockerfile does after installing its packages: no units but the ones it enables.
HOOKS = (
    'find "$1/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete',
    'rm -f "$1"/lib/systemd/system/multi-user.target.wants/* "$1"/etc/systemd/system/*.wants/*'
    ' "$1"/lib/systemd/system/local-fs.target.wants/* "$1"/lib/systemd/system/sockets.target.wants/*udev*'
    ' "$1"/lib/systemd/system/sockets.target.wants/*initctl* "$1"/lib/systemd/system/basic.target.wants/*',
    'echo ReadKMsg=no >> "$1/etc/systemd/journald.conf"',
    'ln -sf /usr/lib/systemd/systemd "$1/sbin/init"',
    'mkdir -p "$1/opt/cni/bin" "$1/etc/kubernetes/manifests" && cp -a "$1"/usr/lib/cni/* "$1/opt/cni/bin/"',
)

CONTAINERD_BIN = ("containerd", "ctr", "containerd-shim-runc-v2")
KUBE_BIN = ("kubeadm", "kubelet", "kubectl")
# kubelet's setupKernelTunables (protectKernelDefaults: false) sets these host-global sysctls; the node
# binds a file holding the wanted value over each, so kubelet reads what it wants and writes nothing.
KUBELET_SYSCTLS = {"vm/overcommit_memory": 1, "vm/panic_on_oom": 0, "kernel/panic": 10, "kernel/panic_on_oops": 1,
                   "kernel/keys/root_maxkeys": 1000000, "kernel/keys/root_maxbytes": 25000000}
ENTRYPOINT = ["/usr/local/bin/entrypoint", "/sbin/init"]


def kind_dir() -> Path:
    return build.cache_root() / "kind"


def kind_module() -> Path:
    return build.cache_root() / "gomodcache" / f"sigs.k8s.io/kind@{build.KIND_VERSION}"


def base_files() -> Path:
    """kind's images/base/files in the module cache (there once kind is built; fetched if not)."""
    files_dir = kind_module() / "images" / "base" / "files"
    if not files_dir.is_dir():
        subprocess.run([build.GO, "mod", "download", f"sigs.k8s.io/kind@{build.KIND_VERSION}"], env=build.go_env(),
                       check=True, cwd=build.cache_root(), capture_output=True)
    return files_dir


def containerd_bin() -> Path:
    return build.cache_root() / "tools" / "containerd-v2.2.1" / "bin"


# -- pure pieces ----------------------------------------------------------------------


def containerd_config(kind_config: str, sandbox_image: str) -> str:
    """kind's containerd config with the sandbox image kubeadm asks for and restrict_oom_score_adj on
    (a negative oom_score_adj is refused on these machines)."""
    out = []
    for line in kind_config.splitlines():
        key = line.strip().split("=")[0].strip()
        if key == "restrict_oom_score_adj":
            line = line.split("=")[0] + "= true"
        elif key == "sandbox_image":
            line = line.split("=")[0] + f'= "{sandbox_image}"'
        out.append(line)
    return "\n".join(out) + "\n"


def cri_base_spec(oci_spec: dict) -> dict:
    """kind's cri-base.json: `ctr oci spec` + its createContainer hook, without rlimits."""
    spec = json.loads(json.dumps(oci_spec))
    spec.setdefault("hooks", {}).setdefault("createContainer", []).append({"path": "/kind/bin/mount-product-files.sh"})
    spec.get("process", {}).pop("rlimits", None)
    return spec


def mask_sysctls_script(values: dict[str, int]) -> str:
    lines = ["#!/bin/sh",
             "# Host-global sysctls kubelet writes (podwire e2e/kind_image.py): a file with the wanted value is",
             "# bound over each, so the writes stay inside this node. net.* is per network namespace: applied.",
             "set -eu", "mkdir -p /run/pwk-sysctls"]
    for key, value in sorted(values.items()):
        f = "/run/pwk-sysctls/" + key.replace("/", ".")
        lines += [f"echo {int(value)} > {f}", f"mount --bind {f} /proc/sys/{key}"]
    lines.append("for f in /etc/sysctl.d/10-network-*.conf; do sysctl -q -p \"$f\"; done")
    return "\n".join(lines) + "\n"


PRELOAD_SCRIPT = """#!/bin/sh
# The control-plane images (no registry here): into containerd's k8s.io namespace before kubelet starts.
set -eu
for i in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
for f in /kind/images/*.tar; do ctr -n k8s.io images import --local "$f" >/dev/null; done
"""


def unit(description: str, exec_start: str, after: str, before: str = "kubelet.service") -> str:
    return (f"[Unit]\nDescription={description}\nAfter={after}\nBefore={before}\n\n"
            f"[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart={exec_start}\n\n"
            "[Install]\nWantedBy=multi-user.target\n")


ENABLED = ("kubelet.service", "containerd.service", "undo-mount-hacks.service", "pwk-mask-sysctls.service",
           "pwk-preload-images.service")
MASKED = ("systemd-binfmt.service", "systemd-sysctl.service")


# -- inputs -----------------------------------------------------------------------------


def base_rootfs() -> Path:
    """The Debian rootfs with systemd (mmdebstrap), cached by its recipe."""
    recipe = json.dumps([SUITE, PACKAGES, HOOKS])
    out = kind_dir() / f"base-{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.tar")
    mirror = os.environ.get("PODWIRE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    argv = ["mmdebstrap", "--quiet", "--variant=minbase", "--include=" + ",".join(PACKAGES),
            *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale")),
            *(f"--customize-hook={h}" for h in HOOKS), SUITE, str(tmp), mirror]
    try:
        subprocess.run(argv, check=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    for old in kind_dir().glob(f"base-{SUITE}-*.tar"):
        if old != out:
            old.unlink()  # an older recipe's
    return out


def control_plane_images() -> dict[str, str]:
    """Image name kubeadm asks for -> what it holds (a built binary, or 'pause')."""
    names = subprocess.run([str(build.binary("kubeadm")), "config", "images", "list",
                            "--kubernetes-version", build.KUBERNETES_VERSION],
                           check=True, capture_output=True, text=True).stdout.split()
    wanted = {}
    for name in names:
        short = name.rsplit("/", 1)[-1].split(":")[0]
        if short == "kube-proxy":
            continue  # kubeProxyMode: none
        wanted[name] = "pause" if short == "pause" else short
    return wanted


def image_tarballs() -> dict[str, Path]:
    """One OCI tarball per control-plane image (a single static binary as entrypoint), cached."""
    out = {}
    for name, what in control_plane_images().items():
        path = kind_dir() / "images" / (name.rsplit("/", 1)[-1].replace(":", "_") + ".tar")
        if what == "pause":
            data, entry = images._pause_binary(), "/pause"
        else:
            data, entry = build.binary(what).read_bytes(), f"/usr/local/bin/{what}"
        stamp = path.with_name("." + path.name + ".stamp")
        digest = hashlib.sha256(data + name.encode()).hexdigest()
        if not (path.exists() and stamp.exists() and stamp.read_text() == digest):
            path.parent.mkdir(parents=True, exist_ok=True)
            layer = images.oci.layer_tar(images.rootfs({entry.lstrip("/"): (data, 0o755), **images.ETC}))
            images.write_image(path, name, layer, {"Env": [images.oci.PATH], "Entrypoint": [entry]})
            stamp.write_text(digest)
        out[name] = path
    return out


def overlay(tarballs: dict[str, Path]):
    """Everything the node image has on top of the Debian rootfs (an oci.LayerSpec)."""
    files_dir = base_files()
    files: dict[str, tuple[bytes, int]] = {}
    for src in sorted(p for p in files_dir.rglob("*") if p.is_file()):
        rel = src.relative_to(files_dir).as_posix()
        mode = 0o755 if rel.startswith(("usr/local/bin/", "kind/bin/")) else 0o644
        files[rel] = (src.read_bytes(), mode)
    pause = next(n for n in tarballs if "/pause:" in n)
    files["etc/containerd/config.toml"] = (containerd_config(files["etc/containerd/config.toml"][0].decode(),
                                                             pause).encode(), 0o644)
    spec = json.loads(subprocess.run([str(containerd_bin() / "ctr"), "oci", "spec"], check=True, capture_output=True,
                                     text=True).stdout)
    files["etc/containerd/cri-base.json"] = (json.dumps(cri_base_spec(spec), indent=2).encode(), 0o644)
    for b in CONTAINERD_BIN:
        files[f"usr/local/bin/{b}"] = ((containerd_bin() / b).read_bytes(), 0o755)
    for b in KUBE_BIN:
        files[f"usr/bin/{b}"] = (build.binary(b).read_bytes(), 0o755)
    files["kind/version"] = (build.KUBERNETES_VERSION.encode(), 0o644)
    for path in tarballs.values():
        files[f"kind/images/{path.name}"] = (path.read_bytes(), 0o644)
    files["kind/bin/pwk-mask-sysctls.sh"] = (mask_sysctls_script(KUBELET_SYSCTLS).encode(), 0o755)
    files["kind/bin/pwk-preload-images.sh"] = (PRELOAD_SCRIPT.encode(), 0o755)
    files["etc/systemd/system/pwk-mask-sysctls.service"] = (unit(
        "podwire harness: keep kubelet's host-global sysctls inside the node", "/kind/bin/pwk-mask-sysctls.sh",
        after="local-fs.target", before="kubelet.service containerd.service").encode(), 0o644)
    files["etc/systemd/system/pwk-preload-images.service"] = (unit(
        "podwire harness: import the control-plane images", "/kind/bin/pwk-preload-images.sh",
        after="containerd.service").encode(), 0o644)
    links = {f"etc/systemd/system/multi-user.target.wants/{u}": f"/etc/systemd/system/{u}" for u in ENABLED}
    links |= {f"etc/systemd/system/{u}": "/dev/null" for u in MASKED}
    return images.rootfs(files, links, dirs=())


# -- the image ----------------------------------------------------------------------------


def input_key(base: Path, tarballs: dict[str, Path]) -> str:
    """A hash of what the image is made from, without reading the ~700 MB it adds: the base rootfs's
    recipe (its name), this module's text (scripts, units, config edits), and the name, size and
    mtime of every file copied in (binaries are replaced, never edited, when rebuilt)."""
    files = [*(containerd_bin() / b for b in CONTAINERD_BIN), *(build.binary(b) for b in KUBE_BIN),
             *tarballs.values()]
    files_dir = base_files()
    files += sorted(p for p in files_dir.rglob("*") if p.is_file())
    digest = hashlib.sha256(base.name.encode() + Path(__file__).read_bytes())
    for f in files:
        st = f.stat()
        digest.update(f"{f} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]



def node_image() -> Path:
    """The node image's rootfs tarball, (re)built when any input changed."""
    build.ensure_built(build.targets_for(kind=True))
    base = base_rootfs()
    tarballs = image_tarballs()
    out = kind_dir() / f"node-{build.KUBERNETES_VERSION}-{input_key(base, tarballs)}.tar"
    if out.exists():
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(images.debian_layer(base, overlay(tarballs)))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    for old in kind_dir().glob(f"node-{build.KUBERNETES_VERSION}-*.tar"):
        if old != out:
            old.unlink()  # one node image per version is enough (they are ~1 GB)
    return out


def image_name(tarball: Path) -> str:
    """The tag the image gets in Docker: kindest/node's name, our content hash as the tag's suffix."""
    return f"kindest/node:{build.KUBERNETES_VERSION}-podwire-{tarball.stem.rsplit('-', 1)[-1]}"


def main() -> int:
    started = time.monotonic()
    path = node_image()
    print(f"{path} ({path.stat().st_size / 1e6:.0f} MB, {time.monotonic() - started:.1f}s)", file=sys.stderr)
    return 0
