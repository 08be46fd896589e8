"""Conntrack cleanup computation, the Proxier (events -> sync), metrics and health servers."""
from __future__ import annotations

import ipaddress
import json
import socket
import urllib.error
import urllib.request

from netkit import conntrack as ctnl
from proxy.conntrack import Flush, stale_flows
from proxy.from_api import service_from_api, slice_from_api
from proxy.healthz import HealthzServer, ProxyHealth, ServiceHealthServers
from proxy.metrics import Metrics
from proxy.plan import HealthCheck, Planner
from proxy.proxier import Proxier
from tests.unit.test_proxy_plan import CONFIG, NODE, ep, port, slc, svc
from tests.unit.test_proxy_sync import FakeRunner

UDP_SVC = svc("dns", cip="10.96.0.11", type_="NodePort", externalIPs=["192.0.2.7"],
              ports=[port("dns", "UDP", 53, 53, 30053), port("dns-tcp", "TCP", 53, 53)])


def udp_slice(*addrs):
    return slc("dns", [ep(a) for a in addrs], name="dns-x",
               ports=[{"name": "dns", "protocol": "UDP", "port": 53},
                      {"name": "dns-tcp", "protocol": "TCP", "port": 53}])


def states(*slice_sets):
    p = Planner(4)
    s = service_from_api(UDP_SVC)
    return [p.plan([s], [slice_from_api(x) for x in sl], NODE, CONFIG) for sl in slice_sets]


def test_removed_endpoint_flushes_only_its_udp_flows():
    a, b = states([udp_slice("10.244.1.5", "10.244.2.5")], [udp_slice("10.244.1.5")])
    flows = stale_flows(a, b)
    assert set(flows) == {
        Flush(4, "10.96.0.11", 53, ("10.244.2.5", 53)),
        Flush(4, "192.0.2.7", 53, ("10.244.2.5", 53)),
        Flush(4, None, 30053, ("10.244.2.5", 53)),
    }


def _entry(dst, dport, reply_src, reply_sport, proto=17, src="10.0.1.2", sport=40000):
    ip = ipaddress.ip_address
    return ctnl.Entry(ctnl.Tuple(proto, ip(src), ip(dst), sport, dport),
                      ctnl.Tuple(proto, ip(reply_src), ip(src), reply_sport, sport))


def test_a_flush_matches_the_entries_conntrack_d_would():
    """The filter `conntrack -D -p udp [--orig-dst D] --orig-port-dst P [--reply-src E
    --reply-port-src EP]` stood for, judged on netlink entries."""
    np = Flush(4, None, 30053, ("10.244.2.5", 53))
    assert np.filter().matches(_entry("172.18.0.2", 30053, "10.244.2.5", 53))  # any node address
    assert not np.filter().matches(_entry("172.18.0.2", 30053, "10.244.1.5", 53))  # another endpoint
    assert not np.filter().matches(_entry("172.18.0.2", 30053, "10.244.2.5", 54))
    assert not np.filter().matches(_entry("172.18.0.2", 30053, "10.244.2.5", 53, proto=6))  # TCP is left alone
    assert not np.filter().matches(_entry("172.18.0.2", 30054, "10.244.2.5", 53))
    cip = Flush(4, "10.96.0.11", 53)  # 0 -> N endpoints: whatever it was (not) NATed to
    assert cip.filter().matches(_entry("10.96.0.11", 53, "10.96.0.11", 53))
    assert not cip.filter().matches(_entry("10.96.0.12", 53, "10.96.0.12", 53))
    assert not Flush(6, "fd00:96::11", 53).filter().matches(_entry("10.96.0.11", 53, "10.96.0.11", 53))
    v6 = Flush(6, "fd00:96::11", 53, ("fd00:244::5", 53))
    assert v6.filter().matches(_entry("fd00:96::11", 53, "fd00:244::5", 53, src="fd00:1::2"))


