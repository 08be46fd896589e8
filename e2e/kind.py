"""The kind path, run for real on this machine: our dockerd, our node image, the user's own files.

Why it is built so: users start with `kind create cluster --config manifests/kind-config.yaml` and
`packaging/kind-up.sh`; those must run here unchanged. What differs from a laptop is below them:
Docker is e2e/dockerd.py's private engine in a network namespace (so kind and kubectl run in that
namespace: the API server is published on its 127.0.0.1), and the node image is made offline by
e2e/kind_image.py. Nothing in the user's path knows.

    python3 -m e2e.kind image                 build (or find cached) the node image tarball
    python3 -m e2e.kind up [--name N]         engine + image + `kind create cluster` (config from manifests/)
    python3 -m e2e.kind install [--name N]    packaging/kind-up.sh, unchanged, with make image's tarball
    python3 -m e2e.kind kubectl [--name N] -- ARGS...
    python3 -m e2e.kind down [--name N]       the cluster, the engine, everything (also after a crash)
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from e2e import build, kind_image
from e2e import netns as ns
from e2e.dockerd import DOCKER, Dockerd, DockerdError
from e2e.ledger import UpDown

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "manifests" / "kind-config.yaml"
CLUSTER = "podwire"  # packaging/kind-up.sh's default KIND_CLUSTER_NAME


class KindError(RuntimeError):
    pass


class KindCluster(UpDown):
    """A kind cluster on a private engine: `with KindCluster("kw") as k: k.kubectl("get", "nodes")`."""
    teardown_error = KindError
    what = "kind teardown"

    def __init__(self, engine: str = "kind", cluster: str = CLUSTER, owner: ns.Proc | None = None,
                 config: Path = CONFIG):
        self.engine = Dockerd(engine, owner)
        self.cluster = cluster
        self.config = Path(config)  # manifests/kind-config.yaml, or its -dual / -ipv6 variant
        self.timings: dict[str, float] = {}

    @property
    def kubeconfig(self) -> Path:
        return self.engine.dir / "kubeconfig"

    def env(self) -> dict[str, str]:
        """kind, kubectl and kind-up.sh find Debian's docker, this engine, our kind and kubectl."""
        env = self.engine.env([str(build.bin_dir())])
        env.update(KUBECONFIG=str(self.kubeconfig), KIND=str(build.binary("kind")),
                   KUBECTL=str(build.binary("kubectl")), KIND_CLUSTER_NAME=self.cluster,
                   KIND_CONFIG=str(self.config))
        return env

    def run(self, argv, *, timeout: float = 600, check: bool = True, stream: bool = False,
            extra_env: dict | None = None) -> subprocess.CompletedProcess:
        """argv in the engine's network namespace with env(); streamed to our stderr when asked."""
        env = {**self.env(), **(extra_env or {})}
        full = self.engine.in_netns(argv)
        if stream:  # line by line into our stderr (pytest's capture has no file descriptor to hand over)
            popen = subprocess.Popen(full, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
            assert popen.stdout is not None
            lines: list[str] = []
            for line in popen.stdout:
                sys.stderr.write(line)
                lines = (lines + [line])[-60:]
            proc = subprocess.CompletedProcess(full, popen.wait(timeout=timeout), "", "".join(lines))
        else:
            proc = subprocess.run(full, env=env, timeout=timeout, cwd=REPO, capture_output=True, text=True)
        if check and proc.returncode != 0:
            tail = (proc.stderr or "").strip()[-3000:]
            raise KindError(f"{' '.join(map(str, argv))} exited {proc.returncode}: {tail}")
        return proc

    def kind(self, *args, **kw) -> subprocess.CompletedProcess:
        return self.run([build.binary("kind"), *args], **kw)

    def kubectl(self, *args, **kw) -> subprocess.CompletedProcess:
        return self.run([build.binary("kubectl"), "--context", f"kind-{self.cluster}", *args], **kw)

    def _timed(self, what: str, fn):
        started = time.monotonic()
        result = fn()
        self.timings[what] = round(time.monotonic() - started, 1)
        print(f"e2e.kind: {what}: {self.timings[what]}s", file=sys.stderr, flush=True)
        return result

    # -- lifecycle ------------------------------------------------------------------------

    def load_node_image(self) -> str:
        tarball = self._timed("node image (build or cache)", kind_image.node_image)
        name = kind_image.image_name(tarball)
        base = name + "-rootfs"

        def load():
            with open(tarball, "rb") as f:
                subprocess.run([DOCKER, "-H", self.engine.host, "import",
                                "--change", "ENV container=docker",
                                "--change", "ENTRYPOINT " + _json_list(kind_image.ENTRYPOINT),
                                "-", base], stdin=f, check=True, capture_output=True, timeout=600)
            # `docker import --change` refuses STOPSIGNAL; systemd stops cleanly on SIGRTMIN+3
            self.engine.docker("build", "-q", "-t", name, "-", input=f"FROM {base}\nSTOPSIGNAL SIGRTMIN+3\n",
                               timeout=300)
        self._timed("node image into docker", load)
        return name

    def up(self) -> "KindCluster":
        self._timed("dockerd up", self.engine.up)
        image = self.load_node_image()
        self._timed("kind create cluster", lambda: self.kind(
            "create", "cluster", "--name", self.cluster, "--config", str(self.config), "--image", image,
            "--retain", "--wait", "0s", stream=True, timeout=900))
        return self

    def install_podwire(self, archive: Path) -> None:
        """packaging/kind-up.sh as a user runs it (archive path), unchanged."""
        self._timed("packaging/kind-up.sh", lambda: self.run(
            ["bash", str(REPO / "packaging" / "kind-up.sh")], stream=True, timeout=900,
            extra_env={"PODWIRE_IMAGE_ARCHIVE": str(archive)}))

    def up_with_podwire(self, archive: Path) -> None:
        """up() then install_podwire(); when either fails, what the nodes saw (failed units, kubelet's
        last words) goes to stderr before the error does."""
        try:
            self.up()
            self.install_podwire(archive)
        except Exception:
            if self.engine.answers():
                print(self.node_logs()[-6000:], file=sys.stderr, flush=True)
            raise

    def load_images(self, tarballs, work: Path) -> None:
        """OCI image-layout tarballs into every node's containerd (namespace k8s.io) with one `kind load
        image-archive`: merged first (merge_oci_archives), so a layer several images share (the e2e
        images' ~240 MB Debian one) crosses into each node once, not once per image."""
        merged = work / "images.tar"
        self._timed("images merged", lambda: merge_oci_archives(tarballs, merged))
        try:
            self._timed("kind load image-archive", lambda: self.kind(
                "load", "image-archive", "--name", self.cluster, str(merged), timeout=900))
        finally:
            merged.unlink(missing_ok=True)

    def nodes(self) -> list[str]:
        return self.kind("get", "nodes", "--name", self.cluster, check=False).stdout.split()

    def node_logs(self) -> str:
        """What went wrong inside the nodes, for a failed run's report."""
        out = []
        for node in self.nodes():
            for cmd in (["systemctl", "--failed", "--no-pager"], ["journalctl", "-u", "kubelet", "-n", "30",
                                                                   "--no-pager"]):
                res = subprocess.run([DOCKER, "-H", self.engine.host, "exec", node, *cmd], capture_output=True,
                                     text=True, timeout=60)
                out.append(f"--- {node}: {' '.join(cmd)}\n{res.stdout}{res.stderr}")
        return "\n".join(out)

    def down(self) -> list[str]:
        # No `kind delete cluster`: removing the engine's containers and the engine itself is the same, and
        # works when kind or the API server is broken.
        return self.engine.down()



def merge_oci_archives(tarballs, out: Path) -> Path:
    """One OCI image-layout tarball holding every image of `tarballs` (each an OCI layout tarball, as
    e2e/images.py writes them): their index entries side by side (each keeps its image name
    annotation), every blob once."""
    manifests: list[dict] = []
    seen: set[str] = set()
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tarfile.open(tmp, "w") as dst:
            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                dst.addfile(info, io.BytesIO(data))

            add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            for tarball in tarballs:
                with tarfile.open(tarball) as src:
                    index = json.loads(_member(src, "index.json", tarball))
                    manifests += index.get("manifests", [])
                    for member in src:
                        name = member.name.removeprefix("./")
                        if member.isfile() and name.startswith("blobs/") and name not in seen:
                            seen.add(name)
                            info = tarfile.TarInfo(name)
                            info.size, info.mode = member.size, 0o644
                            dst.addfile(info, src.extractfile(member))
            add("index.json", json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                          "manifests": manifests}).encode())
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _member(tar: tarfile.TarFile, name: str, where) -> bytes:
    for candidate in (name, "./" + name):
        try:
            f = tar.extractfile(candidate)
        except KeyError:
            continue
        if f is not None:
            return f.read()
    raise KindError(f"{where}: no {name} (not an OCI image layout)")


