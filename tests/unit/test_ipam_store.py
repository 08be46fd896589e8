"""DiskStore in a tmp dir (no root): host-local's layout, legacy files, locking, I/O errors."""

import fcntl
import os
import time

import pytest

from ipam import allocator
from ipam.addr import ip_address as A
from ipam.config import IPAMConfig
from ipam.errors import IO_FAILURE, STATUS_UNAVAILABLE, TRY_AGAIN, IPAMError
from ipam.store import DiskStore, Entry


def cfg(data_dir, *range_sets):
    return IPAMConfig.from_json(
        {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": s}] for s in range_sets]}, "net"
    )


def read(path):
    with open(path, "rb") as f:
        return f.read()


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_layout_is_host_locals(tmp_path):
    c = cfg(tmp_path / "data", "10.0.0.0/24", "fd00::/64")
    store = DiskStore.for_config(c)
    allocator.allocate(c, store, "0123abcd", "eth0")
    net = tmp_path / "data" / "net"
    assert sorted(os.listdir(net)) == ["10.0.0.2", "fd00::2", "last_reserved_ip.0", "last_reserved_ip.1", "lock"]
    assert read(net / "10.0.0.2") == b"0123abcd\r\neth0"
    assert read(net / "fd00::2") == b"0123abcd\r\neth0"
    assert read(net / "last_reserved_ip.0") == b"10.0.0.2"
    assert read(net / "last_reserved_ip.1") == b"fd00::2"
    assert os.stat(net).st_mode & 0o777 == 0o755 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_missing_parent_dirs_are_created(tmp_path):
    store = DiskStore(str(tmp_path / "a" / "b"), "net")
    with store.lock():
        assert store.entries() == []
    assert (tmp_path / "a" / "b" / "net" / "lock").exists()


def test_entries_read_current_and_legacy_files_and_skip_the_rest(tmp_path):
    net = tmp_path / "net"
    net.mkdir()
    (net / "10.0.0.2").write_bytes(b"aaa\r\neth0")
    (net / "10.0.0.3").write_bytes(b"bbb")  # legacy: container ID only
    (net / "10.0.0.4").write_bytes(b"ccc\n")  # legacy with a trailing newline (trimmed as host-local)
    (net / "fd00::2").write_bytes(b"ddd\r\nnet1")
    (net / "last_reserved_ip.0").write_bytes(b"10.0.0.4")
    (net / "lock").write_bytes(b"")
    (net / "README").write_bytes(b"not an allocation")
    (net / "10.0.0.99").mkdir()  # a directory is no allocation
    store = DiskStore(str(tmp_path), "net")
    with store.lock():
        got = sorted(store.entries(), key=lambda e: (e.ip.version, e.ip))
        assert got == [
            Entry(A("10.0.0.2"), "aaa", "eth0"),
            Entry(A("10.0.0.3"), "bbb", None),
            Entry(A("10.0.0.4"), "ccc", None),
            Entry(A("fd00::2"), "ddd", "net1"),
        ]
        assert store.last_reserved(0) == A("10.0.0.4")
        assert store.last_reserved(1) is None


def test_reserve_is_exclusive_and_free_is_quiet_when_gone(tmp_path):
    store = DiskStore(str(tmp_path), "net")
    with store.lock():
        assert store.reserve(A("10.0.0.5"), "a", "eth0", 0) is True
        assert store.reserve(A("10.0.0.5"), "b", "eth0", 0) is False
        assert read(tmp_path / "net" / "10.0.0.5") == b"a\r\neth0"
        assert store.free(A("10.0.0.5")) is True
        assert store.free(A("10.0.0.5")) is False


def test_garbage_last_reserved_is_ignored(tmp_path):
    c = cfg(tmp_path, "10.0.0.0/24")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "last_reserved_ip.0").write_bytes(b"\x00garbage")
    assert [str(a.address.ip) for a in allocator.allocate(c, DiskStore.for_config(c), "a", "eth0")] == ["10.0.0.2"]


