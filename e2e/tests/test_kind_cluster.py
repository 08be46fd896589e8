"""The kind path end to end, for real: our dockerd in its namespace, the offline node image,
`kind create cluster --config manifests/kind-config.yaml`, packaging/kind-up.sh unchanged, then the
demo's checks; the machine is left as found.

Several minutes (warm: ~3), so it is its own command, not part of `make test`:
    make kind-e2e        (PODWIRE_KIND_E2E=1 python3 -m pytest e2e/tests/test_kind_cluster.py)
"""

from __future__ import annotations

import os
import subprocess

import pytest

from e2e import dockerd, host_sysctls, kind_demo
from e2e import netns as ns
from e2e.kind import REPO, KindCluster

pytestmark = [
    pytest.mark.root, pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("PODWIRE_KIND_E2E") != "1", reason="the kind e2e is its own command: "
                       "make kind-e2e (PODWIRE_KIND_E2E=1)"),
    pytest.mark.skipif(not os.path.exists(dockerd.DOCKERD), reason="docker.io not installed (scripts/install-deps.sh)"),
]


@pytest.fixture(scope="module")
def podwire_image():
    """make image's tarball, (re)made when the sources changed: what a user's kind-up.sh loads."""
    subprocess.run(["make", "-s", "image"], cwd=REPO, check=True, capture_output=True)
    return REPO / "dist" / "podwire-image.tar"


def test_kind_cluster_with_podwire_passes_the_demo_checks_and_leaves_nothing(podwire_image, capsys):
    before, sysctls = dockerd.root_namespace_view(), host_sysctls.snapshot()
    dockerd.sweep(abandoned_only=True)  # engines of killed sessions
    kind = KindCluster(f"e{os.getpid() % 100000}", owner=ns.this_process("pytest"))
    try:
        results = kind_demo.run(kind, podwire_image)
    finally:
        errors = kind.down()
        with capsys.disabled():
            print(f"\nkind e2e timings (s): {kind.timings}")
    failed = [f"{label}: {detail}" for label, ok, detail in results if not ok]
    assert not failed, "\n".join(failed)
    assert len(results) >= 14  # every check ran: 3 pod->pod, DNS, Service, 3 NodePorts, EXTERNAL-IP, egress,
    # 3 policy, spread
    assert errors == []
    assert kind.engine.leftovers() == []
    assert dockerd.root_namespace_view() == before
    changed = host_sysctls.changed(sysctls, host_sysctls.snapshot())
    assert changed == {}, f"host-global sysctls changed by the kind nodes: {changed}"
