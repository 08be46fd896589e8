"""Build the real Kubernetes components the e2e harness runs, from their Go modules.

Why it is built so: no release binary can be downloaded here, but the Go module proxy is
reachable. `go install k8s.io/kubernetes/cmd/...@v1.34.N` does not work (k8s.io/kubernetes
needs its staging modules through replace directives, which Go ignores in a dependency), so
every upstream source gets a small generated *consumer module* in the cache directory, and
`go build` runs there. Nothing fetched ever lands in the checkout.

Cache layout (PODWIRE_CACHE, default /var/cache/podwire)::

    k8s/<k8s version>/bin/<binary>          the binaries the harness runs
    k8s/<k8s version>/bin/.<binary>.stamp   what built it (source, version, package, ldflags)
    k8s/<k8s version>/src/<source>-<ver>/   generated consumer modules (go.mod, go.sum, main.go)
    gomodcache/  gocache/                   GOMODCACHE and GOCACHE, shared by all versions

A binary whose stamp matches its target is never rebuilt, so a warm run runs no `go` at all.
Adding a target (e.g. agnhost, e2e.test) is one line in TARGETS.

    python3 -m e2e.build            build what is missing
    python3 -m e2e.build --check    exit 1 (and list them) if anything is missing

Traefik, MetalLB and the Gateway API suite (EDGE_TARGETS) are built only by `python3 -m
e2e.edge_images`. Their `go` commands run under `nice -n 19` (Source.nice) so they take only
idle CPU; PODWIRE_NICE=1 does the same for every build.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from e2e.progress import Progress, Ticker

# Pinned versions. KUBERNETES is the newest 1.34.x patch the module proxy serves here
# (its @v/list is sparse: it lists v1.34.0-v1.34.4 only; v1.34.11 and v1.34.12 resolve but
# have no checksum-database entry, so `go` refuses them, and we do not turn verification off).
KUBERNETES_VERSION = "v1.34.10"
ETCD_VERSION = "v3.6.16"
COREDNS_VERSION = "v1.12.4"
# kind is pinned: its default node image moves with each release, and a newer kind (or Kubernetes)
# may stop booting on the cgroup v1 machines here (shared/notes/kind.md).
KIND_VERSION = "v0.33.0"
# The outside-traffic anchors (issue 14, shared/notes/edge.md): Traefik v3.7 and MetalLB v0.16 do not
# resolve through the module proxy; Traefik v3.6 ships Gateway API v1.4.0.
TRAEFIK_VERSION = "v3.6.12"
METALLB_VERSION = "v0.15.2"
GATEWAY_API_VERSION = "v1.4.0"

GO = os.environ.get("PODWIRE_GO", "go")


def cache_root() -> Path:
    return Path(os.environ.get("PODWIRE_CACHE", "/var/cache/podwire"))


@dataclasses.dataclass(frozen=True)
class Source:
    """One upstream Go module, built through its own generated consumer module."""

    name: str  # short key, used in paths
    module: str  # the upstream module path
    version: str
    ldflags: tuple[str, ...] = ()
    # Optional package main written into the consumer module (for sources whose
    # main package lives in a module we cannot require, like etcd's root module).
    main_go: str = ""
    # Staging modules replaced by another published version than the source's own (module,
    # version): for a patch the module proxy does not serve.
    pins: tuple[tuple[str, str], ...] = ()
    # go.mod directives repeated from upstream's go.mod (replace, exclude): Go obeys them only in
    # the main module, so a source whose go.mod needs them does not resolve without them.
    gomod_lines: tuple[str, ...] = ()
    # Run its `go` commands under `nice -n 19` (heavy optional builds take only idle CPU).
    nice: bool = False

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.version}"


def _k8s_ldflags(version: str) -> tuple[str, ...]:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return tuple(flags)


# k8s.io/sample-apiserver v0.34.10 (only e2e.test imports it, for the aggregator test's wardle
# types) is refused by the module proxy here ("403 This module version is not available", also
# .5-.9); v0.34.4 is the newest lower patch it serves, and the types are the same.
KUBERNETES = Source("kubernetes", "k8s.io/kubernetes", KUBERNETES_VERSION, _k8s_ldflags(KUBERNETES_VERSION),
                    pins=(("k8s.io/sample-apiserver", "v0.34.4"),))
# etcd's binary is the root module go.etcd.io/etcd/v3, whose go.mod replaces every sibling
# with a relative path; server/v3 carries the real entry point (etcdmain), so a three-line
# main over it is the whole binary. The version string is a constant in api/v3/version.
ETCD = Source(
    "etcd",
    "go.etcd.io/etcd/server/v3",
    ETCD_VERSION,
    main_go=(
        "package main\n\n"
        'import (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n"
    ),
)
COREDNS = Source("coredns", "github.com/coredns/coredns", COREDNS_VERSION)
KIND = Source("kind", "sigs.k8s.io/kind", KIND_VERSION)
# Traefik's go.mod replaces three dependencies by containous forks and excludes a tencentcloud
# version; without them the module graph does not resolve (`go install ...@v3.6.12` fails).
TRAEFIK = Source(
    "traefik", "github.com/traefik/traefik/v3", TRAEFIK_VERSION,
    # as its release workflow (.github/workflows/release.yaml) stamps v3.6.x; the date stays unset (reproducible)
    ldflags=(f"-X github.com/traefik/traefik/v3/pkg/version.Version={TRAEFIK_VERSION}",
             "-X github.com/traefik/traefik/v3/pkg/version.Codename=ramequin"),
    gomod_lines=(
        "replace github.com/abbot/go-http-auth => github.com/containous/go-http-auth "
        "v0.4.1-0.20200324110947-a37a7636d23e",
        "replace github.com/gorilla/mux => github.com/containous/mux v0.0.0-20250523120546-41b6ec3aed59",
        "replace github.com/mailgun/minheap => github.com/containous/minheap v0.0.0-20190809180810-6e71eb837595",
        "exclude github.com/tencentcloud/tencentcloud-sdk-go v3.0.83+incompatible",
    ),
    nice=True,
)
# MetalLB's version string is a constant in its internal/version package; no ldflags needed.
METALLB = Source("metallb", "go.universe.tf/metallb", METALLB_VERSION, nice=True)
# The Gateway API module holds the CRDs (config/crd), the conformance suite and its echo-basic backend
# (a main package inside the module: its own go.mod is shipped renamed to .go.mod).
GATEWAY_API = Source("gateway-api", "sigs.k8s.io/gateway-api", GATEWAY_API_VERSION, nice=True)


# What needs a target: every cluster (control plane, kubelets, CoreDNS), a cluster with kube-proxy
# (the anchor of benchmarks and parity tests), or the conformance command (e2e.test and the
# binaries of the test images it runs), or the kind path (kind itself, and kubeadm for its node image:
# e2e/kind.py). `make demo` builds the first kind only.
CLUSTER, KUBE_PROXY, CONFORMANCE, KIND_NODE = "cluster", "kube-proxy", "conformance", "kind"
EDGE = "edge"  # LoadBalancer / Ingress / Gateway API anchors: e2e/edge_images.py


@dataclasses.dataclass(frozen=True)
class Target:
    binary: str
    source: Source
    package: str  # import path of the main package ("." = the consumer module's own main.go)
    test: bool = False  # build with `go test -c` (e2e.test)
    needed_by: str = CLUSTER


TARGETS: tuple[Target, ...] = (
    Target("kube-apiserver", KUBERNETES, "k8s.io/kubernetes/cmd/kube-apiserver"),
    Target("kube-controller-manager", KUBERNETES, "k8s.io/kubernetes/cmd/kube-controller-manager"),
    Target("kube-scheduler", KUBERNETES, "k8s.io/kubernetes/cmd/kube-scheduler"),
    Target("kubelet", KUBERNETES, "k8s.io/kubernetes/cmd/kubelet"),
    Target("kube-proxy", KUBERNETES, "k8s.io/kubernetes/cmd/kube-proxy", needed_by=KUBE_PROXY),
    Target("kubectl", KUBERNETES, "k8s.io/kubernetes/cmd/kubectl"),
    Target("etcd", ETCD, "."),
    Target("coredns", COREDNS, "github.com/coredns/coredns"),
    Target("agnhost", KUBERNETES, "k8s.io/kubernetes/test/images/agnhost", needed_by=CONFORMANCE),
    Target("e2e.test", KUBERNETES, "k8s.io/kubernetes/test/e2e", test=True, needed_by=CONFORMANCE),  # go test -c
    Target("regression-issue-74839", KUBERNETES, "k8s.io/kubernetes/test/images/regression-issue-74839",
           needed_by=CONFORMANCE),
)
# Only the kind path (python3 -m e2e.kind) builds these, so `python3 -m e2e.build` and the e2e fixtures
# do not spend minutes on them: kubeadm goes into the node image, kind drives the cluster.
KIND_TARGETS: tuple[Target, ...] = (
    Target("kubeadm", KUBERNETES, "k8s.io/kubernetes/cmd/kubeadm", needed_by=KIND_NODE),
    Target("kind", KIND, "sigs.k8s.io/kind", needed_by=KIND_NODE),
)
# Only e2e/edge_images.py builds these (~20 min CPU cold, niced): Traefik, MetalLB's two binaries,
# the Gateway API conformance backend and the conformance suite itself (`go test -c`).
EDGE_TARGETS: tuple[Target, ...] = (
    Target("traefik", TRAEFIK, "github.com/traefik/traefik/v3/cmd/traefik", needed_by=EDGE),
    Target("metallb-controller", METALLB, "go.universe.tf/metallb/controller", needed_by=EDGE),
    Target("metallb-speaker", METALLB, "go.universe.tf/metallb/speaker", needed_by=EDGE),
    Target("echo-basic", GATEWAY_API, "sigs.k8s.io/gateway-api/conformance/echo-basic", needed_by=EDGE),
    Target("gateway-api-conformance.test", GATEWAY_API, "sigs.k8s.io/gateway-api/conformance", test=True,
           needed_by=EDGE),
)


def targets_for(*, kube_proxy: bool = False, conformance: bool = False, kind: bool = False,
                edge: bool = False) -> tuple[Target, ...]:
    """What a command needs built: a cluster's binaries, kube-proxy's when it runs one, the
    conformance command's on top, kind's (kind, kubeadm) for the kind path, the edge anchors'."""
    wanted = ({CLUSTER} | ({KUBE_PROXY} if kube_proxy else set()) | ({CONFORMANCE} if conformance else set())
              | ({KIND_NODE} if kind else set()) | ({EDGE} if edge else set()))
    return tuple(t for t in TARGETS + KIND_TARGETS + EDGE_TARGETS if t.needed_by in wanted)


