"""A knftables-style fake: an in-memory nftables that runs the proxy's transactions, and property
tests over generated histories (issue 12).

FakeNft understands exactly the command lines proxy.nft renders and applies a transaction
atomically, refusing what the kernel refuses: a rule or element naming a missing chain or set, an
element added again with another value, deleting a missing element or object, deleting a chain
that still has rules or is still referenced. It is stricter than kernels >= 6.2 on purpose: a
chain or set referenced when the transaction starts cannot be deleted in that transaction, even
if the transaction removes the reference (kernels before 6.2 refuse the chain case).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import pytest

from netkit.nft import NftError
from proxy.from_api import service_from_api, slice_from_api
from proxy.nft import render_full
from proxy.plan import Planner, plan_family
from proxy.sync import TableSyncer, diff
from tests.unit.test_proxy_plan import CONFIG, NODE, ep, port, slc, svc

_REF_CHAIN = re.compile(r"\b(?:goto|jump) ([A-Za-z][A-Za-z0-9/_.\-]*)")
_REF_SET = re.compile(r"@([A-Za-z][A-Za-z0-9/_.\-]*)")


@dataclass
class _Set:
    kind: str  # set | map
    header: str
    elements: dict[str, str] = field(default_factory=dict)  # set members map to ""


@dataclass
class _Table:
    chains: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # name -> (hook text, rules)
    sets: dict[str, _Set] = field(default_factory=dict)


class FakeNft:
    """Tables keyed by (family, name); `apply` is the Runner interface, `objects` the listing."""

    def __init__(self):
        self.tables: dict[tuple[str, str], _Table] = {}

    # ---- the Runner interface ----------------------------------------------------------------
    def apply(self, text: str) -> None:
        work = {k: _Table({n: (h, list(r)) for n, (h, r) in t.chains.items()},
                          {n: _Set(v.kind, v.header, dict(v.elements)) for n, v in t.sets.items()})
                for k, t in self.tables.items()}
        refs_at_start = {k: self._referenced(t) for k, t in work.items()}
        for line in text.splitlines():
            if line.strip():
                self._command(work, refs_at_start, line)
        self.tables = work  # all or nothing, like a transaction

    def objects(self, family: str, table: str) -> set[tuple[str, str]]:
        t = self.tables.get((family, table))
        if t is None:
            return set()
        return {("chain", n) for n in t.chains} | {(s.kind, n) for n, s in t.sets.items()}

    # ---- what the tests compare ----------------------------------------------------------------
    def snapshot(self, family: str, table: str, without=frozenset()) -> dict:
        t = self.tables[(family, table)]
        skip = {n for _, n in without}
        return {"chains": {n: (h, tuple(r)) for n, (h, r) in t.chains.items() if n not in skip},
                "sets": {n: (s.kind, s.header, None if "dynamic" in s.header else dict(s.elements))
                         for n, s in t.sets.items() if n not in skip}}

    @staticmethod
    def _referenced(t: _Table) -> set[str]:
        out = set()
        for _, rules in t.chains.values():
            for r in rules:
                out.update(_REF_CHAIN.findall(r))
                out.update(_REF_SET.findall(r))
        for s in t.sets.values():
            for v in s.elements.values():
                out.update(_REF_CHAIN.findall(v))
        return out

    # ---- one command line ---------------------------------------------------------------------
    def _command(self, tables, refs_at_start, line: str) -> None:
        words = line.split()
        verb, kind = words[0], words[1]
        key = (words[2], words[3])
        if kind == "table":
            if verb == "add":
                tables.setdefault(key, _Table())
            elif key not in tables:
                raise NftError(f"No such file or directory: {line}")
            elif verb == "delete":
                del tables[key]
            elif verb == "flush":
                for name, (hook, _) in tables[key].chains.items():
                    tables[key].chains[name] = (hook, [])
            return
        t = tables.get(key)
        if t is None:
            raise NftError(f"No such file or directory: {line}")
        name, rest = words[4], " ".join(words[5:])
        if kind == "chain":
            self._chain(t, verb, name, rest, refs_at_start.get(key, set()), line)
        elif kind in ("set", "map"):
            self._set(t, verb, kind, name, rest, refs_at_start.get(key, set()), line)
        elif kind == "rule":
            if name not in t.chains:
                raise NftError(f"No such file or directory: {line}")
            self._check_refs(t, rest, line)
            t.chains[name][1].append(rest)
        elif kind == "element":
            self._element(t, verb, name, rest, line)
        else:
            raise AssertionError(f"the fake does not know {line!r}")

    def _check_refs(self, t: _Table, text: str, line: str) -> None:
        for c in _REF_CHAIN.findall(text):
            if c not in t.chains:
                raise NftError(f"Could not process rule: No such file or directory (chain {c}): {line}")
        for s in _REF_SET.findall(text):
            if s not in t.sets:
                raise NftError(f"Could not process rule: No such file or directory (set {s}): {line}")

    def _chain(self, t: _Table, verb: str, name: str, hook: str, refs_at_start: set, line: str) -> None:
        if verb == "add":
            if name in t.chains:
                if t.chains[name][0] != hook:
                    raise NftError(f"Could not process rule: File exists (other hook): {line}")
            else:
                t.chains[name] = (hook, [])
            return
        if name not in t.chains:
            raise NftError(f"No such file or directory: {line}")
        if verb == "flush":
            t.chains[name] = (t.chains[name][0], [])
        elif verb == "delete":
            if t.chains[name][1]:
                raise NftError(f"Device or resource busy (chain has rules): {line}")
            if name in self._referenced(t) or name in refs_at_start:
                raise NftError(f"Device or resource busy (chain referenced): {line}")
            del t.chains[name]

    def _set(self, t: _Table, verb: str, kind: str, name: str, header: str, refs_at_start: set, line: str) -> None:
        if verb == "add":
            if name in t.sets:
                if (t.sets[name].kind, t.sets[name].header) != (kind, header):
                    raise NftError(f"Could not process rule: File exists (other definition): {line}")
            else:
                t.sets[name] = _Set(kind, header)
            return
        s = t.sets.get(name)
        if s is None or s.kind != kind:
            raise NftError(f"No such file or directory: {line}")
        if verb == "flush":
            s.elements.clear()
        elif verb == "delete":
            if name in self._referenced(t) or name in refs_at_start:
                raise NftError(f"Device or resource busy (set referenced): {line}")
            del t.sets[name]

    def _element(self, t: _Table, verb: str, name: str, body: str, line: str) -> None:
        s = t.sets.get(name)
        if s is None:
            raise NftError(f"No such file or directory: {line}")
        assert body.startswith("{ ") and body.endswith(" }"), line
        for item in body[2:-2].split(", "):
            k, _, v = item.partition(" : ")
            if verb == "add":
                self._check_refs(t, v, line)
                if k in s.elements and s.elements[k] != v:
                    raise NftError(f"Could not process rule: File exists (element {k}): {line}")
                s.elements[k] = v
            else:
                if k not in s.elements:
                    raise NftError(f"Could not process rule: No such file or directory (element {k}): {line}")
                del s.elements[k]


# ---- the fake itself is checked against what the kernel refuses -------------------------------

def test_the_fake_refuses_what_old_kernels_refuse():
    f = FakeNft()
    f.apply("add table ip t\nadd chain ip t a\nadd map ip t m { type ipv4_addr : verdict ; }\n"
            "add element ip t m { 10.0.0.1 : goto a }\n")
    with pytest.raises(NftError, match="referenced"):  # the element is removed in the same transaction
        f.apply("delete element ip t m { 10.0.0.1 }\ndelete chain ip t a\n")
    assert "a" in f.tables[("ip", "t")].chains and f.tables[("ip", "t")].sets["m"].elements  # atomic
    f.apply("delete element ip t m { 10.0.0.1 }\n")
    f.apply("delete chain ip t a\n")  # one transaction later
    with pytest.raises(NftError, match="File exists"):
        f.apply("add chain ip t b\nadd element ip t m { 10.0.0.2 : goto b }\nadd element ip t m { 10.0.0.2 : drop }\n")
    with pytest.raises(NftError, match="No such file"):
        f.apply("add rule ip t b goto nowhere\n")


# ---- generated histories ----------------------------------------------------------------------

N_SERVICES = 6


def _gen_service(rng: random.Random, i: int) -> dict:
    kind = rng.choice(["ClusterIP", "NodePort", "LoadBalancer"])
    proto = rng.choice(["TCP", "UDP"])
    ports = [port("p", proto, 80 + rng.randrange(3), 8080, node_port=30000 + i * 10 + rng.randrange(3)
                  if kind != "ClusterIP" else None)]
    if rng.random() < 0.3:
        ports.append(port("q", "TCP", 443, 8443, node_port=30500 + i if kind != "ClusterIP" else None))
    extra: dict = {}
    if rng.random() < 0.3:
        extra["sessionAffinity"] = "ClientIP"
        extra["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": rng.choice([30, 60])}}
    if kind != "ClusterIP" and rng.random() < 0.3:
        extra["externalTrafficPolicy"] = "Local"
        extra["healthCheckNodePort"] = 32000 + i
    if rng.random() < 0.2:
        extra["externalIPs"] = [f"192.0.2.{rng.randrange(1, 4)}"]  # shared on purpose: claims collide
    if kind == "LoadBalancer" and rng.random() < 0.5:
        extra["loadBalancerSourceRanges"] = ["198.51.100.0/24"]
    body = svc(f"s{i}", cip=f"10.96.0.{i + 10}", type_=kind, ports=ports, **extra)
    if kind == "LoadBalancer":
        body["status"] = {"loadBalancer": {"ingress": [{"ip": f"203.0.113.{i + 1}"}]}}
    return body


def _gen_slice(rng: random.Random, i: int, svc_body: dict) -> dict:
    n = rng.choice([0, 1, 2, 3])
    eps = [ep(f"10.244.{rng.randrange(3)}.{rng.randrange(2, 6)}", rng.choice(["n1", "n2"]),
              ready=rng.random() < 0.8, terminating=rng.random() < 0.2) for _ in range(n)]
    ports = [{"name": p["name"], "protocol": p["protocol"], "port": p["targetPort"]}
             for p in svc_body["spec"]["ports"]]
    return slc(f"s{i}", eps, ports=ports, name=f"s{i}-x")


def _history(seed: int, steps: int):
    """States of (Service bodies, slice bodies) after each random change."""
    rng = random.Random(seed)
    services: dict[int, dict] = {}
    slices: dict[int, dict] = {}
    for _ in range(steps):
        i = rng.randrange(N_SERVICES)
        what = rng.random()
        if i not in services or what < 0.25:
            services[i] = _gen_service(rng, i)
            slices[i] = _gen_slice(rng, i, services[i])
        elif what < 0.45:
            del services[i]
            slices.pop(i, None)
        else:
            slices[i] = _gen_slice(rng, i, services[i])
        yield dict(services), dict(slices)


def _parsed(services: dict, slices: dict):
    return ([service_from_api(s) for s in services.values()], [slice_from_api(s) for s in slices.values()])


def _full_model(state) -> FakeNft:
    f = FakeNft()
    f.apply(render_full(state.table()))
    return f


SEEDS = range(10)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_diff_applied_to_the_old_table_gives_the_new_one(seed):
    """For every step of a random history: render_full(old) + diff(old, new) == render_full(new),
    apart from the objects the diff leaves stale (empty, unreferenced, deleted by the next diff);
    no transaction deletes a chain or set still referenced when it starts (FakeNft refuses it)."""
    planner = Planner(4)
    old = stale = None
    model = None
    for services, slices in _history(seed, 25):
        svcs, sls = _parsed(services, slices)
        new = planner.plan(svcs, sls, NODE, CONFIG)
        assert render_full(new.table()) == render_full(plan_family(svcs, sls, NODE, CONFIG, 4).table())
        if old is None:
            model = _full_model(new)
        else:
            tx = diff(old, new, stale)
            assert tx is not None
            # the property as stated: the diff alone, applied to a table holding render_full(old)
            alone = _full_model(old)
            alone.apply(diff(old, new).text)
            want = _full_model(new).snapshot("ip", "podwire-proxy")
            assert alone.snapshot("ip", "podwire-proxy", without=diff(old, new).stale) == want
            # and chained: each transaction also deletes what the previous one left stale
            model.apply(tx.text)
            assert model.snapshot("ip", "podwire-proxy", without=tx.stale) == want
            t = model.tables[("ip", "podwire-proxy")]
            assert all(not t.chains[n][1] for k, n in tx.stale if k == "chain")
            assert not {n for _, n in tx.stale} & FakeNft._referenced(t)
            stale = tx.stale
        old = new
        stale = stale or frozenset()


@pytest.mark.parametrize("seed", SEEDS)
def test_syncer_histories_with_restarts_leave_nothing_behind(seed):
    """The TableSyncer over the fake, with a restart (a new syncer: full sync, memory lost) every
    few steps: after each sync the table is the full render of the desired state plus at most the
    stale objects; one more sync with no change leaves exactly the full render."""
    rng = random.Random(seed)
    fake = FakeNft()
    syncer, planner = TableSyncer(fake), Planner(4)
    for step, (services, slices) in enumerate(_history(seed, 25)):
        if step and rng.random() < 0.2:
            syncer, planner = TableSyncer(fake), Planner(4)  # the daemon restarted
        state = planner.plan(*_parsed(services, slices), NODE, CONFIG)
        syncer.sync(state)
        want = _full_model(state).snapshot("ip", "podwire-proxy")
        assert fake.snapshot("ip", "podwire-proxy", without=syncer.stale) == want
    syncer.sync(planner.plan(*_parsed(services, slices), NODE, CONFIG))
    assert fake.snapshot("ip", "podwire-proxy") == want and not syncer.stale


def test_a_service_deleted_while_the_daemon_was_down_leaves_no_chain():
    """Item 1 of issue 12: the kernel keeps a Service's chains from an earlier run; the first
    (full) sync of a new run flushes them, the next deletes them."""
    fake = FakeNft()
    both = _parsed({0: svc("web", cip="10.96.0.10"), 1: svc("gone", cip="10.96.0.11", sessionAffinity="ClientIP")},
                   {0: slc("web", [ep("10.244.1.5")], name="web-x"),
                    1: slc("gone", [ep("10.244.1.6")], name="gone-x")})
    TableSyncer(fake).sync(Planner(4).plan(*both, NODE, CONFIG))
    assert any("/gone/" in n for _, n in fake.objects("ip", "podwire-proxy"))
    # the daemon restarts after `gone` was deleted
    syncer, planner = TableSyncer(fake), Planner(4)
    only_web = ([both[0][0]], [both[1][0]])
    assert syncer.sync(planner.plan(*only_web, NODE, CONFIG)).full
    left = {n for _, n in fake.objects("ip", "podwire-proxy") if "/gone/" in n}
    assert left and {n for _, n in syncer.stale} == left  # flushed, to delete next
    syncer.sync(planner.plan(*only_web, NODE, CONFIG))
    assert not any("/gone/" in n for _, n in fake.objects("ip", "podwire-proxy"))
    assert fake.snapshot("ip", "podwire-proxy") == _full_model(planner.plan(*only_web, NODE, CONFIG)).snapshot(
        "ip", "podwire-proxy")


def test_a_failed_listing_still_programs_the_services_and_cleans_up_later():
    fake = FakeNft()
    both = _parsed({0: svc("web", cip="10.96.0.10"), 1: svc("gone", cip="10.96.0.11")},
                   {0: slc("web", [ep("10.244.1.5")], name="web-x"), 1: slc("gone", [ep("10.244.1.6")], name="gone-x")})
    TableSyncer(fake).sync(Planner(4).plan(*both, NODE, CONFIG))
    only_web = ([both[0][0]], [both[1][0]])
    syncer, planner = TableSyncer(fake), Planner(4)
    listing, fake.objects = fake.objects, lambda *a: (_ for _ in ()).throw(NftError("nft: killed"))  # type: ignore
    assert syncer.sync(planner.plan(*only_web, NODE, CONFIG)).full and not syncer.stale
    want = _full_model(planner.plan(*only_web, NODE, CONFIG)).snapshot("ip", "podwire-proxy")
    leftovers = {("chain", n) for n in fake.tables[("ip", "podwire-proxy")].chains if "/gone/" in n}
    assert fake.snapshot("ip", "podwire-proxy", without=leftovers) == want  # served, leftovers emptied
    fake.objects = listing  # type: ignore[method-assign]
    syncer.applied = None  # the next periodic full sync
    syncer.sync(planner.plan(*only_web, NODE, CONFIG))
    syncer.sync(planner.plan(*only_web, NODE, CONFIG))
    assert fake.snapshot("ip", "podwire-proxy") == want
