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


def test_kube_proxy_parity_defaults():
    c = parse_args(["--node-name", "n"])
    assert c.proxy_metrics_address == "127.0.0.1:10249"  # kube-proxy's --metrics-bind-address
    assert (c.conntrack_tcp_timeout_close_wait, c.conntrack_tcp_timeout_established) == (3600, 86400)
    assert c.conntrack_max_per_core == 0 and c.conntrack_min == 131072  # nf_conntrack_max: left alone


def test_kube_proxy_parity_flags_and_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"node_name": "n", "proxy_metrics_address": "[::1]:10249",
                             "conntrack_tcp_timeout_established": 0, "conntrack_max_per_core": 32768}))
    c = parse_args(["--config", str(f), "--conntrack-tcp-timeout-close-wait", "7200", "--conntrack-min", "1000"])
    assert c.proxy_metrics_address == "[::1]:10249"
    assert (c.conntrack_tcp_timeout_close_wait, c.conntrack_tcp_timeout_established) == (7200, 0)
    assert (c.conntrack_max_per_core, c.conntrack_min) == (32768, 1000)
    for off in ("", "127.0.0.1:0"):
        assert parse_args(["--node-name", "n", "--proxy-metrics-address", off]).proxy_metrics_address == off


@pytest.mark.parametrize("key, value", [
    ("proxy_metrics_address", "localhost:10249"), ("proxy_metrics_address", "127.0.0.1"),
    ("proxy_metrics_address", "nonsense:0"), ("proxy_metrics_address", "127.0.0.1:65536"),
    ("proxy_metrics_address", 10249), ("proxy_metrics_address", "127.0.0.1:-1"),
    ("conntrack_tcp_timeout_close_wait", -1), ("conntrack_tcp_timeout_close_wait", "3600"),
    ("conntrack_tcp_timeout_close_wait", 3600.0), ("conntrack_tcp_timeout_close_wait", True),
    ("conntrack_tcp_timeout_established", 2**31), ("conntrack_max_per_core", -5),
    ("conntrack_max_per_core", 2**40), ("conntrack_min", None), ("conntrack_min", 2**31)])
def test_kube_proxy_parity_options_refuse_bad_values(tmp_path, key, value):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"node_name": "n", key: value}))
    with pytest.raises(SystemExit) as e:
        parse_args(["--config", str(f)])
    assert e.value.code == 2
