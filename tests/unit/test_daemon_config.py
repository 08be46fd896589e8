"""Configuration: defaults < file < flags; bad input is refused with a message."""

import ipaddress as ipa
import json

import pytest

from node_daemon.config import parse_args
from node_daemon.plan import Mode


def test_file_then_flags(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"node_name": "from-file", "mode": "vxlan", "vxlan": {"port": 8472},
                             "cni": {"conf_dir": "/tmp/x"}, "cluster_cidrs": ["10.244.0.0/16"]}))
    c = parse_args(["--config", str(f), "--vxlan-vni", "42", "--mode", "direct", "--no-egress"])
    assert c.node_name == "from-file" and c.mode is Mode.DIRECT and c.egress is False
    assert (c.vxlan.port, c.vxlan.vni, c.vxlan.device) == (8472, 42, "podwire.vxlan")
    assert c.cni.conf_dir == "/tmp/x" and c.cni.conf_name == "10-podwire.conflist"
    assert c.cluster_cidrs == (ipa.ip_network("10.244.0.0/16"),)


@pytest.mark.parametrize("argv", [["--mode", "bogus"], ["--vxlan-port", "0"], ["--cluster-cidr", "10.0.0.1/8"],
                                  ["--vxlan-device", "a-very-long-interface"]])
def test_bad_flags_exit_with_usage(argv):
    with pytest.raises(SystemExit) as e:
        parse_args(["--node-name", "n", *argv])
    assert e.value.code == 2


def test_unknown_file_key(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"node_name": "x", "colour": "blue"}))
    with pytest.raises(SystemExit):
        parse_args(["--config", str(f)])


def test_yaml_config(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("node_name: y1\nmode: vxlan\nvxlan:\n  vni: 7\ncluster_cidrs: [10.244.0.0/16, 'fd10::/56']\n")
    c = parse_args(["--config", str(f)])
    assert (c.node_name, c.mode, c.vxlan.vni) == ("y1", Mode.VXLAN, 7)
    assert [n.version for n in c.cluster_cidrs] == [4, 6]