def test_legacy_files_are_released_and_collected(tmp_path):
    c = cfg(tmp_path, "10.0.0.0/24")
    net = tmp_path / "net"
    net.mkdir()
    (net / "10.0.0.7").write_bytes(b"old-pod")
    (net / "10.0.0.8").write_bytes(b"gone-pod")
    store = DiskStore.for_config(c)
    assert allocator.find(store, "old-pod", "eth0") == (A("10.0.0.7"),)
    assert allocator.gc(store, {("old-pod", "eth0")}) == ["10.0.0.8"]
    assert allocator.release(store, "old-pod", "eth0") == 1
    assert sorted(os.listdir(net)) == ["lock"]


def test_lock_timeout_is_try_again(tmp_path):
    store = DiskStore(str(tmp_path), "net", lock_timeout=0.3)
    with store.lock():
        pass  # creates dir and lock file
    fd = os.open(tmp_path / "net" / "lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process's plugin, as far as flock is concerned
        before = open_fds()
        t0 = time.monotonic()
        with pytest.raises(IPAMError) as info:
            allocator.allocate(cfg(tmp_path, "10.0.0.0/24"), store, "a", "eth0")
        waited = time.monotonic() - t0
        assert info.value.code == TRY_AGAIN
        assert 0.3 <= waited < 2.0
        assert open_fds() == before  # the lock file descriptor was not leaked
    finally:
        os.close(fd)
    assert allocator.release(store, "a", "eth0") == 0  # free again once the holder is gone


def test_lock_waits_for_a_short_holder(tmp_path):
    import threading

    store = DiskStore(str(tmp_path), "net", lock_timeout=5)
    with store.lock():
        pass
    fd = os.open(tmp_path / "net" / "lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    threading.Timer(0.2, os.close, (fd,)).start()
    t0 = time.monotonic()
    with store.lock():
        assert time.monotonic() - t0 >= 0.15


def test_lock_is_released_after_an_error(tmp_path):
    c = cfg(tmp_path, "10.0.0.0/30")  # .1 gateway, .2 the only address
    store = DiskStore(str(tmp_path), "net", lock_timeout=0.2)
    allocator.allocate(c, store, "a", "eth0")
    before = open_fds()
    with pytest.raises(IPAMError):
        allocator.allocate(c, store, "b", "eth0")
    assert open_fds() == before
    assert allocator.release(store, "a", "eth0") == 1  # would time out if the lock were still held


def test_threads_sharing_one_store_exclude_each_other(tmp_path):
    import threading

    c = cfg(tmp_path, "10.0.0.0/24")
    store = DiskStore.for_config(c)
    got, errors = [], []

    def worker(n):
        try:
            for i in range(20):
                got.append(allocator.allocate(c, store, f"t{n}-{i}", "eth0")[0].address)
        except Exception as err:  # surfaced by the assert below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(got) == len(set(got)) == 80


def test_nested_lock_times_out_instead_of_corrupting(tmp_path):
    store = DiskStore(str(tmp_path), "net", lock_timeout=0.1)
    with store.lock():
        with pytest.raises(IPAMError) as info:
            with store.lock():
                pass
        assert info.value.code == TRY_AGAIN


def test_io_errors_are_code_5_and_status_says_not_writable(tmp_path):
    (tmp_path / "file").write_text("in the way")
    c = cfg(tmp_path / "file", "10.0.0.0/24")  # dataDir under a regular file: ENOTDIR
    store = DiskStore.for_config(c)
    with pytest.raises(IPAMError) as info:
        allocator.allocate(c, store, "a", "eth0")
    assert info.value.code == IO_FAILURE and "lock" in info.value.msg
    with pytest.raises(IPAMError) as info:
        allocator.status(c, store)
    assert info.value.code == STATUS_UNAVAILABLE and info.value.msg == "store not writable"


def test_status_on_a_fresh_disk_store(tmp_path):
    c = cfg(tmp_path / "fresh", "10.0.0.0/24")
    allocator.status(c, DiskStore.for_config(c))
    assert (tmp_path / "fresh" / "net").is_dir()
