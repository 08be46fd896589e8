"""A ledger of everything the harness creates, so teardown can never miss anything.

Why it is built so: the harness creates network namespaces, processes and directories from
two kinds of callers — a pytest session that may crash mid-way, and a CLI (`up` in one
process, `down` in another). Recording each resource in a JSON file *before* relying on it,
and undoing the records in reverse order, gives both callers the same teardown, which also
works after a crash (`python3 -m e2e.cluster down` reads the ledger left behind).

Entries are plain dicts: {"kind": "netns"|"proc"|"path"|"cgroup", ...}. Undo is idempotent: undoing
something already gone succeeds.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from e2e import cgroups
from e2e import netns as ns


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: list[dict] = []
        if self.path.exists():
            self.entries = json.loads(self.path.read_text())["entries"]

    # -- recording ---------------------------------------------------------------------

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"entries": self.entries}, indent=1))
        os.replace(tmp, self.path)

    def add(self, kind: str, **data) -> dict:
        entry = {"kind": kind, **data}
        self.entries.append(entry)
        self._save()
        return entry

    def netns(self, name: str) -> dict:
        return self.add("netns", name=name)

    def proc(self, proc: ns.Proc) -> dict:
        return self.add("proc", **proc.to_json())

    def dir(self, path: Path) -> dict:
        return self.add("path", path=str(path))

    def cgroup(self, name: str) -> dict:
        """A cgroup root (/<name> in every hierarchy, e.g. a kubelet's cgroupRoot)."""
        return self.add("cgroup", name=name)

    def forget(self, entry: dict) -> None:
        if entry in self.entries:
            self.entries.remove(entry)
            self._save()

    # -- undoing -----------------------------------------------------------------------

    @staticmethod
    def undo_one(entry: dict) -> None:
        kind = entry["kind"]
        if kind == "proc":
            ns.Proc.from_json(entry).stop()
        elif kind == "netns":
            ns.delete_netns(entry["name"])
        elif kind == "path":
            shutil.rmtree(entry["path"], ignore_errors=True)
        elif kind == "cgroup":
            cgroups.remove(entry["name"])
        else:
            raise ValueError(f"unknown ledger entry kind {kind!r}")

    def undo(self, entry: dict) -> None:
        self.undo_one(entry)
        self.forget(entry)

    def teardown(self) -> list[str]:
        """Undo every entry, newest first. Returns the errors (teardown never stops early)."""
        errors = []
        # Processes first (they hold namespaces and files), one by one newest first: clients
        # before their servers, so nobody hangs in a graceful shutdown waiting for a peer
        # (kube-apiserver stopped together with etcd takes 10+ s, before it about 1 s).
        # Then the rest, newest first.
        ordered = [e for e in reversed(self.entries) if e["kind"] == "proc"]
        ordered += [e for e in reversed(self.entries) if e["kind"] != "proc"]
        for entry in ordered:
            try:
                self.undo_one(entry)
            except Exception as exc:  # noqa: BLE001 - keep tearing down, report at the end
                errors.append(f"{entry}: {exc}")
        self.entries = []
        if self.path.exists():
            self.path.unlink()
        return errors


class UpDown:
    """`with X(...) as x:` for the harness's things with up() and down() (down returns its errors):
    a failed up() is torn down before the error goes on; teardown errors raise `teardown_error`
    unless the body already failed (its error is the one to see)."""

    teardown_error: type[Exception] = RuntimeError
    what = "teardown"

    def up(self):  # pragma: no cover - each user has its own
        raise NotImplementedError

    def down(self) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def __enter__(self):
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc) -> None:
        errors = self.down()
        if errors and exc[0] is None:
            raise self.teardown_error(f"{self.what} failed: " + "; ".join(errors))
