"""nftables objects as plain data, and the renderer to `nft -f` text.

A Table holds chains, sets and maps by name; rules are kept as nft statement text
(the planner writes them, proxy.flowcheck reads them back). Rendering is deterministic:
base chains first in their given order, everything else sorted by name, so the same
desired state always gives the same text (golden tests, cheap equality for diffs).

Every name, rule and element is checked against a fixed alphabet as it is rendered. Values are
typed long before (proxy.from_api), so the check never fires unless a bug lets raw text through;
then the sync fails with UnsafeText instead of nft reading that text as commands.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping


class UnsafeText(ValueError):
    """Text the renderer refuses to hand to nft (a bug upstream: values should be typed)."""


# Nowhere: newline, ';' (both end a command), '#' (comment), quotes, '$' (variables), '%', '\\'.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9/_.\-]{0,255}")  # an nft identifier, bounded
_NAMES = re.compile(r"(?:[A-Za-z][A-Za-z0-9/_.\-]{0,255}\n)*")  # many, each ended by a newline
_ELEMENT = re.compile(r"[A-Za-z0-9 .:/_\-]*")  # set/map elements: no braces, no commas
_STATEMENT = re.compile(r"[A-Za-z0-9 !\-./:=@\[\]_{},]*")  # rules, set/map types
_WORD = re.compile(r"[a-z]{1,32}")  # flags, hook types and hooks
_FAMILIES = ("ip", "ip6", "inet")


def _check(pattern: re.Pattern, text, what: str) -> str:
    if type(text) is not str or pattern.fullmatch(text) is None:
        raise UnsafeText(f"refusing {what} {text!r:.200}")
    return text


def _check_all(pattern: re.Pattern, texts: list | tuple, what: str) -> None:
    """Every text drawn from `pattern`'s alphabet (a character class): one regex run over the
    concatenation, since the per-call cost, not the length, dominates at 10k Services."""
    try:
        ok = pattern.fullmatch("".join(texts)) is not None
    except TypeError:  # not all strings
        ok = False
    if not ok:
        for text in texts:
            _check(pattern, text, what)


@functools.lru_cache(maxsize=64)
def table_ref(family: str, name: str) -> str:
    if family not in _FAMILIES:
        raise UnsafeText(f"refusing table family {family!r:.50}")
    return f"{family} {_check(_NAME, name, 'table name')}"


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
        parts = [f"type {_check(_STATEMENT, self.type, 'set type')} ;"]
        if self.flags:
            parts.append(f"flags {','.join(_check(_WORD, f, 'set flag') for f in self.flags)} ;")
        if self.timeout:
            parts.append(f"timeout {_int(self.timeout, 'set timeout')}s ;")
        return " ".join(parts)


@dataclass(frozen=True)
class Map:
    """A named (verdict) map: key text -> value text."""
    name: str
    type: str  # e.g. "ipv4_addr . inet_proto . inet_service : verdict"
    elements: Mapping[str, str] = field(default_factory=dict)

    def header(self) -> str:
        return f"type {_check(_STATEMENT, self.type, 'map type')} ;"


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
        return table_ref(self.family, self.name)

    def ordered_chains(self) -> list[Chain]:
        base = [c for c in self.chains.values() if c.hook]  # insertion order: the plan's order
        return base + sorted((c for c in self.chains.values() if not c.hook), key=lambda c: c.name)


def _int(value, what: str) -> int:
    if type(value) is not int:
        raise UnsafeText(f"refusing {what} {value!r:.50}")
    return value


def name(text: str) -> str:
    """`text` if it is a valid identifier for a chain, set or map; else UnsafeText."""
    return _check(_NAME, text, "name")


# ---- command text -------------------------------------------------------------------------

def check_chains(chains: list[Chain]) -> None:
    """Names, hooks and rules of `chains`, in bulk (a full sync renders 10k+ chains)."""
    names = [c.name for c in chains]
    try:
        ok = _NAMES.fullmatch("\n".join(names) + "\n") is not None
    except TypeError:
        ok = False
    if not ok:
        for n in names:
            name(n)
    for c in chains:
        if c.hook:
            _check(_WORD, c.hook.type, "hook type")
            _check(_WORD, c.hook.hook, "hook")
            _int(c.hook.priority, "priority")
    _check_all(_STATEMENT, [r for c in chains for r in c.rules], "rule")


def _chain_decl(ref: str, c: Chain) -> str:
    if c.hook:
        return f"add chain {ref} {c.name} {{ type {c.hook.type} hook {c.hook.hook} priority {c.hook.priority} ; }}"
    return f"add chain {ref} {c.name}"


def _rule_lines(ref: str, c: Chain) -> Iterable[str]:
    prefix = f"add rule {ref} {c.name} "
    return [prefix + r for r in c.rules]


def chain_decl(t: Table, c: Chain) -> str:
    check_chains([c])
    return _chain_decl(t.ref, c)


def rule_lines(t: Table, c: Chain) -> Iterable[str]:
    check_chains([c])
    return _rule_lines(t.ref, c)


def chain_op(verb: str, t: Table, chain: str) -> str:
    """`flush chain` / `delete chain` of one of our chains."""
    if verb not in ("flush", "delete"):
        raise UnsafeText(f"refusing chain verb {verb!r:.50}")
    return f"{verb} chain {t.ref} {name(chain)}"


def set_op(verb: str, kind: str, t: Table, set_name: str) -> str:
    """`flush set|map` / `delete set|map` of one of our sets or maps."""
    if verb not in ("flush", "delete") or kind not in ("set", "map"):
        raise UnsafeText(f"refusing {verb!r:.50} {kind!r:.50}")
    return f"{verb} {kind} {t.ref} {name(set_name)}"


def set_decl(t: Table, s: Set) -> str:
    return f"add set {t.ref} {name(s.name)} {{ {s.header()} }}"


def map_decl(t: Table, m: Map) -> str:
    return f"add map {t.ref} {name(m.name)} {{ {m.header()} }}"


def _chunks(items: list[str], size: int = 1000) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def element_lines(t: Table, set_name: str, elems: Iterable[str], verb: str = "add") -> Iterable[str]:
    if verb not in ("add", "delete"):
        raise UnsafeText(f"refusing element verb {verb!r:.50}")
    prefix = f"{verb} element {t.ref} {name(set_name)} {{ "
    items = sorted(elems)
    _check_all(_ELEMENT, items, "element")
    for chunk in _chunks(items):  # bounded line length, fewer parser round trips than one per line
        yield f"{prefix}{', '.join(chunk)} }}"


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
    check_chains(chains)
    ref = t.ref
    out += [_chain_decl(ref, c) for c in chains]
    out += [set_decl(t, t.sets[n]) for n in sorted(t.sets)]
    out += [map_decl(t, t.maps[n]) for n in sorted(t.maps)]
    if keep_dynamic:
        out += [set_op("flush", "set", t, n) for n in sorted(t.sets) if "dynamic" not in t.sets[n].flags]
        out += [set_op("flush", "map", t, n) for n in sorted(t.maps)]
    for c in chains:
        out.extend(_rule_lines(ref, c))
    for n in sorted(t.sets):
        out.extend(element_lines(t, n, t.sets[n].elements))
    for n in sorted(t.maps):
        out.extend(element_lines(t, n, map_items(t.maps[n])))
    return "\n".join(out) + "\n"


def render_delete(family: str, table: str) -> str:
    ref = table_ref(family, table)
    return f"add table {ref}\ndelete table {ref}\n"
