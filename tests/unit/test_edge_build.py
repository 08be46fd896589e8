"""The edge anchors' build wiring (e2e/build.py EDGE_TARGETS, e2e/edge_images.py): pure, no `go` run."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from e2e import build, edge_images, images

EDGE_BINARIES = {"traefik", "metallb-controller", "metallb-speaker", "echo-basic", "gateway-api-conformance.test"}


def test_no_existing_command_builds_the_edge_targets():
    for kube_proxy, conformance, kind in itertools.product((False, True), repeat=3):
        wanted = build.targets_for(kube_proxy=kube_proxy, conformance=conformance, kind=kind)
        assert not {t.binary for t in wanted} & EDGE_BINARIES
    assert not {t.binary for t in build.TARGETS} & EDGE_BINARIES  # `python3 -m e2e.build` builds TARGETS


def test_edge_flag_adds_exactly_the_edge_targets():
    base = build.targets_for()
    with_edge = build.targets_for(edge=True)
    assert with_edge[:len(base)] == base
    assert {t.binary for t in with_edge[len(base):]} == EDGE_BINARIES
    assert all(t.needed_by == build.EDGE for t in build.EDGE_TARGETS)


def test_binary_names_are_unique_in_the_shared_bin_dir():
    names = [t.binary for t in build.TARGETS + build.KIND_TARGETS + build.EDGE_TARGETS]
    assert len(names) == len(set(names))


def test_edge_targets_and_their_sources():
    by_binary = {t.binary: t for t in build.EDGE_TARGETS}
    assert by_binary["traefik"].package == "github.com/traefik/traefik/v3/cmd/traefik"
    assert by_binary["metallb-speaker"].source is build.METALLB is by_binary["metallb-controller"].source
    conformance = by_binary["gateway-api-conformance.test"]
    assert conformance.test and conformance.package == "sigs.k8s.io/gateway-api/conformance"
    assert by_binary["echo-basic"].package == "sigs.k8s.io/gateway-api/conformance/echo-basic"
    assert {t.source.version for t in build.EDGE_TARGETS} == {"v3.6.12", "v0.15.2", "v1.4.0"}
    # two sources' binaries in one `go build` are told apart by their package's last element
    assert len({t.package.rsplit("/", 1)[-1] for t in build.EDGE_TARGETS if not t.test}) == 4


def test_traefik_consumer_repeats_replaces_and_exclude():
    text = build.consumer_gomod(build.TRAEFIK, "module github.com/traefik/traefik/v3\n\ngo 1.25.0\n")
    assert text == (
        "module podwire.local/build/traefik\n\ngo 1.25.0\n\n"
        "require github.com/traefik/traefik/v3 v3.6.12\n\n"
        "replace github.com/abbot/go-http-auth => github.com/containous/go-http-auth "
        "v0.4.1-0.20200324110947-a37a7636d23e\n"
        "replace github.com/gorilla/mux => github.com/containous/mux v0.0.0-20250523120546-41b6ec3aed59\n"
        "replace github.com/mailgun/minheap => github.com/containous/minheap v0.0.0-20190809180810-6e71eb837595\n"
        "exclude github.com/tencentcloud/tencentcloud-sdk-go v3.0.83+incompatible\n"
    )


def test_extra_lines_follow_the_staging_replace_block():
    source = build.Source("k", "k8s.io/kubernetes", "v1.34.10", gomod_lines=("exclude example.com/x v1.0.0",))
    upstream = "module k8s.io/kubernetes\n\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n)\n"
    text = build.consumer_gomod(source, upstream)
    assert text.endswith("replace (\n\tk8s.io/api => k8s.io/api v0.34.10\n)\n\nexclude example.com/x v1.0.0\n")


def test_stamps_of_sources_without_extra_lines_are_unchanged():
    # a new key in every stamp would rebuild every cached Kubernetes binary once
    for t in build.TARGETS + build.KIND_TARGETS:
        assert set(build._stamp_of(t)) == {"binary", "module", "version", "package", "test", "ldflags", "main_go"}
    [traefik] = [t for t in build.EDGE_TARGETS if t.binary == "traefik"]
    assert build._stamp_of(traefik)["gomod_lines"] == list(build.TRAEFIK.gomod_lines)


def test_changed_gomod_lines_make_a_binary_stale(tmp_path):
    [target] = [t for t in build.EDGE_TARGETS if t.binary == "traefik"]
    path = build.binary(target.binary, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    build._stamp_path(target, tmp_path).write_text(json.dumps(build._stamp_of(target)))
    assert build.is_fresh(target, tmp_path)
    fewer = dataclasses.replace(target.source, gomod_lines=target.source.gomod_lines[:-1])
    assert not build.is_fresh(dataclasses.replace(target, source=fewer), tmp_path)


def test_edge_builds_run_niced_others_only_when_asked(monkeypatch):
    monkeypatch.delenv("PODWIRE_NICE", raising=False)
    for source in (build.TRAEFIK, build.METALLB, build.GATEWAY_API):
        assert build.go_command(source) == ["nice", "-n", "19", build.GO]
    assert build.go_command(build.KUBERNETES) == [build.GO] == build.go_command(None)
    monkeypatch.setenv("PODWIRE_NICE", "1")
    assert build.go_command(build.KUBERNETES) == ["nice", "-n", "19", build.GO]


def test_image_specs_run_the_upstream_entrypoints():
    by_name = {s.name: s for s in edge_images.specs()}
    assert by_name[edge_images.TRAEFIK].config["Entrypoint"] == ["/traefik"]
    assert by_name[edge_images.METALLB_CONTROLLER].config["Entrypoint"] == ["/controller"]
    assert by_name[edge_images.METALLB_SPEAKER].config["Entrypoint"] == ["/speaker"]
    assert by_name[edge_images.ECHO_BASIC].config == {"Entrypoint": ["/echo-basic"], "User": "65532:65532"}
    assert edge_images.TRAEFIK == "docker.io/library/traefik:v3.6.12"
    assert edge_images.METALLB_SPEAKER == "quay.io/metallb/speaker:v0.15.2"


def test_image_specs_are_built_from_known_targets_and_do_not_collide():
    known = {t.binary for t in build.TARGETS + build.EDGE_TARGETS}
    specs = edge_images.specs()
    assert edge_images.binaries() <= known
    for spec in specs:
        assert spec.inputs == (build.binary(spec.binary),)  # a rebuilt binary rewrites the image
    # one images/ directory holds every tarball: no edge image may overwrite a node image
    filenames = [s.filename for s in (*specs, *images.SPECS)]
    assert len(filenames) == len(set(filenames))


def test_nonroot_user_is_in_the_image_passwd():
    passwd = edge_images.ETC["etc/passwd"][0].decode().splitlines()
    assert "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" in passwd
    assert passwd[0].startswith("root:x:0:0:")


def test_unknown_crd_channel_is_refused_before_any_download():
    with pytest.raises(ValueError, match="unknown Gateway API channel 'beta'"):
        edge_images.gateway_api_crds("beta")
    with pytest.raises(ValueError):
        edge_images.gateway_api_crds("../../etc")