def _json_list(items: list[str]) -> str:
    return json.dumps(items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m e2e.kind", description=__doc__.split("\n\n")[0])
    parser.add_argument("cmd", choices=("image", "up", "install", "kubectl", "down"))
    parser.add_argument("--name", default="kind", help="the private engine's name (network namespace pwk-NAME)")
    parser.add_argument("--podwire-image", type=Path, default=REPO / "dist" / "podwire-image.tar")
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="the kind config (manifests/kind-config-dual.yaml, -ipv6.yaml: other families)")
    argv = sys.argv[1:] if argv is None else argv
    rest = argv[argv.index("--") + 1:] if "--" in argv else []  # kubectl's own arguments
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    try:
        if args.cmd == "image":
            return kind_image.main()
        k = KindCluster(args.name, config=args.config)
        if args.cmd == "up":
            try:
                k.up()
            except BaseException:
                print(k.node_logs() if k.engine.answers() else "", file=sys.stderr)
                k.down()
                raise
            print(f"kind cluster {k.cluster} up; kubectl: python3 -m e2e.kind kubectl --name {args.name} -- get nodes")
        elif args.cmd == "install":
            k.install_podwire(args.podwire_image)
        elif args.cmd == "kubectl":
            return subprocess.run(k.engine.in_netns([build.binary("kubectl"), "--context", f"kind-{k.cluster}", *rest]),
                                  env=k.env()).returncode
        else:
            errors = k.down()
            for e in errors:
                print(f"e2e.kind: {e}", file=sys.stderr)
            return 1 if errors else 0
    except (ValueError, KindError, DockerdError, ns.CommandError, build.BuildError,
            subprocess.CalledProcessError) as err:
        print(f"e2e.kind: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