def test_zero_to_n_endpoints_flushes_the_frontends():
    a, b = states([], [udp_slice("10.244.1.5")])
    assert set(stale_flows(a, b)) == {Flush(4, "10.96.0.11", 53), Flush(4, "192.0.2.7", 53), Flush(4, None, 30053)}


def test_no_flush_on_first_sync_or_when_nothing_changed_or_for_tcp():
    a, b = states([udp_slice("10.244.1.5")], [udp_slice("10.244.1.5")])
    assert stale_flows(None, a) == []
    assert stale_flows(a, b) == []


class FakeConntrack:
    def __init__(self):
        self.calls = []

    def delete(self, flushes):
        self.calls.append(list(flushes))
        return []


def make_proxier(clock=None):
    runners = {4: FakeRunner(), 6: FakeRunner()}
    ct = FakeConntrack()
    kw = {"clock": clock} if clock else {}
    p = Proxier("n1", CONFIG, runners, conntrack_runner=ct, metrics=Metrics(),
                health=ProxyHealth(timeout=60, clock=clock) if clock else None, **kw)
    return p, runners, ct


def test_proxier_full_then_partial_and_skips_bad_objects():
    p, runners, ct = make_proxier()
    p.on_service(svc())
    p.on_service(svc("bad", cip="nonsense"))
    p.on_service(svc("headless", cip="None"))
    p.on_slice(slc(endpoints=[ep("10.244.1.5")]))
    assert p.sync()
    assert runners[4].texts[0].startswith("add table ip podwire-proxy")
    assert runners[6].texts[0].startswith("add table ip6 podwire-proxy")
    assert ("Service", "default", "bad") in p.skipped and "bad IP" in p.skipped[("Service", "default", "bad")]
    p.on_slice(slc(endpoints=[ep("10.244.1.5"), ep("10.244.2.5")]))
    assert p.sync()
    assert len(runners[4].texts) == 2 and "delete table" not in runners[4].texts[1]
    assert "10.244.2.5" in runners[4].texts[1]
    assert len(runners[6].texts) == 1  # nothing changed for IPv6: nft not even run
    p.on_service(svc(), deleted=True)
    assert p.sync()
    # the chain is flushed now and deleted by the next sync (kernels < 6.2: see proxy.sync)
    assert "flush chain ip podwire-proxy svc-" in runners[4].texts[2] and "delete chain" not in runners[4].texts[2]
    assert p.sync()
    assert runners[4].texts[3].startswith("delete chain ip podwire-proxy svc-")


def test_proxier_udp_cleanup_and_failure_recovery():
    p, runners, ct = make_proxier()
    p.on_service(UDP_SVC)
    p.on_slice(udp_slice("10.244.1.5", "10.244.2.5"))
    assert p.sync() and ct.calls == []
    p.on_slice(udp_slice("10.244.1.5"))
    runners[4].fail_on = len(runners[4].texts) + 1
    assert not p.sync()
    assert p.metrics.sync_failures._value.get() == 1
    assert p.sync()  # retried as a full sync
    assert runners[4].texts[-1].startswith("add table ip podwire-proxy\nflush table")
    # ... which still cleans the flows of the endpoint that left during the failure
    assert any(f.endpoint == ("10.244.2.5", 53) for f in ct.calls[-1]), ct.calls


def test_an_endpoint_change_in_a_periodic_full_sync_still_cleans_udp_flows():
    p, runners, ct = make_proxier()
    p.on_service(UDP_SVC)
    p.on_slice(udp_slice("10.244.1.5", "10.244.2.5"))
    assert p.sync()
    p.on_slice(udp_slice("10.244.1.5"))
    p.request_full_sync()  # the daemon's periodic rewrite, at the same moment
    assert p.sync()
    assert runners[4].texts[-1].startswith("add table ip podwire-proxy\nflush table")
    assert ct.calls and all(f.endpoint == ("10.244.2.5", 53) for f in ct.calls[-1]), ct.calls
    ct.calls.clear()
    p.request_full_sync()  # a rewrite with no change: nothing to clean
    assert p.sync() and ct.calls == []


