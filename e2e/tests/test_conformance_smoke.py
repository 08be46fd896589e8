"""The upstream conformance runner (e2e/conformance.py): its pure parts, and one small real run.

The real run is the whole pipeline on a fresh cluster — podwire's image and DaemonSet, the e2e
images, `e2e.test` — with a focus on a few fast sig-network Conformance tests (pod to pod
across nodes over HTTP and UDP, a Service's endpoints). The full suite (45 tests, tens of
minutes on 2 cores) is `python3 -m e2e.conformance`, not part of the default run.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET

import pytest

from e2e import conformance as conf
from e2e import images

NAMES = [
    "[sig-network] DNS should provide DNS for the cluster [Conformance]",
    "[sig-network] Services should serve a basic endpoint from pods [Conformance]",
    "[sig-network] Services should allow pods to hairpin back to themselves through services",
    "[sig-network] Foo [Serial] should run alone [Conformance]",
    "[sig-storage] Volumes should work [Conformance]",
]


def test_parse_list_reads_the_names_of_list_tests():
    text = ("The following spec names can be used with 'ginkgo run --focus/skip':\n"
            "    k8s.io/kubernetes@v1.34.10/test/e2e/network/dns.go:54: " + NAMES[0] + "\n"
            "    k8s.io/kubernetes@v1.34.10/test/e2e/network/service.go:740: " + NAMES[1] + "\n\n")
    assert conf.parse_list(text) == NAMES[:2]
    # kept as is: ginkgo's text of e.g. "... should proxy logs on node using proxy subresource " ends in a space
    assert conf.parse_list("    x/proxy.go:93: [sig-network] Proxy should a \n") == ["[sig-network] Proxy should a "]


def test_select_applies_focus_and_skip_like_ginkgo():
    focus, skip = conf.SUITES["conformance"]
    assert conf.select(NAMES, focus, skip) == [NAMES[0], NAMES[1], NAMES[3]]
    focus, skip = conf.SUITES["services"]
    assert conf.select(NAMES, focus, skip) == [NAMES[2]]
    assert conf.select(NAMES, r"\[sig-network\]", r"DNS|Serial") == [NAMES[1], NAMES[2]]


def test_shards_are_disjoint_and_serial_tests_run_alone_last():
    shards = conf.shard(NAMES, 2)
    assert shards[-1] == [NAMES[3]]
    assert sorted(sum(shards, [])) == sorted(NAMES)
    assert all("[Serial]" not in n for s in shards[:-1] for n in s)
    assert conf.shard(NAMES[:1], 3) == [NAMES[:1]]  # no empty shards


def test_exact_focus_matches_only_the_given_names_as_ginkgo_sees_them():
    rx = re.compile(conf.exact_focus(NAMES[:2]))  # RE2 and Python agree on this subset
    as_ginkgo = [f"Kubernetes e2e suite {n}" for n in NAMES]  # description + " " + spec text
    assert [bool(rx.search(t)) for t in as_ginkgo] == [True, True, False, False, False]
    assert not rx.search("Kubernetes e2e suite " + NAMES[1] + " [Slow]")  # anchored at the end
    assert conf.select(NAMES, conf.exact_focus(NAMES[:2])) == NAMES[:2]


def spec(name: str, state: str, msg: str = "") -> dict:
    hier, leaf = name.split(" should ", 1)
    return {"LeafNodeType": "It", "ContainerHierarchyTexts": [hier], "LeafNodeText": "should " + leaf,
            "State": state, "RunTime": 2_500_000_000,
            "Failure": {"Message": msg, "Location": {"FileName": "service.go", "LineNumber": 7}} if msg else None}


def test_outcomes_map_ginkgo_states_and_missing_tests_fail():
    reports = [{"SpecReports": [
        spec(NAMES[0], "passed"), spec(NAMES[1], "timedout", "timed out waiting"),
        spec(NAMES[2], "skipped", "Only supported for providers [gce]"), spec(NAMES[4], "passed"),
        {"LeafNodeType": "SynchronizedBeforeSuite", "State": "passed"},
    ]}, {"SpecReports": [  # another shard's report: NAMES[0] filtered out there (no message)
        {**spec(NAMES[0], "skipped"), "Failure": None},
    ]}]
    res = conf.outcomes(reports, NAMES[:4])
    assert [r.state for r in res] == ["passed", "failed", "skipped", "failed"]
    assert res[1].message == "timed out waiting" and res[1].location == "service.go:7" and res[1].seconds == 2.5
    assert "did not report" in res[3].message
    assert conf.counts(res) == {"passed": 1, "failed": 2, "skipped": 1}


def test_summary_files_name_every_test_with_its_state():
    res = conf.outcomes([{"SpecReports": [spec(NAMES[0], "passed"), spec(NAMES[1], "failed", "boom\nstack")]}],
                        NAMES[:2])
    md = conf.render_markdown("t", {"podwire": "abc"}, res, {})
    assert "**1 passed, 1 failed, 0 skipped**" in md and "- podwire: abc" in md
    assert f"`{NAMES[1]}` (2 s) — boom" in md.split("## passed")[0]
    root = ET.fromstring(conf.render_junit("t", res))
    assert root.get("tests") == "2" and root.get("failures") == "1"
    failed = [c for c in root.iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == [NAMES[1]]


# -- the real thing ---------------------------------------------------------------------------

SMOKE = [
    "[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http "
    "[NodeConformance] [Conformance]",
    "[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: udp "
    "[NodeConformance] [Conformance]",
    "[sig-network] Services should serve a basic endpoint from pods [Conformance]",
]


@pytest.mark.root
@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_upstream_sig_network_conformance_smoke(tmp_path):
    summary = conf.run(f"c{os.getpid() % 100000}", conf.exact_focus(SMOKE), "", "smoke", shards=1, results=None,
                       work_dir=tmp_path, test_images=(images.AGNHOST,))
    states = {r.name: r.state for r in summary["results"]}
    assert states == {n: "passed" for n in SMOKE}, summary["markdown"] + "\n" + json.dumps(
        {r.name: r.message for r in summary["results"] if r.state != "passed"}, indent=1)
