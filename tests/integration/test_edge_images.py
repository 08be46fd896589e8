"""The edge anchors' images and files (e2e/edge_images.py): each image holds a binary that runs, the
YAML comes from the module cache, and our image names are the ones upstream's manifests ask for.

Building is cached: cold, `python3 -m e2e.edge_images` (make edge-images) takes tens of minutes, so run
that first; warm, these tests take seconds. The binaries run inside a network namespace of the test's
own (MetalLB's controller and speaker try to reach an API server; none is there).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from e2e import build, edge_images
from tests.integration.cni_harness import in_ns
from tests.integration.test_image_layout import blob, read_layout

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tarballs() -> dict[str, Path]:
    return edge_images.edge_images()


def image_file(tarball: Path, dest: Path) -> tuple[dict, Path]:
    """The image's config and its entrypoint binary, extracted to `dest`."""
    index, files = read_layout(str(tarball))
    [entry] = index["manifests"]
    manifest = json.loads(blob(files, entry["digest"]))
    config = json.loads(blob(files, manifest["config"]["digest"]))
    [layer] = manifest["layers"]
    entrypoint = config["config"]["Entrypoint"][0].lstrip("/")
    layer_tar = dest / "layer.tar"
    layer_tar.write_bytes(blob(files, layer["digest"]))
    with tarfile.open(layer_tar) as tar:
        tar.extract(tar.getmember(entrypoint), dest, filter="tar")
    return {"name": entry["annotations"]["io.containerd.image.name"], **config["config"]}, dest / entrypoint


def run_in(netns: str, *argv: str, timeout: float = 30) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "KUBECONFIG": "/nonexistent"}
    done = in_ns(netns, *argv, check=False, timeout=timeout, env=env)
    return done.stdout + done.stderr


@pytest.mark.root
@pytest.mark.parametrize("name, argv, expect", [
    (edge_images.TRAEFIK, ["version"], r"Version:\s+v3\.6\.12"),
    # no version flag: each logs its version first, then fails to find an API server
    (edge_images.METALLB_CONTROLLER, [], r"MetalLB controller starting version 0\.15\.2"),
    (edge_images.METALLB_SPEAKER, [], r"MetalLB speaker starting version 0\.15\.2"),
    (edge_images.CONFORMANCE_COREDNS, ["-version"], r"CoreDNS-1\.12\.4"),
])
def test_image_entrypoint_runs_and_reports_its_version(tarballs, netns, tmp_path, name, argv, expect):
    config, binary = image_file(tarballs[name], tmp_path)
    assert config["name"] == name
    assert re.search(expect, run_in(netns, str(binary), *argv)), f"{name}: no {expect!r} in its output"


@pytest.mark.root
def test_echo_basic_answers_with_the_request_and_its_pod(tarballs, netns, tmp_path):
    config, binary = image_file(tarballs[edge_images.ECHO_BASIC], tmp_path)
    assert config["User"] == "65532:65532"
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    env = {"HTTP_PORT": "8080", "H2C_PORT": "8081", "POD_NAME": "echo-1", "NAMESPACE": "infra"}
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", str(binary)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        script = ("import urllib.request,sys,time\n"
                  "for _ in range(100):\n"
                  "    try: sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:8080/a/b', timeout=2).read()"
                  ".decode()); break\n"
                  "    except OSError: time.sleep(0.1)\n")
        answer = json.loads(in_ns(netns, "python3", "-c", script).stdout)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (answer["path"], answer["namespace"], answer["pod"]) == ("/a/b", "infra", "echo-1")


def test_conformance_binary_holds_the_suite_and_its_flags():
    binary = edge_images.conformance_binary()
    listed = subprocess.run([str(binary), "-test.list", "."], capture_output=True, text=True, timeout=60)
    assert listed.stdout.split() == ["TestConformance"]
    usage = subprocess.run([str(binary), "-help"], capture_output=True, text=True, timeout=60)
    for flag in ("-gateway-class", "-conformance-profiles", "-supported-features", "-report-output"):
        assert flag in usage.stderr