# ---------------------------------------------------------------------------------------
# paths and stamps


def version_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / "k8s" / KUBERNETES_VERSION


def bin_dir(root: Path | None = None) -> Path:
    return version_dir(root) / "bin"


def binary(name: str, root: Path | None = None) -> Path:
    """Path of a built binary (does not build it)."""
    return bin_dir(root) / name


def _stamp_of(target: Target) -> dict:
    return {
        "binary": target.binary,
        "module": target.source.module,
        "version": target.source.version,
        "package": target.package,
        "test": target.test,
        "ldflags": list(target.source.ldflags),
        "main_go": hashlib.sha256(target.source.main_go.encode()).hexdigest()[:16],
        # only when set: the stamps of sources without extra lines stay as they were
        **({"gomod_lines": list(target.source.gomod_lines)} if target.source.gomod_lines else {}),
    }


def _stamp_path(target: Target, root: Path | None) -> Path:
    return bin_dir(root) / f".{target.binary}.stamp"


def is_fresh(target: Target, root: Path | None = None) -> bool:
    path, stamp = binary(target.binary, root), _stamp_path(target, root)
    try:
        return path.is_file() and os.access(path, os.X_OK) and json.loads(stamp.read_text()) == _stamp_of(target)
    except (OSError, ValueError):
        return False


