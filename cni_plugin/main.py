"""Entry point of the `podwire` CNI executable.

`main` reads the environment and stdin and prints what `dispatch` returns; stdout is the CNI
protocol, so diagnostics go to the log file only, and no traceback ever reaches stdout.

Every pod pays for this process's start, so the import path is kept lean (tests/unit/test_cni_imports.py
holds the allow-list): JSON through `wirejson`, verbs' rare paths imported where they are used.
`PODWIRE_CNI_TRACE=<launch time, CLOCK_MONOTONIC ns>` prints the phases of one call on stderr for
bench/cni_startup.py.
"""

from __future__ import annotations

import os
import sys
import time

from cni_plugin import wirejson
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


class Trace:
    """Time marks of one invocation (nanoseconds, CLOCK_MONOTONIC, the clock of every process here)."""

    def __init__(self, launched: int, entered: int):
        self.marks = [("launch", launched), ("interpreter", entered), ("import main", time.monotonic_ns())]

    @classmethod
    def from_env(cls, environ, entered: int | None) -> "Trace | None":
        launched = environ.get("PODWIRE_CNI_TRACE", "")
        if not launched.isdigit() or entered is None:
            return None
        return cls(int(launched), entered)

    def mark(self, phase: str) -> None:
        self.marks.append((phase, time.monotonic_ns()))

    def line(self) -> str:
        """'podwire-trace {phase: ms since the mark before}' (in call order), 'podwire-modules [names]'."""
        steps: dict[str, float] = {}
        for (_, before), (phase, at) in zip(self.marks, self.marks[1:], strict=False):
            steps[phase] = steps.get(phase, 0.0) + (at - before) / 1e6
        # and every module this call loaded: tests/integration/test_cni_imports.py checks the set
        return (f"podwire-trace {wirejson.dumps(steps)}\n"
                f"podwire-modules {wirejson.dumps(sorted(sys.modules))}\n")


def dispatch(environ, stdin: bytes, trace: Trace | None = None) -> tuple[int, str]:
    """(exit code, stdout text) for one invocation."""
    command = environ.get("CNI_COMMAND", "")
    version = SUPPORTED_VERSIONS[-1]
    log = FileLog(environ.get("PODWIRE_CNI_LOG") or DEFAULT_LOG_FILE)
    try:
        raw = None
        if stdin.strip():
            try:
                raw = wirejson.loads(stdin)
            except ValueError as e:
                raise CNIError(DECODE_FAILURE, f"cannot decode network configuration on stdin: {e}") from None
            except RecursionError:
                raise CNIError(DECODE_FAILURE, "cannot decode network configuration on stdin: nested too deeply"
                               ) from None
        if command == "VERSION":
            from cni_plugin.verbs import version_answer

            return 0, wirejson.dumps(version_answer(raw))
        if isinstance(raw, dict) and raw.get("cniVersion") in SUPPORTED_VERSIONS:
            version = raw["cniVersion"]
        from cni_plugin import verbs

        if trace:
            trace.mark("import verbs")
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
        out = verb(conf, verbs.Env(environ, trace), log)
        return 0, wirejson.dumps(out) if out is not None else ""
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


def main(entered: int | None = None) -> None:
    """`entered`: when __main__ began (before any import of ours), for the trace."""
    trace = Trace.from_env(os.environ, entered)
    code, out = dispatch(os.environ, sys.stdin.buffer.read(), trace)
    if out:
        sys.stdout.write(out + "\n")
    sys.stdout.flush()
    if trace:
        trace.mark("output")
        sys.stderr.write(trace.line())
        sys.stderr.flush()
    # os._exit, not sys.exit: the interpreter's finalization (module teardown, a last GC) only frees
    # memory the kernel takes back anyway, and costs every pod a few ms. Nothing is buffered any more:
    # stdout and stderr were flushed, the log file and every socket are closed by now.
    os._exit(code)


if __name__ == "__main__":
    main()
