"""The conntrack sysctls kube-proxy manages, set the way kube-proxy sets them.

kube-proxy (cmd/kube-proxy/app/conntrack.go) writes, at start:
  nf_conntrack_tcp_timeout_close_wait   3600 s: a half-closed Service connection whose server side
                                        never closes keeps its NAT entry an hour (the kernel's 60 s
                                        would let a late packet meet a recycled entry)
  nf_conntrack_tcp_timeout_established  86400 s (kernel default 5 days: stale entries fill the table)
  nf_conntrack_max                      max(32768 * cores, 131072)
Both timeouts are per network namespace (since Linux 4.x), so setting them in the daemon's own
namespace touches that namespace only. nf_conntrack_max is one value for the whole host, writable
only from the initial namespace: podwire sets it only when `conntrack_max_per_core` asks (default
off), never from tests or the harness. A value of 0 leaves a setting as it is, as in kube-proxy.

Pure planning (`desired`) is apart from the edge (`apply`, plain /proc/sys file I/O in the
calling process's namespace); nothing here enters a namespace.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

SYSCTL_DIR = "/proc/sys/net/netfilter"
CLOSE_WAIT = "nf_conntrack_tcp_timeout_close_wait"
ESTABLISHED = "nf_conntrack_tcp_timeout_established"
MAX = "nf_conntrack_max"
# The kernel keeps timeouts in jiffies in an int: above INT_MAX / HZ (HZ <= 1000) it refuses them.
MAX_TIMEOUT = 2_147_483
MAX_INT = 2**31 - 1


@dataclass(frozen=True)
class ConntrackSettings:
    tcp_close_wait: int = 3600  # kube-proxy's --conntrack-tcp-timeout-close-wait default (1h)
    tcp_established: int = 86400  # kube-proxy's --conntrack-tcp-timeout-established default (24h)
    max_per_core: int = 0  # kube-proxy's default is 32768; off here: a host-global value
    min: int = 131072  # kube-proxy's --conntrack-min

    @classmethod
    def from_config(cls, cfg) -> ConntrackSettings:
        return cls(cfg.conntrack_tcp_timeout_close_wait, cfg.conntrack_tcp_timeout_established,
                   cfg.conntrack_max_per_core, cfg.conntrack_min)


def conntrack_max(per_core: int, floor: int, cpus: int) -> int:
    """kube-proxy's getConntrackMax: per_core * cpus, at least `floor`; 0 (leave it) when per_core is 0."""
    if per_core <= 0:
        return 0
    return min(max(per_core * max(cpus, 1), floor), MAX_INT)


def desired(s: ConntrackSettings, cpus: int) -> dict[str, int]:
    """sysctl name -> value to hold; settings at 0 are left out (left as they are)."""
    want = {CLOSE_WAIT: s.tcp_close_wait, ESTABLISHED: s.tcp_established,
            MAX: conntrack_max(s.max_per_core, s.min, cpus)}
    return {name: v for name, v in want.items() if v > 0}


@dataclass(frozen=True)
class Outcome:
    name: str
    before: int | None  # None: could not be read
    after: int | None  # the value now (before, when nothing was written)
    error: str = ""  # why it could not be set; "" when it holds the wanted value

    @property
    def missing(self) -> bool:
        """The sysctl does not exist yet: nf_conntrack is loaded by the first ruleset using it."""
        return self.before is None and "not loaded" in self.error


def _read(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


def apply(want: dict[str, int], root: str = SYSCTL_DIR) -> list[Outcome]:
    """Write each value that differs, in the calling process's network namespace. Never raises
    for a sysctl: each outcome says what was found, what holds now and why not."""
    out = []
    for name, value in want.items():
        path = os.path.join(root, name)
        try:
            before = _read(path)
        except FileNotFoundError:
            out.append(Outcome(name, None, None, "nf_conntrack is not loaded yet (no such sysctl)"))
            continue
        except (OSError, ValueError, IndexError) as e:
            out.append(Outcome(name, None, None, f"cannot read {path}: {e}"))
            continue
        if before == value:
            out.append(Outcome(name, before, before))
            continue
        try:
            with open(path, "w") as f:
                f.write(f"{value}\n")
            out.append(Outcome(name, before, _read(path)))
        except OSError as e:
            why = {errno.EROFS: "/proc/sys is mounted read-only here",
                   errno.EACCES: "not writable here (nf_conntrack_max only from the host's own namespace)",
                   errno.EPERM: "not permitted"}.get(e.errno or 0, e.strerror or str(e))
            out.append(Outcome(name, before, before, f"cannot write {value} to {path}: {why}"))
    return out


class ConntrackSysctls:
    """What the proxy feature calls: `ensure()` at start and after syncs until every sysctl
    existed once (nf_conntrack may load only with the proxy's first ruleset). Logs each change
    and each failure once; a failure never stops the proxy (an unprivileged DaemonSet has a
    read-only /proc/sys: the manifest's privileged init container sets them instead)."""

    def __init__(self, settings: ConntrackSettings, cpus: int | None = None, root: str = SYSCTL_DIR):
        self.want = desired(settings, cpus if cpus is not None else (os.cpu_count() or 1))
        self.root = root
        self.done = not self.want
        self.outcomes: list[Outcome] = []

    def ensure(self) -> bool:
        """True once nothing is left to try."""
        if self.done:
            return True
        self.outcomes = apply(self.want, self.root)
        for o in self.outcomes:
            if o.error and not o.missing:
                log.warning("conntrack setting %s not applied: %s", o.name, o.error)
            elif o.before != o.after:
                log.info("conntrack setting %s: %s -> %s", o.name, o.before, o.after)
        self.want = {o.name: self.want[o.name] for o in self.outcomes if o.missing}
        self.done = not self.want
        if not self.done:
            log.info("conntrack settings %s wait for nf_conntrack to load", sorted(self.want))
        return self.done
