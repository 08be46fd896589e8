"""A private Docker engine for the kind path: Debian's dockerd inside a network namespace of ours.

Why it is built so: kind needs a Docker engine, and the machine's own links, routes, firewall and
sysctls are not ours to touch. dockerd therefore runs under `ip netns exec` in a namespace the
harness creates (docker0, the kind network and Docker's iptables rules exist only there), with its
own data root, exec root, pid file and socket, and its containers under one cgroup parent
(/pwk-<name>), so teardown can find and kill every process it started. This machine's quirks are
handled here, never in the user's path (shared/notes/kind.md):

- `ip netns exec` mounts a fresh /sys, hiding the cgroup hierarchies: the launcher mounts them again
  inside that private mount namespace (so Docker's mounts never reach the root one either);
- root's bounding set lacks CAP_SYS_RESOURCE: e2e/runc_nocap.py becomes the default runtime;
- /lib/modules does not exist and kind bind-mounts it: made empty for the run (removed after);
- /etc/docker is covered by a tmpfs (dockerd writes its key.json there; no host config is read),
  and `modprobe` on dockerd's PATH refuses: the harness never loads kernel modules.

    python3 -m e2e.dockerd up NAME | down NAME | sweep
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

from e2e import cgroups
from e2e import netns as ns
from e2e.ledger import Ledger, UpDown

PREFIX = "pwk"  # network namespaces, cgroup parents and runtime dirs of the kind path
DOCKER = "/usr/bin/docker"  # Debian's client, matching its dockerd (a newer client may be first on PATH)
DOCKERD = "/usr/sbin/dockerd"
CAP_SYS_RESOURCE = 24


def state_root() -> Path:
    """Small runtime state (sockets, exec root, logs): tmpfs."""
    return Path(os.environ.get("PODWIRE_KIND_RUN", "/run/pwk"))


def data_root_base() -> Path:
    """Docker's data roots (images and container layers, GBs): on disk."""
    return Path(os.environ.get("PODWIRE_KIND_DATA", "/var/lib/podwire-kind"))


def valid_name(name: str) -> str:
    """Names end up in paths, namespace and cgroup names: short, lowercase, no separators."""
    if not (1 <= len(name) <= 12) or not all(c.isascii() and (c.isalnum() or c == "-") for c in name) \
            or name != name.lower() or name.startswith("-"):
        raise ValueError(f"bad dockerd name {name!r}: 1-12 characters of a-z, 0-9, '-'")
    return name


def lacks_capability(cap: int, status: str) -> bool:
    """True if this process's bounding set (CapBnd in /proc/self/status text) lacks `cap`."""
    for line in status.splitlines():
        if line.startswith("CapBnd:"):
            return not (int(line.split()[1], 16) >> cap) & 1
    return False


def cgroup_mounts(mountinfo: str) -> list[tuple[str, str, str]]:
    """(fstype, options, mount point) of each cgroup hierarchy in /proc/self/mountinfo text.

    The options are the superblock's (`rw,cpu` -> `cpu`, `rw,name=systemd` -> `name=systemd`):
    mounting with the same set attaches to the same hierarchy.
    """
    found = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        if len(fields) >= 3 and fields[0] in ("cgroup", "cgroup2"):
            opts = ",".join(o for o in fields[2].split(",") if o not in ("rw", "ro"))
            found.append((fields[0], opts, left.split()[4]))
    return found


def launcher_script(mounts: list[tuple[str, str, str]], dockerd_argv: list[str], path_dirs: list[str]) -> str:
    """The shell run by `ip netns exec`: cgroups and the /etc/docker tmpfs, then exec dockerd."""
    q = shlex.quote
    lines = ["#!/bin/sh", "set -eu", "# in ip netns exec's private mount namespace: nothing here reaches the host's",
             "mount -t tmpfs -o mode=755 cgroup-root /sys/fs/cgroup"]
    for fstype, opts, point in mounts:
        lines.append(f"mkdir -p {q(point)}")
        opt = f" -o {q(opts)}" if opts else ""
        lines.append(f"mount -t {fstype}{opt} {fstype} {q(point)}")
    lines.append("mount -t tmpfs -o mode=755 pwk-etc-docker /etc/docker")
    lines.append(f"export PATH={q(':'.join(path_dirs))}")
    lines.append("exec " + " ".join(q(a) for a in dockerd_argv))
    return "\n".join(lines) + "\n"