def missing(targets=TARGETS, root: Path | None = None) -> list[Target]:
    return [t for t in targets if not is_fresh(t, root)]


# ---------------------------------------------------------------------------------------
# consumer modules


def go_env(root: Path | None = None) -> dict[str, str]:
    root = root or cache_root()
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(root / "gomodcache"),
        GOCACHE=str(root / "gocache"),
        CGO_ENABLED="0",
        GOTOOLCHAIN="local",
        GOFLAGS="-mod=mod -buildvcs=false",
    )
    return env


class BuildError(RuntimeError):
    pass


def go_command(source: Source | None = None) -> list[str]:
    """The argv prefix that runs `go`: under `nice -n 19` for a niced source or with PODWIRE_NICE=1."""
    nice = os.environ.get("PODWIRE_NICE") == "1" or (source is not None and source.nice)
    return ["nice", "-n", "19", GO] if nice else [GO]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], progress: Progress | None = None) -> str:
    """Run a go command; its stderr is shown, except the lines `progress` counts (packages compiled,
    modules downloaded), which its heartbeat sums up instead."""
    print("+", " ".join(cmd), f"(in {cwd})", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    stdout: list[str] = []
    pipe = proc.stdout  # bound here: mypy does not carry the assert's narrowing into the lambda
    reader = threading.Thread(target=lambda: stdout.append(pipe.read()), daemon=True)
    reader.start()
    with contextlib.ExitStack() as stack:
        if progress:
            stack.enter_context(Ticker(progress))
        for line in proc.stderr:
            if progress is None or not progress.count(line):
                sys.stderr.write(line)
                sys.stderr.flush()
        proc.wait()
    reader.join()
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:4])} failed with exit code {proc.returncode} (output above)")
    return "".join(stdout)