def test_yaml_comes_from_the_module_cache_not_the_checkout():
    gomodcache = build.cache_root() / "gomodcache"
    standard = edge_images.gateway_api_crds("standard")
    experimental = edge_images.gateway_api_crds("experimental")
    for path in (standard, experimental, edge_images.metallb_manifest(), edge_images.metallb_crds()):
        assert path.is_relative_to(gomodcache) and not path.is_relative_to(ROOT)
    assert not (standard / "kustomization.yaml").exists() and (experimental / "kustomization.yaml").exists()
    kinds = {p.name for p in standard.glob("*.yaml")}
    assert {"gateway.networking.k8s.io_gateways.yaml", "gateway.networking.k8s.io_httproutes.yaml"} <= kinds
    assert "gateway.networking.k8s.io_tcproutes.yaml" in {p.name for p in experimental.glob("*.yaml")}
    assert "bundle-version: v1.4.0" in (standard / "gateway.networking.k8s.io_gateways.yaml").read_text()
    assert (edge_images.metallb_crds() / "metallb.io_ipaddresspools.yaml").exists()


def test_image_names_are_the_ones_upstream_manifests_ask_for():
    manifest = edge_images.metallb_manifest().read_text()
    assert set(re.findall(r"image: (\S+)", manifest)) == {edge_images.METALLB_CONTROLLER, edge_images.METALLB_SPEAKER}
    base = build.module_dir(build.GATEWAY_API) / "conformance/base/manifests.yaml"
    assert set(re.findall(r"image: (\S+)", base.read_text())) == {edge_images.ECHO_BASIC,
                                                                  edge_images.CONFORMANCE_COREDNS}


def test_traefik_consumer_repeats_every_upstream_directive():
    """Go ignores a dependency's replace and exclude lines: ours must be exactly upstream's."""
    upstream = Path(build.module_dir(build.TRAEFIK) / "go.mod").read_text()
    block = re.search(r"^replace \((.*?)^\)", upstream, re.M | re.S)
    replaces = [f"replace {line.strip()}" for line in (block.group(1) if block else "").splitlines() if line.strip()]
    replaces += re.findall(r"^replace [^(].*$", upstream, re.M)
    excludes = re.findall(r"^exclude .*$", upstream, re.M)
    assert sorted(build.TRAEFIK.gomod_lines) == sorted(replaces + excludes)


def test_warm_call_writes_nothing(tarballs):
    before = {name: path.stat().st_mtime_ns for name, path in tarballs.items()}
    started = time.monotonic()
    again = edge_images.edge_images()
    assert {name: path.stat().st_mtime_ns for name, path in again.items()} == before
    assert time.monotonic() - started < 5


@pytest.mark.root
def test_images_run_in_a_real_containerd(tarballs, tmp_path):
    """As a node would: imported by name into containerd (a private one, in a namespace of our own), run."""
    from tests.integration.test_image import running_containerd

    netns = "pwt-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        with running_containerd(netns, tmp_path / "ctrd", str(tarballs[edge_images.TRAEFIK])) as ctr:
            for name in (edge_images.METALLB_CONTROLLER, edge_images.CONFORMANCE_COREDNS):
                ctr("images", "import", "--snapshotter", "native", str(tarballs[name]), timeout=180)

            def run(name: str, *args: str) -> str:
                done = ctr("run", "--rm", "--snapshotter", "native", name, "pwt-" + uuid.uuid4().hex[:8], *args,
                           check=False)
                return done.stdout + done.stderr

            # ctr's arguments replace the entrypoint (a pod's replace only Cmd): name the binary
            assert re.search(r"Version:\s+v3\.6\.12\s+Codename:\s+ramequin",
                             run(edge_images.TRAEFIK, "/traefik", "version"))
            assert "CoreDNS-1.12.4" in run(edge_images.CONFORMANCE_COREDNS, "/coredns", "-version")
            # no arguments: the image's own entrypoint
            assert "MetalLB controller starting version 0.15.2" in run(edge_images.METALLB_CONTROLLER)
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
