"""What `make demo` builds and how long work reports itself (no root, no build)."""

from __future__ import annotations

import io
import time
from pathlib import Path

from e2e import build, demo
from e2e.progress import Progress, Ticker, elapsed


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_demo_builds_a_clusters_binaries_and_not_the_conformance_ones():
    names = {t.binary for t in demo.demo_targets()}
    assert names == {"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl", "etcd",
                     "coredns"}
    everything = {t.binary for t in build.targets_for(kube_proxy=True, conformance=True)}
    assert everything == {t.binary for t in build.TARGETS}  # every target is needed by something
    assert {"e2e.test", "agnhost", "regression-issue-74839"} <= everything - names
    assert "kube-proxy" in {t.binary for t in build.targets_for(kube_proxy=True)} - names


def test_the_demo_plan_names_only_missing_work():
    warm = demo.plan(Path("dist/podwire-image.tar"), [], "routed")
    assert [s.split(":")[0] for s in warm] == ["cluster", "install", "web server", "checks", "NetworkPolicy",
                                               "Ingress and Gateway API"]
    cold = demo.plan(None, ["kubelet", "etcd"], "l2")
    assert cold[0].startswith("podwire image") and cold[1].startswith("Kubernetes binaries: 2 to build, kubelet, etcd")
    assert "shape l2" in cold[2] and len(cold) == len(warm) + 2


def test_progress_says_the_step_what_is_left_and_elapsed_time():
    clock = Clock()
    p = Progress("e2e.build", ["kubernetes v1.34.10 (kubelet, kubectl)", "etcd v3.6.16 (etcd)"], every=30, clock=clock)
    assert p.heartbeat() is None  # nothing started yet
    assert p.start(0) == "e2e.build [1/2] kubernetes v1.34.10 (kubelet, kubectl); then: etcd v3.6.16"
    clock.now += 29
    assert p.heartbeat() is None  # not yet due
    assert p.count("go: downloading k8s.io/api v0.34.10\n") and p.count("k8s.io/kubernetes/pkg/kubelet\n")
    assert p.count("errors") and not p.count("pkg/x/y.go:12:3: undefined: Foo") and not p.count("# k8s.io/x")
    clock.now += 1
    assert p.heartbeat() == ("e2e.build [1/2] kubernetes v1.34.10 (kubelet, kubectl): still running, 30s "
                             "(1 modules downloaded, 2 packages compiled); 30s in all; then: etcd v3.6.16")
    assert p.heartbeat() is None  # one line per interval
    clock.now += 95
    assert p.finish() == "e2e.build [1/2] kubernetes v1.34.10 (kubelet, kubectl): done in 2m05s"
    assert p.start(1) == "e2e.build [2/2] etcd v3.6.16 (etcd)"  # nothing left after the last
    clock.now += 31
    assert p.heartbeat() == "e2e.build [2/2] etcd v3.6.16 (etcd): still running, 31s; 2m36s in all"


def test_elapsed_reads_as_a_person_writes_it():
    assert [elapsed(s) for s in (0, 42, 65, 3599, 3720)] == ["0s", "42s", "1m05s", "59m59s", "1h02m"]


def test_ticker_prints_heartbeats_while_its_block_runs():
    out = io.StringIO()
    p = Progress("==", ["cluster"], every=0.0)
    p.start(0)
    with Ticker(p, out, poll=0.01):
        time.sleep(0.1)
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("== [1/1] cluster: still running") for line in lines)
    n = len(lines)
    time.sleep(0.05)
    assert len(out.getvalue().splitlines()) == n  # stopped with the block


def test_go_output_is_counted_not_shown_but_errors_are(tmp_path, capfd):
    p = Progress("e2e.build", ["x"], every=3600)
    p.start(0)
    script = "echo k8s.io/a/b >&2; echo 'go: downloading k8s.io/c v1.0.0' >&2; echo 'b.go:1:2: oops' >&2; echo out"
    assert build._run(["sh", "-c", script], tmp_path, {"PATH": "/usr/bin:/bin"}, p) == "out\n"
    command, *shown = capfd.readouterr().err.splitlines()
    assert command.startswith("+ sh -c") and shown == ["b.go:1:2: oops"]
    assert (p.packages, p.downloads) == (1, 1)