def _download(source: Source, env: dict[str, str], cwd: Path) -> dict:
    """`go mod download -json` of source@version into GOMODCACHE (a cached module is only read)."""
    return json.loads(_run([*go_command(source), "mod", "download", "-json", f"{source.module}@{source.version}"],
                           cwd, env))


def _upstream_gomod(source: Source, env: dict[str, str], cwd: Path) -> str:
    """The go.mod the proxy serves for source@version (through `go mod download`, so cached)."""
    return Path(_download(source, env, cwd)["GoMod"]).read_text()


def module_dir(source: Source, root: Path | None = None) -> Path:
    """The source's module tree in the shared GOMODCACHE (read-only), downloaded when missing:
    for the files of a module that no build compiles (manifests, CRDs)."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return Path(_download(source, go_env(root), root)["Dir"])


_STAGING_RE = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/src/", re.M)
_HEADER_RE = re.compile(r"^(go|godebug)\s+.*$", re.M)


def consumer_gomod(source: Source, upstream_gomod: str) -> str:
    """go.mod of the consumer module: require the source, replace k8s staging modules.

    Pure: the upstream go.mod text in, our go.mod text out. The `go` and `godebug` lines are
    copied so the binaries run with the GODEBUG defaults upstream builds them with.
    """
    lines = [f"module podwire.local/build/{source.name}", ""]
    lines += [m.group(0) for m in _HEADER_RE.finditer(upstream_gomod)]
    lines += ["", f"require {source.module} {source.version}", ""]
    staging = sorted(set(_STAGING_RE.findall(upstream_gomod)))
    if staging:
        staging_version = "v0." + source.version.split(".", 1)[1]  # v1.34.12 -> v0.34.12
        lines.append("replace (")
        pinned = dict(source.pins)
        lines += [f"\t{mod} => {mod} {pinned.get(mod, staging_version)}" for mod in staging]
        lines.append(")")
    if source.gomod_lines:
        lines += ([""] if lines[-1] else []) + list(source.gomod_lines)
    return "\n".join(lines) + "\n"


def prepare_consumer(source: Source, root: Path | None = None) -> Path:
    """Write (once) the consumer module for a source; return its directory."""
    root = root or cache_root()
    env = go_env(root)
    mod_dir = version_dir(root) / "src" / source.dirname
    gomod = mod_dir / "go.mod"
    # What the go.mod was generated from: a changed recipe (e.g. a new pin) rewrites it.
    recipe = mod_dir / ".recipe"
    want = json.dumps([source.module, source.version, source.pins, source.main_go]
                      + ([list(source.gomod_lines)] if source.gomod_lines else []))
    if gomod.exists() and recipe.exists() and recipe.read_text() == want:
        return mod_dir
    mod_dir.mkdir(parents=True, exist_ok=True)
    text = consumer_gomod(source, _upstream_gomod(source, env, mod_dir.parent))
    if source.main_go:
        (mod_dir / "main.go").write_text(source.main_go)
    tmp = gomod.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(gomod)  # go.mod appears only complete; go.sum is filled in by -mod=mod
    recipe.write_text(want)
    return mod_dir


# ---------------------------------------------------------------------------------------
# building


def build_source(source: Source, targets: list[Target], root: Path | None = None,
                 progress: Progress | None = None) -> None:
    root = root or cache_root()
    env = go_env(root)
    mod_dir = prepare_consumer(source, root)
    out = bin_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    ldflags = " ".join(("-s", "-w") + source.ldflags)
    go = go_command(source)
    plain = [t for t in targets if not t.test]
    if plain:
        # One `go build` for all of a source's binaries: shared packages compile once.
        # With several packages and -o <dir>/, go writes each binary under its own name.
        tmp_dir = out / f".tmp-{source.name}"
        tmp_dir.mkdir(exist_ok=True)
        packages = [t.package for t in plain]
        # -v: each package's name as it compiles, counted into the progress lines
        _run([*go, "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", f"{tmp_dir}/", *packages], mod_dir, env,
             progress)
        for t in plain:
            # go names a binary after the last element of its package (module) path
            built = tmp_dir / (source.name if t.package == "." else Path(t.package).name)
            os.replace(built, out / t.binary)
            _stamp_path(t, root).write_text(json.dumps(_stamp_of(t)))
        tmp_dir.rmdir()
    for t in targets:
        if t.test:
            tmp = out / f".{t.binary}.tmp"
            _run([*go, "test", "-c", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), t.package], mod_dir, env,
                 progress)
            os.replace(tmp, out / t.binary)
            _stamp_path(t, root).write_text(json.dumps(_stamp_of(t)))


def ensure_built(targets=TARGETS, root: Path | None = None) -> Path:
    """Build whatever is missing; return the bin directory. A warm call runs no `go`."""
    if not missing(targets, root):
        return bin_dir(root)
    # One builder at a time per version (two pytest sessions may start together); the
    # second one finds everything fresh once it gets the lock.
    version_dir(root).mkdir(parents=True, exist_ok=True)
    with open(version_dir(root) / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build_missing(targets, root)
    return bin_dir(root)


def build_steps(todo) -> list[tuple[Source, list[Target]]]:
    """The missing targets grouped by source, in TARGETS order: one build step each."""
    by_source: dict[Source, list[Target]] = {}
    for t in todo:
        by_source.setdefault(t.source, []).append(t)
    return list(by_source.items())


def step_label(source: Source, targets: list[Target]) -> str:
    return f"{source.name} {source.version} ({', '.join(t.binary for t in targets)})"


def _build_missing(targets, root: Path | None) -> None:
    steps = build_steps(missing(targets, root))
    if not steps:
        return
    progress = Progress("e2e.build", [step_label(s, ts) for s, ts in steps])
    print(f"e2e.build: {sum(len(ts) for _, ts in steps)} binaries to build from their Go modules; a first build "
          f"downloads the modules and compiles for many minutes (a line every {progress.every:.0f} s), later runs "
          "reuse the cache", file=sys.stderr, flush=True)
    for i, (source, ts) in enumerate(steps):
        print(progress.start(i), file=sys.stderr, flush=True)
        build_source(source, ts, root, progress)
        print(progress.finish(), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m e2e.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report missing binaries (exit 1 if any)")
    parser.add_argument("--print-bin-dir", action="store_true", help="print the bin directory and exit")
    args = parser.parse_args(argv)
    if args.print_bin_dir:
        print(bin_dir())
        return 0
    if args.check:
        todo = missing()
        for t in todo:
            print(f"missing: {binary(t.binary)}")
        if not todo:
            print(f"all {len(TARGETS)} binaries present in {bin_dir()}")
        return 1 if todo else 0
    started = time.monotonic()
    try:
        ensure_built()
    except BuildError as err:
        print(f"e2e.build: {err}", file=sys.stderr)
        return 1
    print(f"e2e.build: all binaries in {bin_dir()} ({time.monotonic() - started:.1f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
