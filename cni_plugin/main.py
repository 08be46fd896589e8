"""Entry point of the `podwire` CNI executable.

`main` reads the environment and stdin and prints what `dispatch` returns; stdout is the CNI
protocol, so diagnostics go to the log file only, and no traceback ever reaches stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time

from cni_plugin.config import DEFAULT_LOG_FILE, SUPPORTED_VERSIONS, parse_netconf
from cni_plugin.errors import DECODE_FAILURE, INVALID_ENV, CNIError, error_json, to_cni_error


class FileLog:
    """Appends one line per event; never fails the operation it describes."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, line: str) -> None:
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(self.path, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()} {line}\n")
        except OSError:
            pass


def dispatch(environ, stdin: bytes) -> tuple[int, str]:
    """(exit code, stdout text) for one invocation."""
    command = environ.get("CNI_COMMAND", "")
    version = SUPPORTED_VERSIONS[-1]
    log = FileLog(environ.get("PODWIRE_CNI_LOG") or DEFAULT_LOG_FILE)
    try:
        raw = None
        if stdin.strip():
            try:
                raw = json.loads(stdin)
            except ValueError as e:
                raise CNIError(DECODE_FAILURE, f"cannot decode network configuration on stdin: {e}") from None
            except RecursionError:
                raise CNIError(DECODE_FAILURE, "cannot decode network configuration on stdin: nested too deeply"
                               ) from None
        if command == "VERSION":
            from cni_plugin.verbs import version_answer

            return 0, json.dumps(version_answer(raw))
        if isinstance(raw, dict) and raw.get("cniVersion") in SUPPORTED_VERSIONS:
            version = raw["cniVersion"]
        from cni_plugin import verbs

        verb = verbs.VERBS.get(command)
        if verb is None:
            if not command:
                raise CNIError(INVALID_ENV, "CNI_COMMAND is not set (expected ADD, DEL, CHECK, STATUS, GC or VERSION)")
            raise CNIError(INVALID_ENV, f"unknown CNI_COMMAND {command!r} "
                           "(expected ADD, DEL, CHECK, STATUS, GC or VERSION)")
        if raw is None:
            raise CNIError(DECODE_FAILURE, "no network configuration on stdin")
        conf = parse_netconf(raw, port_mappings=command == "ADD")
        if not environ.get("PODWIRE_CNI_LOG"):
            log = FileLog(conf.log_file)
        out = verb(conf, verbs.Env(environ), log)
        return 0, json.dumps(out) if out is not None else ""
    except BaseException as exc:  # the edge: everything becomes a CNI error
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        err = to_cni_error(exc)
        if err.code == 999:
            import traceback

            log(f"{command} internal error:\n" + "".join(traceback.format_exception(exc)))
        else:
            log(f"{command} {environ.get('CNI_CONTAINERID', '')[:12]} error {err.code}: {err.msg} {err.details}")
        return 1, error_json(err, version)


def main() -> None:
    code, out = dispatch(os.environ, sys.stdin.buffer.read())
    if out:
        sys.stdout.write(out + "\n")
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
