"""nftables objects as plain data, and the renderer to `nft -f` text.

A Table holds chains, sets and maps by name; rules are kept as nft statement text
(the planner writes them, proxy.flowcheck reads them back). Rendering is deterministic:
base chains first in their given order, everything else sorted by name, so the same
desired state always gives the same text (golden tests, cheap equality for diffs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping


@dataclass(frozen=True)
class Hook:
    type: str  # filter | nat
    hook: str  # prerouting | input | forward | output | postrouting
    priority: int


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[str, ...] = ()
    hook: Hook | None = None


@dataclass(frozen=True)
class Set:
    """A named set; `timeout`/`dynamic` for sets filled from the packet path (affinity)."""
    name: str
    type: str
    flags: tuple[str, ...] = ()
    timeout: int = 0
    elements: frozenset[str] = frozenset()

    def header(self) -> str:
        parts = [f"type {self.type} ;"]
        if self.flags:
            parts.append(f"flags {','.join(self.flags)} ;")
        if self.timeout:
            parts.append(f"timeout {self.timeout}s ;")
        return " ".join(parts)


@dataclass(frozen=True)
class Map:
    """A named (verdict) map: key text -> value text."""
    name: str
    type: str  # e.g. "ipv4_addr . inet_proto . inet_service : verdict"
    elements: Mapping[str, str] = field(default_factory=dict)

    def header(self) -> str:
        return f"type {self.type} ;"


@dataclass
class Table:
    family: str  # ip | ip6
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, Set] = field(default_factory=dict)
    maps: dict[str, Map] = field(default_factory=dict)

    def add_chain(self, chain: Chain) -> None:
        if chain.name in self.chains:
            raise ValueError(f"duplicate chain {chain.name}")
        self.chains[chain.name] = chain

    def add_set(self, s: Set) -> None:
        if s.name in self.sets or s.name in self.maps:
            raise ValueError(f"duplicate set {s.name}")
        self.sets[s.name] = s

    def add_map(self, m: Map) -> None:
        if m.name in self.sets or m.name in self.maps:
            raise ValueError(f"duplicate map {m.name}")
        self.maps[m.name] = m

    @property
    def ref(self) -> str:
        return f"{self.family} {self.name}"

    def ordered_chains(self) -> list[Chain]:
        base = [c for c in self.chains.values() if c.hook]  # insertion order: the plan's order
        return base + sorted((c for c in self.chains.values() if not c.hook), key=lambda c: c.name)


# ---- command text -------------------------------------------------------------------------

def chain_decl(t: Table, c: Chain) -> str:
    if c.hook:
        return (f"add chain {t.ref} {c.name} {{ type {c.hook.type} hook {c.hook.hook} "
                f"priority {c.hook.priority} ; }}")
    return f"add chain {t.ref} {c.name}"


def rule_lines(t: Table, c: Chain) -> Iterable[str]:
    for r in c.rules:
        yield f"add rule {t.ref} {c.name} {r}"


def set_decl(t: Table, s: Set) -> str:
    return f"add set {t.ref} {s.name} {{ {s.header()} }}"


def map_decl(t: Table, m: Map) -> str:
    return f"add map {t.ref} {m.name} {{ {m.header()} }}"


def _chunks(items: list[str], size: int = 1000) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def element_lines(t: Table, name: str, elems: Iterable[str], verb: str = "add") -> Iterable[str]:
    items = sorted(elems)
    for chunk in _chunks(items):  # bounded line length, fewer parser round trips than one per line
        yield f"{verb} element {t.ref} {name} {{ {', '.join(chunk)} }}"


def map_items(m: Map, keys: Iterable[str] | None = None) -> list[str]:
    ks = m.elements.keys() if keys is None else keys
    return [f"{k} : {m.elements[k]}" for k in ks]


def render_full(t: Table, keep_dynamic: bool = True) -> str:
    """The whole table as one atomic transaction, whatever the kernel holds now.

    keep_dynamic (the default): `flush table` empties every chain but keeps sets and maps,
    so the sets the packet path fills (ClientIP affinity) survive a restart or a repair
    sync, as kube-proxy's do; every other set and map is flushed and refilled. Chains left
    from an unknown earlier state stay behind empty and unreferenced. `add` of an object
    that exists with another definition fails the transaction: then the caller falls back
    to keep_dynamic=False, which deletes and recreates the table (affinity is lost).
    """
    if keep_dynamic:
        out = [f"add table {t.ref}", f"flush table {t.ref}"]
    else:
        out = [f"add table {t.ref}", f"delete table {t.ref}", f"add table {t.ref}"]
    chains = t.ordered_chains()
    out += [chain_decl(t, c) for c in chains]
    out += [set_decl(t, t.sets[n]) for n in sorted(t.sets)]
    out += [map_decl(t, t.maps[n]) for n in sorted(t.maps)]
    if keep_dynamic:
        out += [f"flush set {t.ref} {n}" for n in sorted(t.sets) if "dynamic" not in t.sets[n].flags]
        out += [f"flush map {t.ref} {n}" for n in sorted(t.maps)]
    for c in chains:
        out.extend(rule_lines(t, c))
    for n in sorted(t.sets):
        out.extend(element_lines(t, n, t.sets[n].elements))
    for n in sorted(t.maps):
        out.extend(element_lines(t, n, map_items(t.maps[n])))
    return "\n".join(out) + "\n"


def render_delete(family: str, name: str) -> str:
    return f"add table {family} {name}\ndelete table {family} {name}\n"
