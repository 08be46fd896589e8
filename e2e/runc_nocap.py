"""A runc wrapper that drops one capability the machine cannot grant, then execs the real runc.

Why it is built so: on the harness machines the root user's capability bounding set lacks
CAP_SYS_RESOURCE, and Docker 20.10 gives a `--privileged` container (every kind node) the full
capability list, so runc fails "unable to apply caps" at create and at every `docker exec`.
e2e/dockerd.py registers this file as dockerd's default runtime: it removes the capability from
the OCI bundle's config.json (create, run) or from the process file (exec), and nothing else.
A machine whose root holds the capability is never given this wrapper (nothing to drop).

Standalone on purpose (run with `python3 -I`, no imports from the checkout): the shim runs it for
every container operation.
"""

from __future__ import annotations

import json
import os
import sys

DROP = "CAP_SYS_RESOURCE"
RUNC = os.environ.get("PODWIRE_REAL_RUNC", "/usr/sbin/runc")


def strip_capability(process: dict, cap: str = DROP) -> bool:
    """Remove `cap` from every capability set of an OCI process object; True if anything changed."""
    changed = False
    for name, caps in (process.get("capabilities") or {}).items():
        if isinstance(caps, list) and cap in caps:
            process["capabilities"][name] = [c for c in caps if c != cap]
            changed = True
    return changed


def files_to_edit(args: list[str]) -> list[tuple[str, bool]]:
    """(path, is_bundle_config) of the JSON files a runc command line will read a process from.

    `create`/`run` read <bundle>/config.json (its "process" member); `exec --process FILE` reads a
    process object. Global options before the subcommand (--root, --log, ...) take values, which
    are never subcommand names runc knows.
    """
    subcommands = {"create", "run", "exec"}
    sub_at = next((i for i, a in enumerate(args) if a in subcommands), None)
    if sub_at is None:
        return []
    sub, rest = args[sub_at], args[sub_at + 1:]
    if sub == "exec":
        return [(v, False) for v in _values(rest, "--process", "-p")]
    bundles = _values(rest, "--bundle", "-b") or ["."]
    return [(os.path.join(bundles[-1], "config.json"), True)]


def _values(args: list[str], long: str, short: str) -> list[str]:
    found = []
    for i, a in enumerate(args):
        if a in (long, short) and i + 1 < len(args):
            found.append(args[i + 1])
        elif a.startswith(long + "="):
            found.append(a.split("=", 1)[1])
    return found


def edit(path: str, is_bundle_config: bool) -> None:
    with open(path) as f:
        doc = json.load(f)
    process = doc.get("process") if is_bundle_config else doc
    if isinstance(process, dict) and strip_capability(process):
        tmp = path + ".nocap"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)


def main(argv: list[str]) -> None:
    for path, is_config in files_to_edit(argv):
        try:
            edit(path, is_config)
        except (OSError, ValueError) as err:  # runc reports a missing or bad file itself
            print(f"runc_nocap: {path}: {err}", file=sys.stderr)
    os.execv(RUNC, [RUNC, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
