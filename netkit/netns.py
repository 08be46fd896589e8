"""Entering a network namespace for a moment.

Only short-lived processes (the CNI plugin) use `entered`: sockets and /proc/sys/net files opened inside
keep that namespace after we switch back. Python 3.11 has no os.setns, so libc's is called via ctypes,
imported lazily because ctypes costs ~3 ms and DEL without a netns never needs it.
"""

import contextlib
import os

CLONE_NEWNET = 0x40000000
_setns = None


def setns(fd: int) -> None:
    global _setns
    if _setns is None:
        # _ctypes directly: the ctypes package's own set-up costs ~2 ms per plugin start
        import _ctypes

        address = _ctypes.dlsym(_ctypes.dlopen(None), "setns")
        _setns = lambda f: _ctypes.call_function(address, (f, CLONE_NEWNET))  # noqa: E731
    if _setns(fd) != 0:
        import ctypes  # only on failure: errno needs ctypes' use_errno machinery

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")


def open_netns(path: str) -> int:
    """An fd on the namespace at `path`; FileNotFoundError when the namespace is gone."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def entered(netns_fd: int):
    """Run the block inside the namespace, then come back to ours (also on error)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(netns_fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def write_sysctl(name: str, value: str) -> None:
    """Write a net sysctl of the namespace we are in now (e.g. 'net/ipv4/ip_forward')."""
    path = "/proc/sys/" + name
    with open(path, "r+") as f:
        if f.read().strip() != value:
            f.seek(0)
            f.write(value)
