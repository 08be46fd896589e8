"""cni_plugin.wirejson gives what json.loads/json.dumps give, and the same error type."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from cni_plugin import wirejson

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DOCS = [
    '{"cniVersion": "1.0.0", "name": "n", "ipam": {"ranges": [[{"subnet": "10.1.0.0/24"}]]}, "mtu": 1500}',
    ' \n\t[1, 2.5, -3e2, null, true, false, "\\u00e9\\n\\"x\\"", {}, []] \r\n', '"text"', "0", "-0.0",
    '{"a": {"a": {"a": [[[]]]}}}', '{"dup": 1, "dup": 2}', '"\\ud83d\\ude00"', "1e400",
]
BAD = ["", "   ", "{", "{not json", "[1,]", '{"a":}', "{} x", "[] []", "nul", "\ufeff{}", '"\\x"', "[1 2]",
       '{"a" 1}', "01"]


@pytest.mark.parametrize("doc", DOCS)
def test_loads_matches_json(doc):
    assert wirejson.loads(doc) == json.loads(doc)
    assert wirejson.loads(doc.encode()) == json.loads(doc.encode())


def test_constants_as_json_reads_them():
    assert math.isnan(wirejson.loads("NaN")) and wirejson.loads("[-Infinity]") == [float("-inf")]


@pytest.mark.parametrize("doc", BAD)
def test_bad_documents_fail_as_json_fails(doc):
    with pytest.raises(json.JSONDecodeError) as ours:
        wirejson.loads(doc)
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(doc)
    assert (ours.value.msg, ours.value.pos) == (theirs.value.msg, theirs.value.pos)


def test_undecodable_bytes_and_bom():
    with pytest.raises(json.JSONDecodeError):
        wirejson.loads(b'{"a": "\xff"}')
    assert wirejson.loads(b"\xef\xbb\xbf{}") == json.loads(b"\xef\xbb\xbf{}") == {}


def test_errors_without_json_loaded_first():
    # the C scanner looks its error type up in sys.modules only; the frozen plugin has not loaded json
    code = ("import sys; sys.path.insert(0, %r); from cni_plugin import wirejson\n"
            "try:\n    wirejson.loads('{bad')\nexcept ValueError as e:\n    print(type(e).__name__, e.pos)") % ROOT
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["JSONDecodeError", "1"]


@pytest.mark.parametrize("obj", [
    {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "mac": "0a:58:0a:01:00:02", "mtu": 1500}],
     "ips": [{"address": "10.1.0.2/24"}], "dns": {}},
    ["é", "\n\t\x00", "\U0001f600", 1.5, float("inf"), -0.0, None, True, 10**30],
    {1: "int key", False: "bool key", None: "null key", 2.5: "float key"}, (1, 2), "plain", 7, None,
])
def test_dumps_matches_json(obj):
    assert wirejson.dumps(obj) == json.dumps(obj)


def test_dumps_refuses_what_json_refuses():
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        wirejson.dumps(loop)
    with pytest.raises(TypeError, match="not JSON serializable"):
        wirejson.dumps({"x": object()})
    with pytest.raises(TypeError):
        wirejson.dumps({(1, 2): "tuple key"})
