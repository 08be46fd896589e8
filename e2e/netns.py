"""Network namespaces and the processes the harness runs in them.

Why it is built so: the harness process (pytest, or the CLI) never switches namespaces
itself. Everything that must happen inside a namespace is a child process: `ip -n NAME`
for links and addresses, `nsenter --net=/run/netns/NAME` for programs. `nsenter` with the
network namespace only (not `ip netns exec`) keeps the host's mount namespace, which later
kubelets need so that pods get their secret and token volumes.

A Proc records (pid, start time), so a `down` in another process stops exactly the
processes this harness started, even if a pid has been recycled since.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

NETNS_DIR = Path("/run/netns")


class CommandError(RuntimeError):
    def __init__(self, argv, returncode, stdout, stderr):
        self.argv, self.returncode, self.stdout, self.stderr = argv, returncode, stdout, stderr
        super().__init__(f"{' '.join(map(str, argv))} exited {returncode}: {(stderr or stdout or '').strip()}")


def run(argv, *, check=True, input=None, env=None, timeout=60) -> subprocess.CompletedProcess:
    """Run a command to completion, capturing text output; raise CommandError on failure."""
    proc = subprocess.run(
        [str(a) for a in argv], input=input, env=env, timeout=timeout,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


# -- namespaces ------------------------------------------------------------------------


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def in_netns(name: str, argv) -> list[str]:
    """argv prefixed so that it runs in the network namespace `name` (and only that one)."""
    return ["nsenter", f"--net={netns_path(name)}", *map(str, argv)]


def netns_exists(name: str) -> bool:
    return netns_path(name).exists()


def list_netns(prefix: str = "") -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def create_netns(name: str) -> None:
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def pids_in_netns(name: str) -> list[int]:
    if not netns_exists(name):
        return []
    out = run(["ip", "netns", "pids", name], check=False).stdout
    return [int(p) for p in out.split()]


def delete_netns(name: str) -> None:
    """Kill what still runs inside (only the harness puts processes there), then delete."""
    for pid in pids_in_netns(name):
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids_in_netns(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    if netns_exists(name):
        run(["ip", "netns", "delete", name])


def sysctl(netns: str, key: str, value) -> None:
    # /proc/sys/net shows the namespace of the task that opens it, so a child in the
    # namespace is enough (no mount namespace needed).
    run(in_netns(netns, ["sysctl", "-q", "-w", f"{key}={value}"]))


# -- processes -------------------------------------------------------------------------


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # the comm field may contain spaces and ')'


def _start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # field 22: starttime


@dataclasses.dataclass(frozen=True)
class Proc:
    """A process the harness started (its own session, so its pid is its group id)."""

    name: str
    pid: int
    start_time: int
    log: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Proc":
        return cls(name=data["name"], pid=data["pid"], start_time=data["start_time"], log=data.get("log", ""))

    @classmethod
    def of(cls, pid: int, name: str) -> "Proc":
        """A running process (not necessarily started by the harness)."""
        start = _start_time(pid)
        if start is None:
            raise ProcessLookupError(pid)
        return cls(name=name, pid=pid, start_time=start)

    def alive(self) -> bool:
        fields = _stat(self.pid)
        return bool(fields) and int(fields[19]) == self.start_time and fields[0] not in ("Z", "X")

    def stop(self, timeout: float = 10.0) -> None:
        stop_all([self], timeout)

    def _signal_group(self, sig: int) -> None:
        if _start_time(self.pid) == self.start_time:  # else gone, or the pid is someone else's
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def _reap(self) -> None:
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not our child (started by another harness process): init reaps it

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_all(procs, timeout: float = 10.0) -> None:
    """SIGTERM all at once, wait until they are dead (zombies count as dead: a process
    orphaned by an earlier CLI is reaped by init, in its own time), SIGKILL the rest."""
    procs = [p for p in procs if p.alive()]
    for p in procs:
        p._signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            p._reap()
        procs = [p for p in procs if p.alive()]
        if not procs:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for p in procs:
        p._signal_group(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while procs and time.monotonic() < deadline:
        for p in procs:
            p._reap()
        procs = [p for p in procs if p.alive()]
        time.sleep(0.02)


def this_process(name: str = "self") -> Proc:
    return Proc.of(os.getpid(), name)


def spawn(name: str, argv, log: Path, *, env=None, pass_fds=()) -> Proc:
    """Start a long-running process in its own session, stdout+stderr to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, pass_fds=pass_fds, start_new_session=True,
        )
    start = None
    while start is None:  # /proc entry exists as soon as fork returned
        start = _start_time(popen.pid)
    # The Popen object is dropped: Proc.stop reaps by pid (the child stays ours).
    popen.returncode = 0  # keep Popen.__del__ from warning about a running child
    return Proc(name=name, pid=popen.pid, start_time=start, log=str(log))
