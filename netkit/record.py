"""Frozen records for the CNI plugin's start-up path: dataclass-like, at a fraction of the import cost.

Measured inside the frozen plugin: `import dataclasses` costs ~9.6 ms (it pulls in inspect, ast, dis,
tokenize) and every @dataclass ~0.5 ms more (it exec()s generated code), in a process whose whole
budget is a few tens of ms and which runs once per pod. `Record` reads the field list from the class
annotations once, at class creation, and needs neither. The long-lived daemon uses real dataclasses.

    class Port(Record):
        number: int
        protocol: str = "tcp"

gives keyword or positional construction, defaults, ==, hash, repr, `replace`, and immutability.
"""

_MISSING = object()


class Record:
    __slots__ = ()
    _fields: tuple = ()
    _defaults: dict = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        fields = list(cls._fields)
        defaults = dict(cls._defaults)
        for name in cls.__dict__.get("__annotations__", {}):
            if name.startswith("_"):
                continue
            if name not in fields:
                fields.append(name)
            value = cls.__dict__.get(name, _MISSING)
            if value is not _MISSING:
                defaults[name] = value
                delattr(cls, name)  # the default lives in _defaults; the attribute lives in the instance
        cls._fields = tuple(fields)
        cls._defaults = defaults

    def __init__(self, *args, **kwargs):
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes {len(fields)} fields, got {len(args)}")
        values = dict(zip(fields, args, strict=False))  # args may be fewer: the rest by name or default
        for key, value in kwargs.items():
            if key not in fields:
                raise TypeError(f"{type(self).__name__} has no field {key!r}")
            if key in values:
                raise TypeError(f"{type(self).__name__} got {key!r} twice")
            values[key] = value
        d = object.__getattribute__(self, "__dict__")
        for name in fields:
            if name in values:
                d[name] = values[name]
            elif name in self._defaults:
                d[name] = self._defaults[name]
            else:
                raise TypeError(f"{type(self).__name__} is missing field {name!r}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is frozen")

    def _astuple(self) -> tuple:
        return tuple(self.__dict__[f] for f in self._fields)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._astuple() == other._astuple()

    def __hash__(self):
        return hash((type(self).__name__, self._astuple()))

    def __repr__(self):
        inner = ", ".join(f"{f}={self.__dict__[f]!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"

    def replace(self, **changes):
        values = {f: self.__dict__[f] for f in self._fields}
        values.update(changes)
        return type(self)(**values)