def test_network_programming_latency_and_last_sync():
    now = [1000.0]
    p, runners, ct = make_proxier(clock=lambda: now[0])
    p.on_service(svc())
    p.on_slice(slc(endpoints=[ep("10.244.1.5")],
                   annotations={"endpoints.kubernetes.io/last-change-trigger-time": "1970-01-01T00:16:37Z"}))
    now[0] = 1003.0
    assert p.sync()
    reg = p.metrics.registry
    assert reg.get_sample_value("kubeproxy_network_programming_duration_seconds_count", {"ip_family": "IPv4"}) == 1
    assert reg.get_sample_value("kubeproxy_network_programming_duration_seconds_sum", {"ip_family": "IPv4"}) == 6.0
    assert reg.get_sample_value("kubeproxy_sync_proxy_rules_last_timestamp_seconds") == 1003.0
    assert reg.get_sample_value("kubeproxy_sync_full_proxy_rules_duration_seconds_count", {"ip_family": "IPv4"}) == 1
    p.on_slice(slc(endpoints=[ep("10.244.2.5")]))
    assert p.sync()
    assert reg.get_sample_value("kubeproxy_sync_partial_proxy_rules_duration_seconds_count", {"ip_family": "IPv4"}) == 1


def test_healthz_goes_unhealthy_when_an_update_waits_too_long():
    now = [0.0]
    h = ProxyHealth(timeout=10, clock=lambda: now[0])
    assert h.report(livez=False)[0] == 200
    h.queued_update()
    now[0] = 5
    assert h.healthy()
    now[0] = 11
    assert h.report(livez=False)[0] == 503 and h.report(livez=True)[0] == 503
    h.updated()
    assert h.report(livez=False)[0] == 200
    h.node_eligible = False  # node being deleted: healthz fails, livez does not
    assert h.report(livez=False) == (503, {"lastUpdated": "1970-01-01T00:00:11Z",
                                           "currentTime": "1970-01-01T00:00:11Z", "nodeEligible": False})
    assert h.report(livez=True)[0] == 200


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_servers():
    m = Metrics()
    h = ProxyHealth(timeout=0.0)
    srv = HealthzServer(h, "127.0.0.1", 0, metrics=m)
    svcs = ServiceHealthServers("127.0.0.1")
    try:
        assert _get(f"http://127.0.0.1:{srv.port}/healthz")[0] == 200
        h.queued_update()
        code, body = _get(f"http://127.0.0.1:{srv.port}/livez")
        assert code == 503 and "lastUpdated" in body
        assert m.registry.get_sample_value("kubeproxy_proxy_livez_total", {"code": "503"}) == 1
        port_a, port_b = _free_port(), _free_port()
        svcs.update({port_a: HealthCheck("default", "web", 2), port_b: HealthCheck("default", "db", 0)})
        assert _get(f"http://127.0.0.1:{port_a}/") == (200, {"service": {"namespace": "default", "name": "web"},
                                                             "localEndpoints": 2, "serviceProxyHealthy": True})
        assert _get(f"http://127.0.0.1:{port_b}/")[0] == 503
        svcs.update({port_a: HealthCheck("default", "web", 0)})
        assert _get(f"http://127.0.0.1:{port_a}/")[1]["localEndpoints"] == 0
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port_b}/", timeout=2)
            raise AssertionError("port_b should be closed")
        except urllib.error.URLError:
            pass
    finally:
        srv.close()
        svcs.close()


def test_proxier_feeds_service_health_checks():
    p, runners, ct = make_proxier()

    class Recorder:
        def update(self, checks):
            self.checks = checks
    rec = Recorder()
    p.service_health = rec
    p.on_service(svc(type_="LoadBalancer", ports=[port(node_port=30080)], externalTrafficPolicy="Local",
                     healthCheckNodePort=31000))
    p.on_slice(slc(endpoints=[ep("10.244.1.5", "n1"), ep("10.244.2.5", "n2"), ep("10.244.1.6", "n1", ready=False)]))
    assert p.sync()
    assert rec.checks == {31000: HealthCheck("default", "web", 1)}


