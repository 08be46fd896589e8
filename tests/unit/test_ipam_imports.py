"""ipam runs inside the CNI plugin's start-up: it may pull in only cheap standard modules."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALLOWED = ["os", "fcntl", "errno", "json", "time"]

PROBE = f"""
import json, sys
import {", ".join(ALLOWED)}
before = set(sys.modules)
import ipam.allocator, ipam.config, ipam.errors, ipam.store
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_ipam_imports_nothing_beyond_the_allowed_stdlib_modules():
    out = subprocess.run([sys.executable, "-S", "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True)
    added = json.loads(out.stdout)
    # netkit.record: the project's frozen records, a fraction of dataclasses' import cost
    # ipam.addr: addresses over ints (ipaddress pulls in functools and collections)
    assert added == ["__future__", "ipam", "ipam.addr", "ipam.allocator", "ipam.config", "ipam.errors", "ipam.store",
                     "netkit", "netkit.record"]


def test_ipam_does_not_load_heavy_modules():
    heavy = ("typing", "logging", "json", "pathlib", "subprocess", "dataclasses", "inspect", "re", "ipaddress",
             "functools", "collections")
    probe = f"import sys, ipam.allocator; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
