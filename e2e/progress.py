"""Progress lines for long work (a cold Kubernetes build, a cluster start): what runs, for how long,
what is left.

Why: a newcomer's first `make demo` sat 10 minutes without a line while `go build` compiled
Kubernetes. `Progress` is pure (a clock is passed in, lines are returned, never printed), so its
wording and timing are unit-tested; `Ticker` is the thread that prints its heartbeat while a step
runs.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Sequence

# `go build -v` names each package as it compiles it: one import path a line (no spaces, no
# colon, which every error line has: "file.go:12:3: ...", "# pkg" headers have a space)
_PACKAGE = re.compile(r"^[\w.~+-]+(/[\w.~+-]+)*$")
_DOWNLOAD = re.compile(r"^go: downloading \S+ \S+$")


def elapsed(seconds: float) -> str:
    """1m05s, 42s, 1h02m."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Steps run one after another; a heartbeat line at most every `every` seconds."""

    def __init__(self, prefix: str, steps: Sequence[str], *, every: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.prefix, self.steps, self.every, self.clock = prefix, list(steps), every, clock
        self.started = clock()
        self.step = -1
        self.step_started = self.last = self.started
        self.packages = self.downloads = 0

    def start(self, i: int) -> str:
        """Step i begins: the line that says so, with what is left after it."""
        self.step, self.step_started = i, self.clock()
        self.last = self.step_started
        self.packages = self.downloads = 0
        return f"{self.prefix} [{i + 1}/{len(self.steps)}] {self.steps[i]}{self._left()}"

    def count(self, line: str) -> bool:
        """Takes a line of the tool's output: True when it is counted (a package compiled, a module
        downloaded) and need not be shown; False for anything else (errors, warnings)."""
        line = line.strip()
        if _DOWNLOAD.match(line):
            self.downloads += 1
            return True
        if _PACKAGE.match(line):
            self.packages += 1
            return True
        return False

    def heartbeat(self) -> str | None:
        """The line to print now, or None when the last one is less than `every` seconds old."""
        now = self.clock()
        if now - self.last < self.every or self.step < 0:
            return None
        self.last = now
        done = []
        if self.downloads:
            done.append(f"{self.downloads} modules downloaded")
        if self.packages:
            done.append(f"{self.packages} packages compiled")
        return (f"{self.prefix} [{self.step + 1}/{len(self.steps)}] {self.steps[self.step]}: still running, "
                f"{elapsed(now - self.step_started)}" + (f" ({', '.join(done)})" if done else "")
                + f"; {elapsed(now - self.started)} in all{self._left()}")

    def finish(self) -> str:
        """The current step's closing line."""
        now = self.clock()
        return (f"{self.prefix} [{self.step + 1}/{len(self.steps)}] {self.steps[self.step]}: done in "
                f"{elapsed(now - self.step_started)}")

    def _left(self) -> str:
        rest = [short(label) for label in self.steps[self.step + 1:]]
        return f"; then: {', '.join(rest)}" if rest else ""


def short(label: str) -> str:
    """A step's name without its details: what stands before " (" or ":"."""
    return label.split(" (", 1)[0].split(":", 1)[0]


class Ticker:
    """Prints `progress.heartbeat()` from a thread while a `with` block runs."""

    def __init__(self, progress: Progress, out=None, poll: float = 1.0):
        self.progress, self.out, self.poll = progress, out or sys.stderr, poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            line = self.progress.heartbeat()
            if line:
                print(line, file=self.out, flush=True)

    def __enter__(self) -> "Ticker":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
