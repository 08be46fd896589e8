"""Conflist rendering (the lead's contract with the plugin) and the atomic write."""

import ipaddress as ipa
import json
import os

from node_daemon.cniconf import CniSettings, render, write_if_changed

V4, V6 = ipa.ip_network("10.244.1.0/24"), ipa.ip_network("fd10:244:1::/64")


def test_dual_stack_conflist_matches_the_plugin_contract():
    conf = json.loads(render((V4, V6), 1450, CniSettings()))
    assert conf == {
        "cniVersion": "1.1.0", "name": "podwire",
        "plugins": [{
            "type": "podwire", "bridge": "podwire0", "isGateway": True, "hairpinMode": True,
            "ipMasq": False, "mtu": 1450, "logFile": "/var/log/podwire-cni.log",
            "ipam": {"type": "host-local",
                     "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd10:244:1::/64"}]],
                     "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                     "dataDir": "/var/lib/cni/networks"},
            "capabilities": {"portMappings": True}}]}


def test_single_stack_and_primary_family_order():
    conf = json.loads(render((V6, V4), 1500, CniSettings(bridge="br9", data_dir="/d")))
    ipam = conf["plugins"][0]["ipam"]
    assert ipam["ranges"][0] == [{"subnet": "fd10:244:1::/64"}] and ipam["routes"][0] == {"dst": "::/0"}
    assert conf["plugins"][0]["bridge"] == "br9" and ipam["dataDir"] == "/d"
    only4 = json.loads(render((V4,), 1500, CniSettings()))["plugins"][0]["ipam"]
    assert only4["ranges"] == [[{"subnet": "10.244.1.0/24"}]] and only4["routes"] == [{"dst": "0.0.0.0/0"}]


def test_no_podcidr_renders_nothing():
    assert render((), 1500, CniSettings()) is None


def test_write_is_atomic_and_idempotent(tmp_path):
    s = CniSettings(conf_dir=str(tmp_path / "net.d"))
    text = render((V4,), 1500, s)
    assert write_if_changed(s.path, text) is True
    inode = os.stat(s.path).st_ino
    assert write_if_changed(s.path, text) is False
    assert os.stat(s.path).st_ino == inode
    assert write_if_changed(s.path, render((V4,), 1450, s)) is True
    assert os.stat(s.path).st_ino != inode  # replaced by rename, never rewritten in place
    assert os.listdir(tmp_path / "net.d") == ["10-podwire.conflist"]  # no temp files left
    assert json.loads(open(s.path).read())["plugins"][0]["mtu"] == 1450
