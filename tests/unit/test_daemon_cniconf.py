"""Conflist rendering (the lead's contract with the plugin) and the atomic write."""

import ipaddress as ipa
import json
import os

import pytest

from cni_plugin.config import SUPPORTED_VERSIONS
from node_daemon.cniconf import CniSettings, conflist, network_config, render, write_if_changed

V4, V6 = ipa.ip_network("10.244.1.0/24"), ipa.ip_network("fd10:244:1::/64")


def test_dual_stack_conflist_matches_the_plugin_contract():
    conf = json.loads(render((V4, V6), 1450, CniSettings()))
    assert conf == {
        "cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"], "name": "podwire",
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


def test_the_daemons_conflist_is_render_and_bad_arguments_are_refused():
    assert json.loads(render((V4,), 1500, CniSettings(), "/run/p.sock")) == conflist((V4,), 1500, CniSettings(),
                                                                                      "/run/p.sock")
    with pytest.raises(ValueError, match="podCIDR"):
        conflist((), 1500, CniSettings())
    with pytest.raises(ValueError, match="mtu"):
        conflist((V4,), 67, CniSettings())


def test_a_chain_for_reference_plugins_and_the_config_a_runtime_hands_podwire():
    portmap = {"type": "portmap", "capabilities": {"portMappings": True}}
    chain = conflist((V4,), 1500, CniSettings(), name="chain", cni_version="1.0.0", cni_versions=(),
                     state_dir="/tmp/s", port_mappings=False, chained=(portmap,))
    assert "cniVersions" not in chain and chain["cniVersion"] == "1.0.0"  # nothing to negotiate up to 1.1.0
    podwire = chain["plugins"][0]
    assert "capabilities" not in podwire and podwire["stateDir"] == "/tmp/s"  # portmap maps the ports
    assert chain["plugins"][1] == portmap
    conf = network_config(chain)
    assert conf["name"] == "chain" and conf["cniVersion"] == "1.0.0" and conf["type"] == "podwire"
    assert network_config(chain, 1)["type"] == "portmap"
    assert network_config(conflist((V4,), 1500, CniSettings()), cni_version="1.1.0")["cniVersion"] == "1.1.0"


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
    with open(s.path) as f:
        assert json.loads(f.read())["plugins"][0]["mtu"] == 1450


def _semver(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def libcni_version(conflist: dict, implements: str, negotiates: bool) -> str:
    """The version libcni runs a conflist with (containernetworking/cni libcni/conf.go): before
    v1.2 `cniVersion` as written; from v1.2 the highest of cniVersion + cniVersions it implements."""
    if not negotiates or "cniVersions" not in conflist:
        return conflist["cniVersion"]
    offered = [*conflist["cniVersions"], conflist["cniVersion"]]
    return max((v for v in offered if _semver(v) <= _semver(implements)), key=_semver, default=conflist["cniVersion"])


# (runtime, the libcni it vendors: CNI version it implements, whether it reads cniVersions)
RUNTIMES = [("containerd 1.6 (libcni v1.1.1/Debian v1.1.2)", "1.0.0", False),
            ("containerd 1.7 (libcni v1.1.2)", "1.0.0", False),
            ("containerd 2.0 (libcni v1.2.3)", "1.1.0", True),
            ("containerd 2.1-2.3 (libcni v1.3.0)", "1.1.0", True)]


def test_every_runtime_gets_a_version_it_implements_and_2x_gets_status_and_gc():
    conf = json.loads(render((V4,), 1500, CniSettings()))
    for runtime, implements, negotiates in RUNTIMES:
        chosen = libcni_version(conf, implements, negotiates)
        # a result newer than libcni implements fails every pod ("unsupported CNI result version")
        assert _semver(chosen) <= _semver(implements), runtime
        assert chosen in SUPPORTED_VERSIONS, runtime
        # libcni sends STATUS and GC only to configs of 1.1.0 or newer
        assert (chosen == "1.1.0") == negotiates, runtime


def test_the_old_conflist_failed_on_containerd_1x():
    old = {"cniVersion": "1.1.0", "name": "podwire", "plugins": []}
    assert libcni_version(old, "1.0.0", False) == "1.1.0"  # > 1.0.0: what containerd 1.6/1.7 reject


def test_policy_socket_goes_into_the_plugin_config_the_plugin_parses():
    from cni_plugin.config import parse_netconf

    conf = json.loads(render((V4,), 1450, CniSettings(), "/run/podwire/policy.sock"))
    entry = conf["plugins"][0]
    assert entry["policy"] == {"socket": "/run/podwire/policy.sock", "timeout": 15,
                               "namespacesFile": "/run/podwire/policy-namespaces.json"}
    parsed = parse_netconf(dict(entry, name=conf["name"], cniVersion="1.0.0"))
    assert parsed.policy.socket == "/run/podwire/policy.sock" and parsed.policy.timeout == 15
    assert "policy" not in json.loads(render((V4,), 1450, CniSettings()))["plugins"][0]
