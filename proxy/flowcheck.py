"""A packet-flow evaluator for the rulesets proxy.plan writes: the unit tests' kernel.

It reads the rendered rule text back (only the nft vocabulary the planner uses; anything
else raises, so a new kind of rule cannot pass unnoticed), walks a connection's first
packet through the hooks in netfilter's order, and returns every possible outcome:
`numgen random` forks the walk, so a Service with two endpoints yields two DNAT outcomes.

Hooks modelled (first packet of a connection, so nat chains run):
  from the network: prerouting (filter -110, nat -100, filter -90) -> [forward] -> postrouting
                    (or input, when the address is local: no postrouting)
  from the node:    output (filter -110, nat -100, filter -90) -> postrouting
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Iterable

from proxy.nft import Table


@dataclass(frozen=True)
class Outcome:
    verdict: str  # accept | drop | reject
    dnat: tuple[str, int] | None = None  # (ip, port) the connection was DNATed to
    masquerade: bool = False
    reject_with: str = ""  # "tcp reset" | "icmp"
    affinity_updates: tuple[tuple[str, str], ...] = ()  # (set, source) added on the way


@dataclass(frozen=True)
class _Pkt:
    src: str
    dst: str
    proto: str  # tcp | udp | sctp
    dport: int
    mark: int = 0
    dnat: tuple[str, int] | None = None
    masq: bool = False
    updates: tuple[tuple[str, str], ...] = ()
    reject_with: str = ""


class UnknownRule(Exception):
    pass


def _tokens(rule: str) -> list[str]:
    """Split on spaces, keeping `{ ... }` groups as one token."""
    out, depth, cur = [], 0, []
    for tok in rule.split():
        if depth:
            cur.append(tok)
            depth += tok.count("{") - tok.count("}")
            if depth == 0:
                out.append(" ".join(cur))
                cur = []
        elif tok.startswith("{") and tok.count("{") > tok.count("}"):
            depth, cur = tok.count("{") - tok.count("}"), [tok]
        else:
            out.append(tok)
    if depth:
        raise UnknownRule(f"unbalanced braces: {rule}")
    return out


def _braced(tok: str) -> list[str]:
    inner = tok.strip()[1:-1].strip()
    return [p.strip() for p in inner.split(",") if p.strip()]


_DNAT = re.compile(r"^\[?([0-9a-fA-F.:]+?)\]?:(\d+)$")


class Evaluator:
    def __init__(self, table: Table, local_addrs: Iterable[str] = ()):
        self.t = table
        self.local = {ipaddress.ip_address(a) for a in local_addrs}
        self.fam = 6 if table.family == "ip6" else 4
        self.dynamic: dict[str, set[str]] = {}  # affinity sets: set name -> sources

    # ---- public -----------------------------------------------------------------------------
    def packet(self, src: str, proto: str, dst: str, dport: int, origin: str = "network") -> set[Outcome]:
        """All outcomes for a new connection. origin: "network" (arrives on an interface:
        another host or a local pod) or "node" (sent by a process on the node itself)."""
        pkt = _Pkt(src, dst, proto, dport)
        hooks = (["filter-prerouting", "nat-prerouting", "filter-prerouting-post-dnat"] if origin == "network"
                 else ["filter-output", "nat-output", "filter-output-post-dnat"])
        results = self._hooks(pkt, hooks)
        final = set()
        for p, verdict in results:
            if verdict == "accept" and not (origin == "network" and self._is_local(p.dst)):
                res2 = self._hooks(p, ["nat-postrouting"])  # forwarded or sent: postrouting
            else:
                res2 = [(p, verdict)]  # delivered locally (input) or already decided
            for p2, v2 in res2:
                final.add(Outcome(v2, p2.dnat, p2.masq, p2.reject_with, p2.updates))
        return final

    def remember(self, outcome: Outcome) -> None:
        """Apply an outcome's affinity-set updates, as the kernel would after that packet."""
        for name, src in outcome.affinity_updates:
            self.dynamic.setdefault(name, set()).add(src)

    # ---- walking ----------------------------------------------------------------------------
    def _is_local(self, addr: str) -> bool:
        return ipaddress.ip_address(addr) in self.local

    def _hooks(self, pkt: _Pkt, hooks: list[str]) -> list[tuple[_Pkt, str]]:
        states = [(pkt, "accept")]
        for h in hooks:
            nxt = []
            for p, v in states:
                if v != "accept" or h not in self.t.chains:
                    nxt.append((p, v))
                    continue
                for p2, v2 in self._chain(h, p, 0):
                    nxt.append((p2, "accept" if v2 in ("return", "accept") else v2))
            states = nxt
        return states

    def _chain(self, name: str, pkt: _Pkt, depth: int) -> list[tuple[_Pkt, str]]:
        if depth > 16:
            raise UnknownRule(f"jump depth exceeded at {name}")
        chain = self.t.chains.get(name)
        if chain is None:
            raise UnknownRule(f"jump to missing chain {name}")
        return self._rules(list(chain.rules), pkt, depth)

    def _rules(self, rules: list[str], pkt: _Pkt, depth: int) -> list[tuple[_Pkt, str]]:
        if not rules:
            return [(pkt, "return")]
        out = []
        for p, verdict in self._rule(_tokens(rules[0]), pkt, depth):
            if verdict is None:  # no match or a non-terminal statement: next rule
                out += self._rules(rules[1:], p, depth)
            else:
                out.append((p, verdict))
        return out

    def _rule(self, toks: list[str], pkt: _Pkt, depth: int) -> list[tuple[_Pkt, str | None]]:
        """(state, verdict) pairs; verdict None means go on with the next rule."""
        i = 0
        while i < len(toks):
            r = self._match(toks, i, pkt)
            if r is None:
                break
            if r == "fork":  # numgen random mod K == 0: both ways
                taken = self._rule(toks[i + 6:], pkt, depth)
                return taken + [(pkt, None)]
            ok, i = r
            if not ok:
                return [(pkt, None)]
        return self._statement(toks[i:], pkt, depth)

    def _addr_match(self, value: str, spec: str) -> bool:
        a = ipaddress.ip_address(value)
        if spec.startswith("@"):
            name = spec[1:]
            if name in self.t.sets and not self.t.sets[name].timeout:
                return value in self.t.sets[name].elements
            return value in self.dynamic.get(name, set())
        items = _braced(spec) if spec.startswith("{") else [spec]
        return any(a in ipaddress.ip_network(x, strict=False) for x in items)

    def _match(self, t: list[str], i: int, p: _Pkt):
        """(matched, next index) for a match expression at t[i], "fork", or None (a statement)."""
        w = t[i]
        fam = "ip6" if self.fam == 6 else "ip"
        if t[i:i + 3] == ["ct", "state", "new"]:
            return True, i + 3
        if t[i:i + 3] == ["ct", "status", "dnat"]:
            return p.dnat is not None, i + 3
        if w == "fib" and t[i + 2:i + 4] == ["type", "local"]:
            addr = p.dst if t[i + 1] == "daddr" else p.src
            return self._is_local(addr), i + 4
        if w == "fib" and t[i + 2:i + 5] == ["type", "!=", "local"]:
            addr = p.dst if t[i + 1] == "daddr" else p.src
            return not self._is_local(addr), i + 5
        if t[i:i + 5] == [fam, "saddr", ".", fam, "daddr"] and t[i + 5].startswith("@"):
            return f"{p.src} . {p.dst}" in self.t.sets[t[i + 5][1:]].elements, i + 6
        if w == fam and t[i + 1] in ("saddr", "daddr") and t[i + 2] != ".":
            value = p.src if t[i + 1] == "saddr" else p.dst
            if t[i + 2] == "!=":
                return not self._addr_match(value, t[i + 3]), i + 4
            return self._addr_match(value, t[i + 2]), i + 3
        if w in ("tcp", "udp", "sctp") and t[i + 1] == "dport":
            return (p.proto == w and p.dport == int(t[i + 2])), i + 3
        if w == "meta" and t[i + 1] == "l4proto" and t[i + 2] in ("tcp", "udp", "sctp"):
            return p.proto == t[i + 2], i + 3
        if w == "mark" and t[i + 1] == "and" and t[i + 3] == "==":
            return (p.mark & int(t[i + 2], 16)) == int(t[i + 4], 0), i + 5
        if w == "numgen" and t[i + 1:i + 3] == ["random", "mod"] and t[i + 4:i + 6] == ["==", "0"]:
            return "fork"
        return None

    def _lookup(self, name: str, key: str) -> str | None:
        m = self.t.maps.get(name)
        if m is None:
            raise UnknownRule(f"missing map {name}")
        return m.elements.get(key)

    def _statement(self, t: list[str], p: _Pkt, depth: int) -> list[tuple[_Pkt, str | None]]:
        fam = "ip6" if self.fam == 6 else "ip"
        s = " ".join(t)
        if t[0] in ("jump", "goto") and len(t) == 2:
            return self._verdict(t[0], t[1], p, depth)
        if s in ("return", "drop", "accept"):
            return [(p, s)]
        if s == "reject":
            return [(replace(p, reject_with=p.reject_with or "icmp"), "reject")]
        if s == "reject with tcp reset":
            return [(replace(p, reject_with="tcp reset"), "reject")]
        if t[:2] == ["mark", "set"] and t[2] == "mark":
            v = int(t[4], 16)
            return [(replace(p, mark=(p.mark | v) if t[3] == "or" else (p.mark ^ v)), None)]
        if t[0] == "masquerade":
            return [(replace(p, masq=True), "accept")]
        if t[:2] == ["dnat", "to"]:
            m = _DNAT.match(t[2])
            if not m:
                raise UnknownRule(s)
            return [(replace(p, dst=m.group(1), dport=int(m.group(2)), dnat=(m.group(1), int(m.group(2)))), "accept")]
        if t[0] == "update" and t[1].startswith("@") and t[2] == f"{{ {fam} saddr }}":
            return [(replace(p, updates=p.updates + ((t[1][1:], p.src),)), None)]
        if "vmap" in t:
            return self._vmap(t, p, depth, fam)
        raise UnknownRule(s)

    def _vmap(self, t: list[str], p: _Pkt, depth: int, fam: str):
        target = t[t.index("vmap") + 1]
        expr = " ".join(t[:t.index("vmap")])
        if t[:3] == ["numgen", "random", "mod"] and target.startswith("{"):
            out = []
            for arm in _braced(target):
                _, verdict = arm.split(":", 1)
                v = verdict.split()
                out += self._verdict(v[0], v[1], p, depth)
            return out
        if expr == f"{fam} daddr . meta l4proto . th dport":
            key = f"{p.dst} . {p.proto} . {p.dport}"
        elif expr == "meta l4proto . th dport":
            key = f"{p.proto} . {p.dport}"
        else:
            raise UnknownRule(" ".join(t))
        value = self._lookup(target[1:], key)
        if value is None:
            return [(p, None)]
        v = value.split()
        if len(v) == 1:
            return [(p, v[0])]
        return self._verdict(v[0], v[1], p, depth)

    def _verdict(self, kind: str, chain: str, p: _Pkt, depth: int):
        res = self._chain(chain, p, depth + 1)
        if kind == "goto":
            return res
        # jump: a return (or falling off the end) goes on after the jump
        return [(p2, None if v == "return" else v) for p2, v in res]


def outcomes(table: Table, src: str, proto: str, dst: str, dport: int, origin: str = "network",
             local_addrs: Iterable[str] = ()) -> set[Outcome]:
    return Evaluator(table, local_addrs).packet(src, proto, dst, dport, origin)


def dnat_targets(outs: Iterable[Outcome]) -> set[tuple[str, int]]:
    return {o.dnat for o in outs if o.dnat}
