"""`python3 -m e2e.conformance --cluster kind`: its pure parts (no root, no cluster).

The run itself (engine, kind create cluster, kind-up.sh, e2e.test in the engine's namespace) is
`python3 -m e2e.conformance --cluster kind`; its summaries are in e2e/results/*-kind-*.md."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e import conformance as conf
from e2e import images

WHEN = time.strptime("2026-11-27 22:14", "%Y-%m-%d %H:%M")


def test_result_names_keep_the_harness_names_and_name_kind():
    assert conf.result_basename("conformance", "harness", WHEN) == "conformance-20261127T2214Z"
    assert conf.result_basename("netpol", "kind", WHEN) == "netpol-kind-20261127T2214Z"


def test_kind_refuses_what_its_three_nodes_cannot_hold():
    assert conf.kind_refusal("conformance", None) is None
    assert conf.kind_refusal("netpol", None) is None
    assert "6 nodes" in (conf.kind_refusal("topology", None) or "")
    assert "--nodes" in (conf.kind_refusal("conformance", 4) or "")


def test_kind_nodes_get_busybox_and_the_suites_images_once_each():
    every = conf.kind_node_images(tuple(images.TEST_IMAGE_CONFIGS))
    assert every[0] == images.BUSYBOX and set(every) == {images.BUSYBOX, *images.TEST_IMAGE_CONFIGS}
    assert len(every) == len(set(every))
    assert conf.kind_node_images((images.AGNHOST, images.BUSYBOX)) == [images.BUSYBOX, images.AGNHOST]
    assert images.PAUSE not in every  # the node image has it (kubeadm's images)


def test_summary_is_written_under_the_kind_name(tmp_path: Path):
    res = [conf.Outcome("[sig-network] A [Conformance]", "passed", 3.0),
           conf.Outcome("[sig-network] B [Conformance]", "failed", 1.0, "boom")]
    out = conf.summarize("podwire: upstream e2e, conformance on kind", "conformance", "kind",
                         {"cluster": "kind (3 nodes)"}, res, {}, tmp_path)
    assert out["counts"] == {"passed": 1, "failed": 1, "skipped": 0}
    md, junit = out["paths"]
    assert md.name.startswith("conformance-kind-") and md.suffix == ".md"
    assert junit.name.endswith(".junit.xml") and junit.name.startswith("conformance-kind-")
    assert "- cluster: kind (3 nodes)" in md.read_text()
    assert 'failures="1"' in junit.read_text()


def test_run_shards_runs_e2e_test_through_the_wrapper(tmp_path: Path):
    """The wrapper (kind: nsenter into the engine's namespace) is what starts each shard; a stand-in
    e2e.test writes the JSON report e2e.test would, so the report path and argv are real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "e2e.test"
    fake.write_text(f"#!{sys.executable}\n"
                    "import json, sys\n"
                    "arg = next(a for a in sys.argv if a.startswith('--ginkgo.json-report='))\n"
                    "spec = {'LeafNodeType': 'It', 'LeafNodeText': 'x [Conformance]', 'State': 'passed',\n"
                    "        'ContainerHierarchyTexts': ['[sig-network] T'], 'RunTime': 2e9}\n"
                    "open(arg.split('=', 1)[1], 'w').write(json.dumps([{'SpecReports': [spec]}]))\n")
    fake.chmod(0o755)
    wrapped = []

    def wrap(argv):
        wrapped.append(argv)
        return ["env", "PODWIRE_WRAPPED=1", *argv]

    target = conf.KindTarget(bin_dir, tmp_path / "kubeconfig")
    reports = conf.run_shards(target, [["[sig-network] T x [Conformance]"]], tmp_path, [], wrap=wrap)
    assert len(wrapped) == 1 and wrapped[0][0] == str(fake)
    assert f"--kubeconfig={tmp_path / 'kubeconfig'}" in wrapped[0]
    assert conf.outcomes(reports, ["[sig-network] T x [Conformance]"])[0].state == "passed"


def test_run_shards_leaves_no_e2e_test_running_when_interrupted(tmp_path: Path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "e2e.test").write_text("#!/bin/sh\nexec sleep 60\n")
    (bin_dir / "e2e.test").chmod(0o755)
    real_wait = subprocess.Popen.wait
    seen: list[subprocess.Popen] = []

    def interrupted_once(self, timeout=None):  # Ctrl-C while waiting for the first shard
        seen.append(self)
        if len(seen) == 1:
            raise KeyboardInterrupt
        return real_wait(self, timeout)

    monkeypatch.setattr(subprocess.Popen, "wait", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        conf.run_shards(conf.KindTarget(bin_dir, tmp_path / "kc"), [["a"], ["b"]], tmp_path, [])
    monkeypatch.undo()
    procs = list(dict.fromkeys(seen))
    assert len(procs) == 2  # both shards were started, and both were reaped
    for p in procs:
        p.wait(timeout=10)
        assert p.returncode is not None and p.returncode < 0  # killed, not left to sleep out its 60 s


def test_cli_refuses_topology_on_kind_before_touching_anything(capsys, monkeypatch):
    monkeypatch.setattr(conf.os, "geteuid", lambda: 0)
    assert conf.main(["--cluster", "kind", "--suite", "topology"]) == 2
    assert "6 nodes in 3 zones" in capsys.readouterr().err
    assert conf.main(["--cluster", "kind", "--nodes", "5"]) == 2
    assert conf.main(["--cluster", "kind", "--name", "../../etc"]) == 2
    assert "bad dockerd name '../../etc'" in capsys.readouterr().err
    assert conf.main(["--cluster", "kind", "--podwire-image", "/nonexistent/podwire.tar"]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_merged_archive_holds_every_image_by_name_and_a_shared_layer_once(tmp_path: Path):
    import json
    import tarfile

    from e2e.kind import KindError, merge_oci_archives

    layer = images.oci.layer_tar(images.rootfs({"hello": (b"hi\n", 0o644)}))
    a = images.write_image(tmp_path / "a.tar", "example.test/a:1", layer, {"Cmd": ["/a"]})
    b = images.write_image(tmp_path / "b.tar", "example.test/b:1", layer, {"Cmd": ["/b"]})
    out = merge_oci_archives([a, b], tmp_path / "merged.tar")
    with tarfile.open(out) as tar:
        names = tar.getnames()
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]] == \
        ["example.test/a:1", "example.test/b:1"]
    assert len(names) == len(set(names)) and "oci-layout" in names
    layer_digest = "blobs/sha256/" + images.oci.sha256(layer).split(":", 1)[1]
    assert names.count(layer_digest) == 1
    blobs = [n for n in names if n.startswith("blobs/")]
    assert len(blobs) == 5  # one layer + two configs + two manifests
    not_oci = tmp_path / "x.tar"
    with tarfile.open(not_oci, "w"):
        pass
    with pytest.raises(KindError, match="not an OCI image layout"):
        merge_oci_archives([not_oci], tmp_path / "m2.tar")
