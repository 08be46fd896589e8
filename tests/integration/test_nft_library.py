"""netkit.nft.Library: the daemon's in-process nft transactions (libnftables), run inside a
namespace of the test's own (the library acts on its caller's namespace, so the check runs in a
child process started there): a batch lands whole, a refused batch lands not at all and raises
NftError with nft's own message."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.cni_harness import ROOT

pytestmark = [pytest.mark.root]

CHILD = r"""
import json, sys
from netkit.nft import Library, NftError, NftRunner
runner = NftRunner()
out = {"library": runner.library is not None}
runner.apply("add table inet pwlib\nadd set inet pwlib s { type ipv4_addr; }\n"
             "add element inet pwlib s { 10.0.0.1, 10.0.0.2 }\n")
try:  # the second line fails: the first must not land either
    runner.apply("add element inet pwlib s { 10.0.0.3 }\nadd element inet pwlib nosuchset { 10.0.0.4 }\n")
    out["refused"] = None
except NftError as e:
    out["refused"] = str(e)
runner.apply("add element inet pwlib s { 10.0.0.5 }\n")  # the context is still good after an error
print(json.dumps(out))
"""


def test_library_transactions_are_atomic_and_errors_are_nfts(netns):
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CHILD], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["library"] is True  # loaded: the daemon's path, not the `nft -f` fallback
    # nft's message (libnftables 1.0.6 may point its caret at another line of the batch than `nft -f`)
    assert out["refused"].startswith("Error: No such file or directory")
    listed = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "set", "inet", "pwlib", "s"],
                            capture_output=True, text=True, check=True).stdout
    elems = next(x["set"] for x in json.loads(listed)["nftables"] if "set" in x).get("elem", [])
    assert sorted(elems) == ["10.0.0.1", "10.0.0.2", "10.0.0.5"]  # 10.0.0.3 went with its batch
