"""Images and files for the outside-traffic anchors (issue 14): Traefik, MetalLB, Gateway API.

Why it is built so: as for the rest of the harness, nothing can be pulled or downloaded as a
release here. The binaries come from their Go modules through e2e/build.py (EDGE_TARGETS: a
consumer module each, niced, cached with the Kubernetes binaries), and each becomes a minimal
OCI image as upstream ships it (a static binary on an otherwise empty rootfs, the upstream
entrypoint) through e2e/images.py's writer and cache. The YAML a cluster needs (the Gateway API
CRDs, MetalLB's manifest and CRDs) is read from the module cache (`go mod download` into the
shared GOMODCACHE), never copied into the checkout.

Images (name → what it holds):

* TRAEFIK             /traefik (upstream: alpine + ca-certificates + tzdata; we need neither: no ACME)
* METALLB_CONTROLLER  /controller (upstream: distroless/static)
* METALLB_SPEAKER     /speaker (L2 mode only: FRR mode's cp-tool, frr-metrics are left out)
* ECHO_BASIC          /echo-basic, user 65532 (docker/Dockerfile.echo-basic), under the exact
                      name the conformance suite's base manifests ask for
* CONFORMANCE_COREDNS the harness's CoreDNS under the older name those manifests ask for (their
                      UDP backend; a Deployment every conformance run starts)

    python3 -m e2e.edge_images          build what is missing, print where everything is
    python3 -m e2e.edge_images --json   the same as JSON (for scripts)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from e2e import build, images

TRAEFIK = f"docker.io/library/traefik:{build.TRAEFIK_VERSION}"
METALLB_CONTROLLER = f"quay.io/metallb/controller:{build.METALLB_VERSION}"
METALLB_SPEAKER = f"quay.io/metallb/speaker:{build.METALLB_VERSION}"
# conformance/base/manifests.yaml of gateway-api v1.4.0 (tests/integration/test_edge_images.py checks)
ECHO_BASIC = "gcr.io/k8s-staging-gateway-api/echo-basic:v20240412-v1.0.0-394-g40c666fd"
CONFORMANCE_COREDNS = "registry.k8s.io/coredns/coredns:v1.12.2"
CONFORMANCE_BINARY = "gateway-api-conformance.test"

NONROOT = 65532  # distroless's nonroot user, which echo-basic's upstream image runs as
ETC = {
    **images.ETC,
    "etc/passwd": (images.ETC["etc/passwd"][0] + f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
                   .encode(), 0o644),
    "etc/group": (images.ETC["etc/group"][0] + f"nonroot:x:{NONROOT}:\n".encode(), 0o644),
}


@dataclasses.dataclass(frozen=True)
class StaticImageSpec(images.ImageSpec):
    """One static binary (a build.py target) at /`entry` on an otherwise empty rootfs, as
    distroless/static images are; `inputs` holds the binary's path, so a rebuild rewrites the image."""

    binary: str = ""
    entry: str = ""

    def rootfs(self):
        return images.rootfs({self.entry: (build.binary(self.binary).read_bytes(), 0o755), **ETC},
                             dirs=("etc", "tmp", "proc", "sys", "dev"))


def _static(name: str, binary: str, entry: str, config: dict) -> StaticImageSpec:
    return StaticImageSpec(name, (build.binary(binary),), {"Entrypoint": [f"/{entry}"], **config}, binary, entry)


def specs() -> tuple[StaticImageSpec, ...]:
    """The edge images (a function: binary paths follow PODWIRE_CACHE at call time)."""
    return (
        _static(TRAEFIK, "traefik", "traefik", {"ExposedPorts": {"80/tcp": {}}, "Volumes": {"/tmp": {}}}),
        _static(METALLB_CONTROLLER, "metallb-controller", "controller", {}),
        _static(METALLB_SPEAKER, "metallb-speaker", "speaker", {}),
        _static(ECHO_BASIC, "echo-basic", "echo-basic", {"User": f"{NONROOT}:{NONROOT}"}),
        _static(CONFORMANCE_COREDNS, "coredns", "coredns", {"ExposedPorts": {"53/tcp": {}, "53/udp": {}}}),
    )


