"""Rendering (golden text) and the in-memory diff: what each sync sends to nft."""
from __future__ import annotations

from proxy.from_api import service_from_api, slice_from_api
from proxy.model import NodeInfo, ProxyConfig
from proxy.nft import render_full
from proxy.plan import Planner, plan_family
from proxy.sync import NftError, TableSyncer, diff, render_diff
from tests.unit.test_proxy_plan import CONFIG, NODE, ep, port, slc, svc

GOLDEN = """\
add table ip podwire-proxy
flush table ip podwire-proxy
add chain ip podwire-proxy filter-prerouting { type filter hook prerouting priority -110 ; }
add chain ip podwire-proxy filter-output { type filter hook output priority -110 ; }
add chain ip podwire-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip podwire-proxy nat-output { type nat hook output priority -100 ; }
add chain ip podwire-proxy filter-prerouting-post-dnat { type filter hook prerouting priority -90 ; }
add chain ip podwire-proxy filter-output-post-dnat { type filter hook output priority -90 ; }
add chain ip podwire-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip podwire-proxy endpoints-check
add chain ip podwire-proxy ext-SUSTUHLJ-default/web/tcp/http
add chain ip podwire-proxy firewall-check
add chain ip podwire-proxy mark-for-masquerade
add chain ip podwire-proxy masquerading
add chain ip podwire-proxy reject-chain
add chain ip podwire-proxy services
add chain ip podwire-proxy svc-SUSTUHLJ-default/web/tcp/http
add set ip podwire-proxy cluster-ips { type ipv4_addr ; }
add set ip podwire-proxy hairpin-endpoints { type ipv4_addr . ipv4_addr ; }
add set ip podwire-proxy load-balancer-ips { type ipv4_addr ; }
add map ip podwire-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map ip podwire-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; }
add map ip podwire-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map ip podwire-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map ip podwire-proxy service-nodeports { type inet_proto . inet_service : verdict ; }
flush set ip podwire-proxy cluster-ips
flush set ip podwire-proxy hairpin-endpoints
flush set ip podwire-proxy load-balancer-ips
flush map ip podwire-proxy firewall-ips
flush map ip podwire-proxy no-endpoint-nodeports
flush map ip podwire-proxy no-endpoint-services
flush map ip podwire-proxy service-ips
flush map ip podwire-proxy service-nodeports
add rule ip podwire-proxy filter-prerouting ct state new jump firewall-check
add rule ip podwire-proxy filter-output ct state new jump firewall-check
add rule ip podwire-proxy nat-prerouting jump services
add rule ip podwire-proxy nat-output jump services
add rule ip podwire-proxy filter-prerouting-post-dnat ct state new jump endpoints-check
add rule ip podwire-proxy filter-output-post-dnat ct state new jump endpoints-check
add rule ip podwire-proxy nat-postrouting ct status dnat ip saddr . ip daddr @hairpin-endpoints jump mark-for-masquerade
add rule ip podwire-proxy nat-postrouting jump masquerading
add rule ip podwire-proxy endpoints-check ct status dnat return
add rule ip podwire-proxy endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule ip podwire-proxy endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th\
 dport vmap @no-endpoint-nodeports
add rule ip podwire-proxy endpoints-check ip daddr @cluster-ips reject
add rule ip podwire-proxy endpoints-check ip daddr @load-balancer-ips fib daddr type != local drop
add rule ip podwire-proxy ext-SUSTUHLJ-default/web/tcp/http jump mark-for-masquerade
add rule ip podwire-proxy ext-SUSTUHLJ-default/web/tcp/http goto svc-SUSTUHLJ-default/web/tcp/http
add rule ip podwire-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip podwire-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip podwire-proxy masquerading mark and 0x4000 == 0 return
add rule ip podwire-proxy masquerading mark set mark xor 0x4000
add rule ip podwire-proxy masquerading masquerade fully-random
add rule ip podwire-proxy reject-chain meta l4proto tcp reject with tcp reset
add rule ip podwire-proxy reject-chain reject
add rule ip podwire-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip podwire-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap\
 @service-nodeports
add rule ip podwire-proxy svc-SUSTUHLJ-default/web/tcp/http ip daddr 10.96.0.10 tcp dport 80 ip saddr !=\
 10.244.0.0/16 jump mark-for-masquerade
add rule ip podwire-proxy svc-SUSTUHLJ-default/web/tcp/http numgen random mod 2 == 0 meta l4proto tcp dnat to\
 10.244.1.5:8080
add rule ip podwire-proxy svc-SUSTUHLJ-default/web/tcp/http meta l4proto tcp dnat to 10.244.2.5:8080
add element ip podwire-proxy cluster-ips { 10.96.0.10, 10.96.0.11 }
add element ip podwire-proxy hairpin-endpoints { 10.244.1.5 . 10.244.1.5, 10.244.2.5 . 10.244.2.5 }
add element ip podwire-proxy no-endpoint-services { 10.96.0.11 . udp . 53 : goto reject-chain }
add element ip podwire-proxy service-ips { 10.96.0.10 . tcp . 80 : goto svc-SUSTUHLJ-default/web/tcp/http }
add element ip podwire-proxy service-nodeports { tcp . 30080 : goto ext-SUSTUHLJ-default/web/tcp/http }
"""


