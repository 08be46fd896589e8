"""Entering a network namespace for a moment.

Only short-lived processes (the CNI plugin) use `entered`: sockets and /proc/sys/net files opened inside
keep that namespace after we switch back. Python 3.11 has no os.setns, so libc's is called via ctypes,
imported lazily because ctypes costs ~3 ms and DEL without a netns never needs it.
"""

import fcntl  # a builtin module, already loaded by ipam
import os

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3): the CLONE_NEW* type of an nsfs fd
_setns = None


def setns(fd: int) -> None:
    global _setns
    if _setns is None:
        # _ctypes directly: the ctypes package's own set-up costs ~2 ms per plugin start
        import _ctypes

        address = _ctypes.dlsym(_ctypes.dlopen(None), "setns")  # type: ignore[arg-type]
        _setns = lambda f: _ctypes.call_function(address, (f, CLONE_NEWNET))  # noqa: E731
    if _setns(fd) != 0:
        try:
            import ctypes  # only on failure: errno needs ctypes' use_errno machinery
        except ImportError:  # the frozen plugin leaves the ctypes package out (its start-up cost)
            raise OSError("setns into the network namespace failed") from None
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")


class NotANetns(ValueError):
    """`path` exists but is no network namespace (a plain file, a directory, another namespace type)."""


def open_netns(path: str) -> int:
    """An fd on the network namespace at `path`; FileNotFoundError when it is gone, NotANetns when the
    path is something else (setns would fail later with a bare EINVAL)."""
    # O_NONBLOCK: a FIFO at `path` must not hang us; O_NOCTTY: nor may a terminal become ours
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:  # ENOTTY: not an nsfs file at all
        kind = None
    if kind != CLONE_NEWNET:
        os.close(fd)
        what = "a namespace of another type" if kind is not None else "not a namespace file"
        raise NotANetns(f"{path} is not a network namespace ({what})")
    return fd


def is_host_netns(fd: int) -> bool:
    """Whether `fd` is our own network namespace or PID 1's (the node's): nothing a pod may name.

    nsfs gives every namespace one inode, so (st_dev, st_ino) identifies it.
    """
    st = os.fstat(fd)
    for own in ("/proc/thread-self/ns/net", "/proc/1/ns/net"):
        try:
            o = os.stat(own)
        except OSError:  # PID 1's may be hidden from us (hidepid, no ptrace right): ours still counts
            continue
        if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


class entered:  # noqa: N801 -- used as `with entered(fd):`, as the function it was
    """Run the block inside the namespace, then come back to ours (also on error).

    A class, not @contextlib.contextmanager: contextlib's import (collections, functools, ...) costs the
    CNI plugin ~3 ms per start."""

    def __init__(self, netns_fd: int):
        self.netns_fd = netns_fd
        self.home = -1

    def __enter__(self) -> None:
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(self.netns_fd)
        except BaseException:
            os.close(self.home)
            raise

    def __exit__(self, typ, exc, tb) -> None:  # None: never swallows the block's exception
        try:
            setns(self.home)
        finally:
            os.close(self.home)


def write_sysctl(name: str, value: str) -> None:
    """Write a net sysctl of the namespace we are in now (e.g. 'net/ipv4/ip_forward')."""
    path = "/proc/sys/" + name
    with open(path, "r+") as f:
        if f.read().strip() != value:
            f.seek(0)
            f.write(value)
