"""Where allocations live: the Store interface, the on-disk host-local layout, and a dict.

The allocator is pure logic over this small interface; every method but lock()
is called with the lock held. DiskStore keeps the exact layout of the reference
host-local plugin (containernetworking/plugins, backend/disk), so either plugin
can take over a node's allocations from the other:

    <dataDir>/<network>/<ip>                   "<containerID>\\r\\n<ifname>"
                                               (legacy files: "<containerID>")
    <dataDir>/<network>/last_reserved_ip.<i>   the IP last reserved in range set i
    <dataDir>/<network>/lock                   flock(LOCK_EX) around every operation

Unlike host-local, taking the lock times out (IPAMError code 11, try again)
instead of blocking forever, and every OSError leaves as IPAMError code 5.
"""

from __future__ import annotations

import fcntl
import os
import time

from ipam import addr
from ipam.errors import TRY_AGAIN, IPAMError, io_error

LOCK_FILE = "lock"
LAST_RESERVED_PREFIX = "last_reserved_ip."
LOCK_TIMEOUT = 10.0  # seconds; the runtime retries ADD after code 11
_LINE_BREAK = "\r\n"


class Entry:
    """One allocated address and its owner, as the store holds it.

    A plain slotted class: it never leaves ipam and is built once per file read.
    """

    __slots__ = ("ip", "container_id", "ifname")

    def __init__(self, ip, container_id: str, ifname: str | None) -> None:
        self.ip = ip
        self.container_id = container_id
        self.ifname = ifname  # None: a legacy file naming only the container

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and (self.ip, self.container_id, self.ifname) == (
            other.ip,
            other.container_id,
            other.ifname,
        )

    def __repr__(self) -> str:
        return f"Entry({self.ip!r}, {self.container_id!r}, {self.ifname!r})"

    def belongs_to(self, container_id: str, ifname: str) -> bool:
        """Owned by this attachment (a legacy entry matches on the container alone)."""
        if self.container_id != container_id.strip():
            return False
        return self.ifname is None or self.ifname == ifname


def parse_owner(ip, data: str) -> Entry:
    """Read an allocation file's content the way host-local compares it (trimmed)."""
    container_id, sep, ifname = data.strip().partition(_LINE_BREAK)
    return Entry(ip, container_id, ifname if sep else None)


class Store:
    """The interface. Methods other than lock() expect the lock to be held."""

    name = "store"

    def lock(self) -> _Locked:
        """`with store.lock():` holds the store's exclusive lock for the block."""
        return _Locked(self)

    def entries(self) -> list[Entry]:
        raise NotImplementedError

    def reserve(self, ip, container_id: str, ifname: str, range_set: int) -> bool:
        """Claim ip for the attachment and remember it as range_set's last; False if taken."""
        raise NotImplementedError

    def last_reserved(self, range_set: int):
        """The IP last reserved in range_set, or None when unknown or unreadable."""
        raise NotImplementedError

    def free(self, ip) -> bool:
        """Drop ip's allocation; False when it was not allocated."""
        raise NotImplementedError

    def writable(self) -> bool:
        raise NotImplementedError

    def _acquire(self) -> object:
        """Take the lock; returns the token _release needs."""
        raise NotImplementedError

    def _release(self, token: object) -> None:
        raise NotImplementedError


class _Locked:
    # The token lives here, not on the store, so threads may share one store.
    __slots__ = ("store", "token")

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> Store:
        self.token = self.store._acquire()
        return self.store

    def __exit__(self, *exc) -> None:
        self.store._release(self.token)