def test_type_change_to_external_name_and_back():
    p, runners, ct = make_proxier()
    p.on_service(svc())
    p.on_slice(slc(endpoints=[ep("10.244.1.5")]))
    assert p.sync()
    p.on_service(svc(type_="ExternalName", externalName="example.com"))
    assert p.sync()
    assert "delete element ip podwire-proxy service-ips { 10.96.0.10 . tcp . 80 }" in runners[4].texts[-1]
    assert p.skipped[("Service", "default", "web")] == "type ExternalName (DNS only)"
    p.on_service(svc())
    assert p.sync()
    assert "add element ip podwire-proxy service-ips { 10.96.0.10 . tcp . 80 : goto svc-" in runners[4].texts[-1]
    assert ("Service", "default", "web") not in p.skipped


def test_event_during_a_sync_is_not_lost():
    p, runners, ct = make_proxier()
    p.on_service(svc())
    p.on_slice(slc(endpoints=[ep("10.244.1.5")]))
    arrived = []

    def apply_and_race(text, _orig=runners[4].apply):
        _orig(text)
        if not arrived:  # an informer thread delivers an update while nft runs
            arrived.append(1)
            p.on_slice(slc(endpoints=[ep("10.244.7.7")]))
    runners[4].apply = apply_and_race
    assert p.sync()
    assert "10.244.7.7" not in runners[4].texts[-1]
    assert p.health.oldest_pending is not None  # still pending: healthz keeps counting
    assert p.sync()
    assert "10.244.7.7" in runners[4].texts[-1]


def test_concurrent_events_and_syncs_converge():
    import threading

    from proxy.nft import render_full
    from proxy.plan import plan_family
    p, runners, ct = make_proxier()
    for i in range(20):
        p.on_service(svc(f"s{i}", cip=f"10.96.2.{i}"))

    def pump():
        for round_ in range(30):
            for i in range(20):
                p.on_slice(slc(f"s{i}", [ep(f"10.244.{i}.{round_ + 1}")], name=f"s{i}-x"))
    t = threading.Thread(target=pump)
    t.start()
    while t.is_alive():
        assert p.sync()
    t.join()
    assert p.sync()
    want = plan_family(p.services.values(), p.slices.values(), p.node, p.config, 4)
    assert render_full(p.last_states[4].table()) == render_full(want.table())
    assert all(f"10.244.{i}.30" in render_full(p.last_states[4].table()) for i in range(20))


def test_a_service_of_a_family_this_node_does_not_serve_is_skipped_with_a_reason(caplog):
    """Issue 15: an IPv6-only Service on a node whose proxy serves IPv4 is named, not silently dropped."""
    p = Proxier("n1", CONFIG, {4: FakeRunner()}, conntrack_runner=FakeConntrack(), metrics=Metrics())
    v6 = svc("v6only", cip="fd00:96::20", ipFamilies=["IPv6"])
    with caplog.at_level("WARNING", logger="proxy.proxier"):
        p.on_service(v6)
        p.on_service(v6)  # the same again: said once
    reason = p.skipped[("Service", "default", "v6only")]
    assert reason == "ClusterIPs of IPv6 only, and this node's proxy serves IPv4"
    assert [r.getMessage() for r in caplog.records].count(f"no rules for Service default/v6only: {reason}") == 1
    p.on_service(svc("both", cip=["10.96.0.30", "fd00:96::30"], ipFamilies=["IPv4", "IPv6"],
                     ipFamilyPolicy="PreferDualStack"))
    assert ("Service", "default", "both") not in p.skipped  # its IPv4 half is served
    assert p.sync()
