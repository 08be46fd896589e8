"""Daemon.sync with fake edges: what gets planned, written and patched, and what is skipped."""

import ipaddress as ipa
import json
import time

import pytest

from node_daemon.cniconf import CniSettings
from node_daemon.config import Config
from node_daemon.daemon import Daemon
from node_daemon.dataplane import Changes
from node_daemon.metrics import DaemonMetrics
from node_daemon.netlink import DataplaneError
from node_daemon.plan import Underlay


def node(name, ip, cidrs=(), mac=None, conditions=None):
    return {"metadata": {"name": name, "resourceVersion": "1",
                         "annotations": {"podwire.io/vtep-mac": mac} if mac else {}},
            "spec": {"podCIDRs": list(cidrs)},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                       "conditions": conditions or []}}


class Cache:
    def __init__(self, *objs):
        self.objs = {o["metadata"]["name"]: o for o in objs}

    def list(self):
        return list(self.objs.values())

    def get(self, key):
        return self.objs.get(key)


class FakeDataplane:
    def __init__(self, fail=False):
        self.applied, self.fail = [], fail

    def read_underlay(self, ifname, ips):
        return Underlay("eth0", (ipa.ip_interface("192.168.1.1/24"),), 1500)

    def apply(self, desired, name):
        self.applied.append(desired)
        if self.fail:
            raise DataplaneError("add route x: Network unreachable")
        return Changes(add={k: frozenset() for k in ("addresses", "routes", "fdb", "neighbours")},
                       remove={k: frozenset() for k in ("addresses", "routes", "fdb", "neighbours")})


class Recorder:
    def __init__(self):
        self.patches, self.status, self.nft = [], [], []

    def patch(self, name, body):
        self.patches.append((name, body))

    def patch_status(self, name, body):
        self.status.append((name, body))

    def apply(self, text):
        self.nft.append(text)


def make(tmp_path, cache, dp=None, **cfg):
    rec = Recorder()
    c = Config(node_name="n1", cni=CniSettings(conf_dir=str(tmp_path)),
               cluster_cidrs=(ipa.ip_network("10.244.0.0/16"),), **cfg)
    d = Daemon(c, nodes=cache, dataplane=dp or FakeDataplane(), metrics=DaemonMetrics(), nft=rec, writer=rec)
    return d, rec, tmp_path / "10-podwire.conflist"


def test_waits_for_podcidr_but_publishes_its_vtep_mac(tmp_path):
    d, rec, conf = make(tmp_path, Cache(node("n1", "192.168.1.1")))
    d.sync()
    assert not conf.exists() and d.dataplane.applied == [] and rec.status == []
    assert rec.patches == [("n1", {"metadata": {"annotations": {"podwire.io/vtep-mac": d.vtep_mac}}})]


def test_full_sync_programs_writes_and_reports_once(tmp_path):
    cache = Cache(node("n1", "192.168.1.1", ["10.244.1.0/24"]),
                  node("n2", "192.168.9.2", ["10.244.2.0/24"], mac="0a:00:00:00:00:02"),
                  node("bad", "192.168.1.3", ["10.244.3.1/24"]),  # malformed: skipped, logged
                  {"metadata": {"name": "noip"}, "spec": {"podCIDRs": ["10.244.4.0/24"]}})
    d, rec, conf = make(tmp_path, cache)
    d.sync()
    desired = d.dataplane.applied[0]
    assert {str(r.dst) for r in desired.routes} == {"10.244.2.0/24"}  # n2 over VXLAN
    assert json.loads(conf.read_text())["plugins"][0]["mtu"] == 1450
    assert "192.168.9.2" in rec.nft[0] and "10.244.0.0/16" in rec.nft[0]
    assert rec.status[0][1]["status"]["conditions"][0]["reason"] == "PodwireRoutesCreated"
    assert d.metrics.nodes_invalid._value.get() == 2
    assert d.programmed
    # the Node now says so: a second sync sends nothing new to the API
    cache.objs["n1"]["status"]["conditions"] = rec.status[0][1]["status"]["conditions"]
    cache.objs["n1"]["metadata"]["annotations"] = rec.patches[0][1]["metadata"]["annotations"]
    d.sync()
    assert len(rec.status) == 1 and len(rec.patches) == 1 and len(rec.nft) == 1


def test_dataplane_failure_still_writes_conflist_but_no_condition(tmp_path):
    d, rec, conf = make(tmp_path, Cache(node("n1", "192.168.1.1", ["10.244.1.0/24"])),
                        dp=FakeDataplane(fail=True))
    with pytest.raises(DataplaneError):
        d.sync()
    assert conf.exists() and rec.status == [] and not d.programmed
    assert d.metrics.sync_errors._value.get() == 1


def test_own_node_missing_is_not_an_error(tmp_path):
    d, rec, conf = make(tmp_path, Cache(node("n2", "192.168.1.2", ["10.244.2.0/24"])))
    d.sync()
    assert not conf.exists() and not rec.patches


def test_health_follows_the_sync_loop_and_says_what_it_waits_for(tmp_path):
    d, *_ = make(tmp_path, Cache(node("n1", "192.168.1.1")))
    assert d.health(None)[0] is False
    d.sync()
    ok, text = d.health(time.monotonic())
    assert ok and "no podCIDR" in text
    assert d.health(time.monotonic() - 1000)[0] is False


class FailingWriter(Recorder):
    def patch(self, name, body):
        raise ConnectionError("API down")

    patch_status = patch


def test_api_write_failure_does_not_hold_the_dataplane_back(tmp_path):
    cache = Cache(node("n1", "192.168.1.1", ["10.244.1.0/24"]))
    rec = FailingWriter()
    c = Config(node_name="n1", cni=CniSettings(conf_dir=str(tmp_path)))
    d = Daemon(c, nodes=cache, dataplane=FakeDataplane(), metrics=DaemonMetrics(), writer=rec)
    with pytest.raises(ConnectionError):
        d.sync()
    assert d.dataplane.applied and (tmp_path / "10-podwire.conflist").exists() and d.programmed
    assert d.metrics.api_errors.labels("nodes-write")._value.get() == 2