def busybox_rootfs_tar(busybox: Path = Path("/bin/busybox")) -> bytes:
    """A one-binary root filesystem (busybox-static and its sh) for `docker import`: the test's image,
    made here because nothing can be pulled."""
    buf = BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in ("sh", "cat", "ip", "sleep", "hostname"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    return buf.getvalue()


class DockerdError(RuntimeError):
    pass


class Dockerd(UpDown):
    """One private dockerd: `with Dockerd("x") as d: d.docker("ps")`; teardown leaves nothing."""
    teardown_error = DockerdError
    what = "dockerd teardown"

    def __init__(self, name: str, owner: ns.Proc | None = None):
        self.name = valid_name(name)
        self.owner = owner  # a test session: when it is gone, sweep_abandoned() tears this engine down
        self.netns = f"{PREFIX}-{name}"
        self.cgroup_parent = f"{PREFIX}-{name}"
        self.dir = state_root() / name
        self.data_root = data_root_base() / name
        self.socket = self.dir / "docker.sock"
        self.ledger = Ledger(self.dir / "ledger.json")

    # -- commands through this engine ---------------------------------------------------

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def bin_dir(self) -> Path:
        """Put first on PATH for tools that call `docker` (kind): Debian's client, this engine."""
        return self.dir / "bin"

    def env(self, extra_path: list[str] | None = None) -> dict[str, str]:
        env = dict(os.environ, DOCKER_HOST=self.host)
        env["PATH"] = ":".join([str(self.bin_dir), *(extra_path or []), env.get("PATH", "/usr/bin:/bin")])
        return env

    def in_netns(self, argv) -> list[str]:
        """argv run in the engine's network namespace (kind and kubectl: the API servers' published
        ports are on 127.0.0.1 there)."""
        return ns.in_netns(self.netns, argv)

    def docker(self, *args, input=None, timeout=120) -> str:
        return ns.run([DOCKER, "-H", self.host, *args], input=input, timeout=timeout).stdout

    def answers(self) -> bool:
        return self.socket.exists() and ns.run([DOCKER, "-H", self.host, "version", "--format", "{{.Server.Version}}"],
                                               check=False, timeout=10).returncode == 0

    # -- lifecycle ----------------------------------------------------------------------

    def up(self, timeout: float = 90) -> "Dockerd":
        if not os.path.exists(DOCKERD):
            raise DockerdError(f"{DOCKERD} missing: run scripts/install-deps.sh (Debian's docker.io)")
        if ns.netns_exists(self.netns) or self.ledger.entries:
            raise DockerdError(f"dockerd {self.name} exists already (python3 -m e2e.dockerd down {self.name})")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ledger.dir(self.dir)  # undone last: the ledger itself lives here
        self.ledger.dir(self.data_root)
        if self.owner:
            (self.dir / "owner.json").write_text(json.dumps(self.owner.to_json()))
        self.data_root.mkdir(parents=True, exist_ok=True)
        modules = Path("/lib/modules")
        if not modules.exists():
            modules.mkdir()
            self.ledger.dir(modules)
        ns.create_netns(self.netns)
        self.ledger.netns(self.netns)
        cgroups.create(self.cgroup_parent)
        self.ledger.cgroup(self.cgroup_parent)
        script = self._write_files()
        proc = ns.spawn("dockerd", ["ip", "netns", "exec", self.netns, "sh", script], self.dir / "dockerd.log")
        self.ledger.proc(proc)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if not proc.alive():
                raise DockerdError(f"dockerd {self.name} exited:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise DockerdError(f"dockerd {self.name} did not answer in {timeout:.0f}s:\n{proc.log_tail()}")
            time.sleep(0.2)
        return self

    def _write_files(self) -> Path:
        bin_dir = self.bin_dir
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "docker").unlink(missing_ok=True)
        (bin_dir / "docker").symlink_to(DOCKER)
        shims = self.dir / "shims"  # first on dockerd's own PATH only
        shims.mkdir(exist_ok=True)
        modprobe = shims / "modprobe"
        modprobe.write_text("#!/bin/sh\necho \"modprobe $*: refused (the harness never loads kernel modules)\" >&2\n"
                            "exit 1\n")
        modprobe.chmod(0o755)
        config = self.dir / "daemon.json"  # empty: the host's /etc/docker/daemon.json is not ours
        config.write_text("{}\n")
        argv = [DOCKERD, "--data-root", str(self.data_root), "--exec-root", str(self.dir / "exec"),
                "--pidfile", str(self.dir / "dockerd.pid"), "-H", self.host, "--config-file", str(config),
                "--cgroup-parent", f"/{self.cgroup_parent}", "--storage-driver", "overlay2"]
        if lacks_capability(CAP_SYS_RESOURCE, Path("/proc/self/status").read_text()):
            wrapper = self.dir / "runc-nocap"
            wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -I "
                               f"{shlex.quote(str(Path(__file__).with_name('runc_nocap.py')))} \"$@\"\n")
            wrapper.chmod(0o755)
            argv += ["--add-runtime", f"runc-nocap={wrapper}", "--default-runtime", "runc-nocap"]
        path = [str(shims), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        script = self.dir / "launch.sh"
        script.write_text(launcher_script(cgroup_mounts(Path("/proc/self/mountinfo").read_text()), argv, path))
        return script

    def down(self) -> list[str]:
        """Containers, dockerd, their processes and cgroups, the namespace, the files. Errors are
        returned (teardown never stops early); running it twice is fine."""
        errors = []
        if self.answers():
            try:  # removed by their engine first: it unmounts their layers and forgets them
                ids = self.docker("ps", "-aq").split()
                if ids:
                    self.docker("rm", "-f", *ids, timeout=180)
            except (ns.CommandError, OSError) as err:
                errors.append(f"docker rm: {err}")
        errors += self.ledger.teardown()
        return errors


    # -- what the tests look for after teardown -----------------------------------------

    def leftovers(self) -> list[str]:
        """Everything of this engine still on the machine (empty after a clean teardown)."""
        left = []
        if ns.netns_exists(self.netns):
            left.append(f"netns {self.netns}")
        left += [f"cgroup {c}" for c in cgroups.list_roots(self.cgroup_parent) if c == self.cgroup_parent]
        for path in (self.dir, self.data_root):
            if path.exists():
                left.append(f"path {path}")
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point.startswith((str(self.dir), str(self.data_root))):
                left.append(f"mount {point}")
        return left


def root_namespace_view() -> tuple[str, str, str]:
    """What the kind path must never change: the root namespace's link names, its routes and its nft tables
    (compared before and after by the tests)."""
    links = ns.run(["ip", "-o", "link", "show"]).stdout
    names = "\n".join(sorted(line.split(":")[1].strip() for line in links.splitlines()))  # not counters
    routes = ns.run(["ip", "route", "show", "table", "all"]).stdout
    return names, routes, ns.run(["nft", "list", "tables"]).stdout


def sweep(abandoned_only: bool = False) -> list[str]:
    """Tear down every engine under the state root, or only those whose owner (a test session) is gone."""
    swept = []
    if state_root().is_dir():
        for d in sorted(state_root().iterdir()):
            if not (d / "ledger.json").exists():
                continue
            if abandoned_only:
                try:
                    if ns.Proc.from_json(json.loads((d / "owner.json").read_text())).alive():
                        continue
                except (OSError, ValueError, KeyError):
                    continue  # no owner: a CLI engine, torn down by `down NAME` only
            Dockerd(d.name).down()
            swept.append(d.name)
    return swept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m e2e.dockerd", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("up", "down"):
        sub.add_parser(cmd).add_argument("name")
    sub.add_parser("sweep")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            d = Dockerd(args.name)
            try:
                d.up()
            except BaseException:
                d.down()
                raise
            print(f"DOCKER_HOST={d.host}  (network namespace {d.netns})")
        elif args.cmd == "down":
            errors = Dockerd(args.name).down()
            for e in errors:
                print(f"e2e.dockerd: {e}", file=sys.stderr)
            return 1 if errors else 0
        else:
            print("swept:", " ".join(sweep()) or "nothing")
    except (ValueError, DockerdError, ns.CommandError) as err:
        print(f"e2e.dockerd: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