class DiskStore(Store):
    def __init__(self, data_dir: str, network_name: str, lock_timeout: float = LOCK_TIMEOUT) -> None:
        # No I/O here: the directory is created when the lock is first taken.
        self.dir = os.path.join(data_dir, network_name)
        self.name = self.dir
        self.lock_timeout = lock_timeout

    @classmethod
    def for_config(cls, config) -> DiskStore:
        return cls(config.data_dir, config.network_name)

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _open_lock_file(self) -> int:
        path = self._path(LOCK_FILE)
        flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC
        try:
            try:
                return os.open(path, flags, 0o600)
            except FileNotFoundError:
                os.makedirs(self.dir, 0o755, exist_ok=True)
                return os.open(path, flags, 0o600)
        except OSError as err:
            raise io_error(f"open lock file {path}", err) from None

    def _acquire(self) -> int:
        # Every acquisition opens its own descriptor: flock excludes open file
        # descriptions, so threads and processes all wait for each other.
        fd = self._open_lock_file()
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise IPAMError(
                        TRY_AGAIN,
                        f"ipam store {self.dir} is locked by another process",
                        f"gave up after {self.lock_timeout:g}s",
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
            except OSError as err:
                os.close(fd)
                raise io_error(f"lock {self._path(LOCK_FILE)}", err) from None
        return fd

    def _release(self, token: object) -> None:
        assert isinstance(token, int)  # the descriptor _acquire returned
        os.close(token)  # closing the only descriptor drops the flock

    def entries(self) -> list[Entry]:
        try:
            listing = os.scandir(self.dir)
        except FileNotFoundError:
            return []
        except OSError as err:
            raise io_error(f"list {self.dir}", err) from None
        out = []
        with listing:
            for item in listing:
                try:
                    ip = addr.ip_address(item.name)  # skips lock, last_reserved_ip.*, strays
                except ValueError:
                    continue
                try:
                    data = _read_small(item.path)
                except OSError:
                    continue  # as host-local: an unreadable file is not an allocation we can match
                out.append(parse_owner(ip, data.decode("utf-8", "replace")))
        return out

    def reserve(self, ip, container_id: str, ifname: str, range_set: int) -> bool:
        path = self._path(str(ip))
        try:
            # O_EXCL: the file's existence is the reservation, even against a
            # writer that ignores the lock.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        except OSError as err:
            raise io_error(f"create {path}", err) from None
        try:
            try:
                _write_all(fd, f"{container_id.strip()}{_LINE_BREAK}{ifname}".encode())
            finally:
                os.close(fd)
            self._write_file(LAST_RESERVED_PREFIX + str(range_set), str(ip))
        except OSError as err:
            _unlink_quietly(path)
            raise io_error(f"write {path}", err) from None
        return True

    def _write_file(self, name: str, text: str) -> None:
        fd = os.open(self._path(name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, text.encode())
        finally:
            os.close(fd)

    def last_reserved(self, range_set: int):
        try:
            data = _read_small(self._path(LAST_RESERVED_PREFIX + str(range_set)))
            return addr.ip_address(data.decode("ascii", "replace").strip())
        except (OSError, ValueError):
            return None  # we only lose round-robin once, as host-local

    def free(self, ip) -> bool:
        path = self._path(str(ip))
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise io_error(f"remove {path}", err) from None
        return True

    def writable(self) -> bool:
        return os.access(self.dir, os.W_OK)


def _read_small(path: str) -> bytes:
    """A whole small file. os.read, not open(): allocate reads every file of the
    network, and the buffered file object costs twice the syscalls' time."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 4096)]
        while len(chunks[-1]) == 4096:  # a short read of a regular file is its end
            chunks.append(os.read(fd, 4096))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class MemoryStore(Store):
    """A dict-backed store for unit tests; insists that every call holds the lock."""

    name = "memory"

    def __init__(self) -> None:
        self.files: dict = {}  # ip -> (container_id, ifname or None for a legacy file)
        self.last: dict = {}  # range set index -> ip
        self.is_writable = True
        self.fail_free: set = set()  # ips whose free() fails, to test error paths
        self.held = False  # set it to simulate another process holding the lock
        self.acquisitions = 0

    def _acquire(self) -> None:
        if self.held:
            raise IPAMError(TRY_AGAIN, "ipam store memory is locked by another process")
        self.held = True
        self.acquisitions += 1

    def _release(self, token: object) -> None:
        self.held = False

    def _check(self) -> None:
        if not self.held:
            raise AssertionError("MemoryStore used without holding its lock")

    def entries(self) -> list[Entry]:
        self._check()
        return [Entry(ip, cid, ifn) for ip, (cid, ifn) in self.files.items()]

    def reserve(self, ip, container_id: str, ifname: str, range_set: int) -> bool:
        self._check()
        if ip in self.files:
            return False
        self.files[ip] = (container_id.strip(), ifname)
        self.last[range_set] = ip
        return True

    def last_reserved(self, range_set: int):
        self._check()
        return self.last.get(range_set)

    def free(self, ip) -> bool:
        self._check()
        if ip in self.fail_free:
            raise io_error(f"remove {ip}", OSError(5, "simulated I/O error"))
        return self.files.pop(ip, None) is not None

    def writable(self) -> bool:
        self._check()
        return self.is_writable