class FakeRunner:
    def __init__(self, fail_on: int | None = None):
        self.texts: list[str] = []
        self.fail_on = fail_on

    def apply(self, text: str) -> None:
        self.texts.append(text)
        if self.fail_on == len(self.texts):
            raise NftError("boom")


def objs(eps_web=None, extra_svcs=()):
    services = [service_from_api(svc(type_="NodePort", ports=[port(node_port=30080)])),
                service_from_api(svc("dns", cip="10.96.0.11", ports=[port("dns", "UDP", 53, 53)]))]
    services += [service_from_api(s) for s in extra_svcs]
    eps = eps_web if eps_web is not None else [ep("10.244.1.5", "n1"), ep("10.244.2.5", "n2")]
    return services, [slice_from_api(slc(endpoints=eps))]


def test_golden_full_render():
    services, slices = objs()
    assert render_full(plan_family(services, slices, NODE, CONFIG, 4).table()) == GOLDEN


def test_render_is_stable_whatever_the_input_order():
    services, slices = objs()
    a = render_full(plan_family(services, slices, NODE, CONFIG, 4).table())
    b = render_full(plan_family(list(reversed(services)), slices, NODE, CONFIG, 4).table())
    assert a == b


def _services(n):
    return [service_from_api(svc(f"s{i}", cip=f"10.96.1.{i}")) for i in range(n)]


def _slices(n, changed=None):
    out = []
    for i in range(n):
        eps = [ep(f"10.244.{i}.5"), ep(f"10.244.{i}.6")] if i != changed else [ep(f"10.244.{i}.5"), ep("10.244.99.9")]
        out.append(slice_from_api(slc(f"s{i}", eps, name=f"s{i}-x")))
    return out


def test_one_endpoint_changed_touches_only_that_service():
    services = _services(20)
    p = Planner(4)
    old = p.plan(services, _slices(20), NODE, CONFIG)
    new = p.plan(services, _slices(20, changed=7), NODE, CONFIG)
    text = render_diff(old, new)
    lines = text.strip().splitlines()
    assert lines and all("10.244.7." in ln or "10.244.99.9" in ln or "/s7/" in ln for ln in lines), text
    assert "flush chain ip podwire-proxy svc-" in text  # the service chain is refilled
    assert "delete element ip podwire-proxy hairpin-endpoints { 10.244.7.6 . 10.244.7.6 }" in text
    assert "add element ip podwire-proxy hairpin-endpoints { 10.244.99.9 . 10.244.99.9 }" in text
    assert "delete table" not in text and "flush table" not in text


def test_dirty_keys_give_the_same_result_as_a_full_replan():
    services = _services(5)
    by_key = {s.key: s for s in services}
    slices = _slices(5)
    p = Planner(4)
    old = p.plan(by_key, slices, NODE, CONFIG)
    changed = _slices(5, changed=2)
    inc = p.plan(by_key, {s.service_key: [s] for s in changed}, NODE, CONFIG, dirty={("default", "s2")})
    ref = plan_family(services, changed, NODE, CONFIG, 4)
    assert render_full(inc.table()) == render_full(ref.table())
    assert render_diff(old, inc) == render_diff(old, ref)  # delta shortcut == slow path


def test_unchanged_plan_sends_nothing():
    services, slices = objs()
    runner = FakeRunner()
    s = TableSyncer(runner)
    p = Planner(4)
    assert s.sync(p.plan(services, slices, NODE, CONFIG)).full
    res = s.sync(p.plan(services, slices, NODE, CONFIG))
    assert not res.changed and len(runner.texts) == 1


def test_a_removed_chain_is_flushed_now_and_deleted_by_the_next_transaction():
    """Kernels before 6.2 refuse to delete a chain in the transaction that removes the last map
    element or jump to it: the diff flushes it and leaves it stale; the next one deletes it."""
    services, slices = objs(extra_svcs=[svc("gone", cip="10.96.0.12", sessionAffinity="ClientIP")])
    gone_slice = slice_from_api(slc("gone", [ep("10.244.3.5")], name="gone-x"))
    p = Planner(4)
    old = p.plan(services, slices + [gone_slice], NODE, CONFIG)
    new = p.plan(services[:2], slices, NODE, CONFIG)
    tx = diff(old, new)
    lines = tx.text.strip().splitlines()
    assert not any(ln.startswith("delete chain") or ln.startswith("delete set") for ln in lines)
    assert any(ln.startswith("flush chain") and "/gone/" in ln for ln in lines)
    assert {k for k, _ in tx.stale} == {"chain", "set"} and all("/gone/" in n for _, n in tx.stale)
    then = p.plan(services[:2], slices, NODE, CONFIG)
    nxt = diff(new, then, tx.stale).text.strip().splitlines()
    kinds = [ln.split()[1] for ln in nxt]
    assert set(ln.split()[0] for ln in nxt) == {"delete"} and kinds == sorted(kinds)  # chains before sets
    assert len(nxt) == len(tx.stale)


