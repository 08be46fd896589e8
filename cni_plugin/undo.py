"""The compensations of a failing ADD: what contextlib.ExitStack does for it, without contextlib.

`import contextlib` pulls in collections, functools, operator, reprlib, keyword and types (~3 ms of every
plugin start, bench/cni_startup.py --importtime) for the three methods an ADD uses.
"""

from __future__ import annotations


class Undo:
    """`with Undo() as undo:` runs, on an exception, every registered step in reverse order; `pop_all()`
    on success keeps everything. As ExitStack: every step runs even when one fails, and a step's error
    replaces the pending one (chained to it)."""

    def __init__(self) -> None:
        self._steps: list = []

    def __enter__(self) -> Undo:
        return self

    def enter_context(self, cm):
        """Enter `cm` now and exit it (with no exception) on undo; its __enter__ value."""
        value = cm.__enter__()
        self._steps.append((cm.__exit__, (None, None, None)))
        return value

    def callback(self, fn, *args) -> None:
        self._steps.append((fn, args))

    def pop_all(self) -> None:
        self._steps = []

    def __exit__(self, typ, exc, tb) -> None:  # None: never swallows the block's exception
        steps, self._steps = self._steps, []
        pending = exc
        for fn, args in reversed(steps):
            try:
                fn(*args)
            except BaseException as err:
                if pending is not None and err is not pending:
                    err.__context__ = pending
                pending = err
        if pending is not exc:
            raise pending
