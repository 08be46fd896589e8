"""Label selectors (metav1.LabelSelector) and shared label sets.

A selector is parsed once into requirements (matchLabels k=v becomes `k In (v)`, as the API
machinery does), so matching is a few dict lookups. Label sets are interned: pods of one
template share one `Labels` object, which keeps a 150k-pod snapshot small.
"""
from __future__ import annotations

import re
import sys
import weakref
from dataclasses import dataclass
from typing import Iterator, Mapping

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

# Kubernetes' rules: a qualified name is [prefix/]name, prefix a DNS-1123 subdomain (<= 253),
# name <= 63 of alphanumerics, '-', '_', '.' starting and ending alphanumeric; values the same
# as names or empty.
_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def is_label_key(key: object) -> bool:
    if not isinstance(key, str) or not key.isascii():
        return False
    prefix, slash, name = key.rpartition("/")
    if slash and not (0 < len(prefix) <= 253 and _PREFIX.fullmatch(prefix)):
        return False
    return _NAME.fullmatch(name) is not None


def is_label_value(value: object) -> bool:
    return isinstance(value, str) and value.isascii() and (value == "" or _NAME.fullmatch(value) is not None)


class Labels(Mapping[str, str]):
    """An immutable, hashable label set; build it with `intern_labels` so equal sets are one object."""

    __slots__ = ("_d", "_h", "__weakref__")

    def __init__(self, items: Mapping[str, str]):
        self._d = dict(sorted(items.items()))
        self._h = hash(frozenset(self._d.items()))

    def __getitem__(self, key: str) -> str:
        return self._d[key]

    def get(self, key, default=None):  # the dict's own (Mapping.get goes through a KeyError)
        return self._d.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return self._h

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Labels):
            return self is other or (self._h == other._h and self._d == other._d)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Labels({self._d!r})"


_INTERNED: "weakref.WeakValueDictionary[frozenset, Labels]" = weakref.WeakValueDictionary()


def intern_labels(items: Mapping[str, str]) -> Labels:
    """The shared `Labels` for these (already validated) pairs."""
    key = frozenset(items.items())
    found = _INTERNED.get(key)
    if found is None:
        found = Labels({sys.intern(k): sys.intern(v) for k, v in items.items()})
        _INTERNED[key] = found
    return found


def is_interned(items: Mapping) -> bool:
    """These pairs are a label set already interned (so already validated); False for unhashable values."""
    try:
        return frozenset(items.items()) in _INTERNED
    except TypeError:
        return False


EMPTY_LABELS = intern_labels({})


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # one of OPERATORS
    values: frozenset[str] = frozenset()  # non-empty for In/NotIn, empty otherwise

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values  # absent key: matches (API rule)
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels

    def __str__(self) -> str:
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{'!' if self.operator == 'DoesNotExist' else ''}{self.key}"
        return f"{self.key} {self.operator.lower()} ({','.join(sorted(self.values))})"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """All requirements must hold; no requirements = every object (the API's `{}`)."""

    requirements: tuple[Requirement, ...] = ()

    @property
    def everything(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return "{" + ", ".join(str(r) for r in self.requirements) + "}"


EVERYTHING = LabelSelector()


class SelectorError(ValueError):
    """A selector the API server would refuse."""


def parse_selector(obj: object) -> LabelSelector:
    """metav1.LabelSelector as a plain dict -> LabelSelector; SelectorError when invalid."""
    if not isinstance(obj, dict):
        raise SelectorError(f"not an object: {type(obj).__name__}")
    unknown = set(obj) - {"matchLabels", "matchExpressions"}
    if unknown:  # a typo such as matchLabel would otherwise select everything
        raise SelectorError(f"unknown field {sorted(map(str, unknown))[0]!r}"[:200])
    reqs: set[Requirement] = set()
    match_labels = obj.get("matchLabels")
    if match_labels is not None:
        if not isinstance(match_labels, dict):
            raise SelectorError("matchLabels: not a map")
        for k, v in match_labels.items():
            if not is_label_key(k) or not is_label_value(v):
                raise SelectorError(f"matchLabels: bad label {k!r}={v!r}"[:200])
            reqs.add(Requirement(sys.intern(k), "In", frozenset((v,))))
    exprs = obj.get("matchExpressions")
    if exprs is not None:
        if not isinstance(exprs, list):
            raise SelectorError("matchExpressions: not a list")
        for e in exprs:
            reqs.add(_requirement(e))
    return LabelSelector(tuple(sorted(reqs, key=lambda r: (r.key, r.operator, sorted(r.values)))))


def _requirement(e: object) -> Requirement:
    if not isinstance(e, dict):
        raise SelectorError("matchExpressions: entry not an object")
    if set(e) - {"key", "operator", "values"}:
        raise SelectorError("matchExpressions: unknown field")
    key, op, values = e.get("key"), e.get("operator"), e.get("values")
    if not is_label_key(key):
        raise SelectorError(f"matchExpressions: bad key {key!r}"[:200])
    if op not in OPERATORS:
        raise SelectorError(f"matchExpressions: bad operator {op!r}"[:200])
    if values is None:
        values = []
    if not isinstance(values, list):
        raise SelectorError("matchExpressions: values not a list")
    for v in values:
        if not is_label_value(v):
            raise SelectorError(f"matchExpressions: bad value {v!r}"[:200])
    if op in ("In", "NotIn") and not values:
        raise SelectorError(f"matchExpressions: {op} on {key!r} needs values")
    if op in ("Exists", "DoesNotExist") and values:
        raise SelectorError(f"matchExpressions: {op} on {key!r} takes no values")
    assert isinstance(key, str) and isinstance(op, str)
    return Requirement(sys.intern(key), op, frozenset(values))