def binaries() -> set[str]:
    """The build.py targets the images hold (coredns is a cluster target, usually built already)."""
    return {spec.binary for spec in specs()}


def targets_for(names) -> list[build.Target]:
    """The build.py targets that the images called `names` hold."""
    wanted = {spec.binary for spec in specs() if spec.name in names}
    return [t for t in build.TARGETS + build.EDGE_TARGETS if t.binary in wanted]


def edge_images(names=None) -> dict[str, Path]:
    """Edge images (name → tarball; all unless `names`: the demo needs Traefik alone), building the
    binaries and tarballs that are missing."""
    chosen = [spec for spec in specs() if names is None or spec.name in names]
    build.ensure_built(targets_for({spec.name for spec in chosen}))
    return {spec.name: images.ensure_image(spec) for spec in chosen}


def conformance_binary() -> Path:
    """The Gateway API conformance suite (`go test -c` of sigs.k8s.io/gateway-api/conformance).
    Run it as `<binary> -test.v -test.run TestConformance --gateway-class=traefik
    --conformance-profiles=GATEWAY-HTTP --supported-features=... --report-output=report.yaml`
    with KUBECONFIG set; its base manifests are embedded (no working directory needed)."""
    [target] = [t for t in build.EDGE_TARGETS if t.binary == CONFORMANCE_BINARY]
    build.ensure_built([target])
    return build.binary(CONFORMANCE_BINARY)


# -- YAML from the module cache ------------------------------------------------------------------

CRD_CHANNELS = ("standard", "experimental")


def gateway_api_crds(channel: str = "standard") -> Path:
    """config/crd/<channel> of the Gateway API module, read-only (the module cache). standard holds
    only the CRDs (`kubectl apply -f <dir>`); experimental holds a kustomization.yaml beside them
    (`kubectl apply -k <dir>`: `-f` would read the kustomization as an object and fail)."""
    if channel not in CRD_CHANNELS:
        raise ValueError(f"unknown Gateway API channel {channel!r} (one of {', '.join(CRD_CHANNELS)})")
    return _in_module(build.GATEWAY_API, f"config/crd/{channel}")


def metallb_manifest() -> Path:
    """MetalLB's all-in-one L2 manifest (namespace, CRDs, RBAC, controller, speaker, webhook)."""
    return _in_module(build.METALLB, "config/manifests/metallb-native.yaml")


def metallb_crds() -> Path:
    """MetalLB's CRDs alone (config/crd/bases)."""
    return _in_module(build.METALLB, "config/crd/bases")


def _in_module(source: build.Source, relative: str) -> Path:
    path = build.module_dir(source) / relative
    if not path.exists():
        raise FileNotFoundError(f"{relative} is not in {source.module}@{source.version}")
    return path


# -- command line ----------------------------------------------------------------------------------


def paths() -> dict:
    """Everything the edge sessions install, as paths (builds what is missing)."""
    return {
        "images": {name: str(path) for name, path in edge_images().items()},
        "conformance": str(conformance_binary()),
        "gateway_api_crds": {channel: str(gateway_api_crds(channel)) for channel in CRD_CHANNELS},
        "metallb_manifest": str(metallb_manifest()),
        "metallb_crds": str(metallb_crds()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m e2e.edge_images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the paths as JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        found = paths()
    except build.BuildError as err:
        print(f"e2e.edge_images: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for name, path in found["images"].items():
        print(f"{name:75} {Path(path).stat().st_size / 1e6:7.1f} MB  {path}")
    print(f"conformance suite: {found['conformance']}")
    for channel, path in found["gateway_api_crds"].items():
        print(f"Gateway API CRDs ({channel}): {path}")
    print(f"MetalLB manifest: {found['metallb_manifest']}\nMetalLB CRDs: {found['metallb_crds']}")
    print(f"e2e.edge_images: done in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