def test_changed_map_value_is_deleted_then_added():
    p = Planner(4)
    old = p.plan(*objs(), NODE, CONFIG)
    new = p.plan(*objs(eps_web=[]), NODE, CONFIG)  # web loses all endpoints -> no-endpoint maps
    text = render_diff(old, new)
    assert "delete element ip podwire-proxy service-ips { 10.96.0.10 . tcp . 80 }" in text
    assert "add element ip podwire-proxy no-endpoint-services { 10.96.0.10 . tcp . 80 : goto reject-chain }" in text
    assert "add element ip podwire-proxy no-endpoint-nodeports { tcp . 30080 : goto reject-chain }" in text


def test_failed_sync_makes_the_next_one_full():
    services, slices = objs()
    runner = FakeRunner(fail_on=2)
    s, p = TableSyncer(runner), Planner(4)
    s.sync(p.plan(services, slices, NODE, CONFIG))
    try:
        s.sync(p.plan(*objs(eps_web=[ep("10.244.9.9")]), NODE, CONFIG))
        raise AssertionError("expected NftError")
    except NftError:
        pass
    res = s.sync(p.plan(*objs(eps_web=[ep("10.244.9.9")]), NODE, CONFIG))
    assert res.full and runner.texts[-1].startswith("add table ip podwire-proxy\nflush table")


def test_node_change_replans_everything():
    services, slices = objs()
    p = Planner(4)
    a = p.plan(services, slices, NODE, CONFIG)
    b = p.plan(services, slices, NodeInfo("n2"), CONFIG)
    assert a.fragments[("default", "web")] is not b.fragments[("default", "web")]
    assert p.plan(services, slices, NodeInfo("n2"), ProxyConfig()).base is not b.base


def test_full_sync_keeps_affinity_sets_and_refills_the_rest():
    """A restart or repair sync must not forget ClientIP affinity: the packet path's sets are
    declared (a no-op when present) but never flushed; every other set and map is."""
    aff = svc("sticky", cip="10.96.0.12", sessionAffinity="ClientIP",
              sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}})
    services, slices = objs(extra_svcs=[aff])
    slices.append(slice_from_api(slc("sticky", [ep("10.244.3.5")], name="sticky-1")))
    text = render_full(plan_family(services, slices, NODE, CONFIG, 4).table())
    lines = text.splitlines()
    assert lines[:2] == ["add table ip podwire-proxy", "flush table ip podwire-proxy"]
    assert "delete table" not in text
    aff_sets = [ln.split()[4] for ln in lines if ln.startswith("add set") and "dynamic" in ln]
    assert aff_sets and all(f"flush set ip podwire-proxy {n}" not in lines for n in aff_sets)
    assert "flush set ip podwire-proxy hairpin-endpoints" in lines
    assert "flush map ip podwire-proxy service-ips" in lines
    # every flush comes before the first rule and element that refill
    first_fill = min(i for i, ln in enumerate(lines) if ln.startswith(("add rule", "add element")))
    assert max(i for i, ln in enumerate(lines) if ln.startswith("flush ")) < first_fill


def test_full_sync_falls_back_to_an_empty_table_when_the_kernel_one_conflicts():
    services, slices = objs()
    runner = FakeRunner(fail_on=1)  # e.g. a chain of an older layout with another hook priority
    s = TableSyncer(runner)
    res = s.sync(Planner(4).plan(services, slices, NODE, CONFIG))
    assert res.full and s.applied is not None
    assert runner.texts[0].startswith("add table ip podwire-proxy\nflush table")
    assert runner.texts[1].startswith("add table ip podwire-proxy\ndelete table ip podwire-proxy\nadd table")
    assert res.text_bytes == len(runner.texts[1])


def test_a_failed_fallback_leaves_the_next_sync_full():
    services, slices = objs()
    runner = FakeRunner(fail_on=1)
    s = TableSyncer(runner)
    runner.apply = lambda text: (runner.texts.append(text), (_ for _ in ()).throw(NftError("boom")))
    try:
        s.sync(Planner(4).plan(services, slices, NODE, CONFIG))
        raise AssertionError("expected NftError")
    except NftError:
        pass
    assert s.applied is None and len(runner.texts) == 2  # the keeping try, then the clean slate
    s.runner = FakeRunner()
    assert s.sync(Planner(4).plan(services, slices, NODE, CONFIG)).full
