"""The allocator over MemoryStore: order, round robin, ranges, dual-stack, idempotency, release, gc, status."""

import pytest

from ipam import allocator
from ipam.addr import ip_address as A
from ipam.addr import ip_interface as I
from ipam.allocator import Allocation
from ipam.config import IPAMConfig
from ipam.errors import (
    IO_FAILURE,
    POOL_EXHAUSTED,
    STATUS_EXHAUSTED,
    STATUS_UNAVAILABLE,
    TRY_AGAIN,
    IPAMError,
)
from ipam.store import MemoryStore


def config(*range_sets, **extra):
    return IPAMConfig.from_json({"type": "host-local", "ranges": [list(rs) for rs in range_sets], **extra}, "net")


def v4(subnet="10.0.0.0/29", **kw):
    return {"subnet": subnet, **kw}


def ips(allocs):
    return [str(a.address.ip) for a in allocs]


def add(cfg, store, cid, ifname="eth0"):
    return ips(allocator.allocate(cfg, store, cid, ifname))


@pytest.fixture
def store():
    return MemoryStore()


def test_first_addresses_skip_gateway_and_carry_prefix_and_gateway(store):
    cfg = config([v4("10.244.1.0/24")])
    (a,) = allocator.allocate(cfg, store, "c1", "eth0")
    assert a == Allocation(address=I("10.244.1.2/24"), gateway=A("10.244.1.1"), range_set=0)
    assert add(cfg, store, "c2") == ["10.244.1.3"]
    assert store.files[A("10.244.1.2")] == ("c1", "eth0")
    assert store.last == {0: A("10.244.1.3")}


def test_gateway_in_the_middle_is_skipped(store):
    cfg = config([v4(gateway="10.0.0.3")])
    got = [add(cfg, store, f"c{i}")[0] for i in range(5)]
    assert got == ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]


def test_network_and_broadcast_never_handed_out(store):
    cfg = config([v4(rangeStart="10.0.0.0", rangeEnd="10.0.0.7", gateway="10.0.0.6")])
    got = {add(cfg, store, f"c{i}")[0] for i in range(5)}
    assert got == {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"}
    with pytest.raises(IPAMError):
        add(cfg, store, "one-too-many")


def test_ipv6_last_address_is_usable(store):
    cfg = config([{"subnet": "fd00::/126"}])  # ::1 gateway, ::2, ::3
    assert [add(cfg, store, c)[0] for c in ("a", "b")] == ["fd00::2", "fd00::3"]


def test_range_start_and_end_are_honoured(store):
    cfg = config([v4("10.0.0.0/24", rangeStart="10.0.0.10", rangeEnd="10.0.0.12")])
    assert [add(cfg, store, c)[0] for c in "abc"] == ["10.0.0.10", "10.0.0.11", "10.0.0.12"]
    with pytest.raises(IPAMError) as info:
        add(cfg, store, "d")
    assert info.value.code == POOL_EXHAUSTED


def test_round_robin_does_not_reuse_a_just_freed_address(store):
    cfg = config([v4("10.0.0.0/24")])
    assert add(cfg, store, "a") == ["10.0.0.2"]
    assert add(cfg, store, "b") == ["10.0.0.3"]
    assert allocator.release(store, "a", "eth0") == 1
    assert add(cfg, store, "c") == ["10.0.0.4"]


def test_wrap_around_after_range_end(store):
    cfg = config([v4()])  # .2 .. .6
    for c in "abcde":
        add(cfg, store, c)
    allocator.release(store, "b", "eth0")  # frees .3
    allocator.release(store, "d", "eth0")  # frees .5
    assert store.last[0] == A("10.0.0.6")
    assert add(cfg, store, "f") == ["10.0.0.3"]  # past the end, back to the start, skipping .1 (gw) and .2
    assert add(cfg, store, "g") == ["10.0.0.5"]


def test_last_reserved_is_tried_last(store):
    cfg = config([v4()])
    for c in "abcde":
        add(cfg, store, c)
    allocator.release(store, "c", "eth0")  # .4
    store.last[0] = A("10.0.0.4")  # e.g. written by another node's plugin run
    allocator.release(store, "e", "eth0")  # .6
    assert add(cfg, store, "x") == ["10.0.0.6"]  # after .4: .5 taken, .6 free
    assert add(cfg, store, "y") == ["10.0.0.4"]  # wrapped: the last one itself comes last


def test_stale_last_reserved_outside_the_set_restarts_at_range_start(store):
    cfg = config([v4("10.0.0.0/24", rangeStart="10.0.0.100")])
    store.last[0] = A("10.0.0.7")  # below rangeStart: the config changed
    assert add(cfg, store, "a") == ["10.0.0.100"]
    store.last[0] = A("fd00::5")  # another family altogether
    assert add(cfg, store, "b") == ["10.0.0.101"]


def test_several_ranges_in_a_set_are_walked_in_order_and_wrap(store):
    cfg = config(
        [
            v4("10.0.0.0/24", rangeStart="10.0.0.10", rangeEnd="10.0.0.11"),
            v4("10.0.1.0/24", rangeStart="10.0.1.20", rangeEnd="10.0.1.21", gateway="10.0.1.254"),
        ]
    )
    allocs = [allocator.allocate(cfg, store, c, "eth0")[0] for c in "abcd"]
    assert [str(a.address) for a in allocs] == ["10.0.0.10/24", "10.0.0.11/24", "10.0.1.20/24", "10.0.1.21/24"]
    assert [str(a.gateway) for a in allocs] == ["10.0.0.1", "10.0.0.1", "10.0.1.254", "10.0.1.254"]
    allocator.release(store, "b", "eth0")
    assert add(cfg, store, "e") == ["10.0.0.11"]  # from the end of range 1 back to range 0
    with pytest.raises(IPAMError) as info:
        add(cfg, store, "f")
    assert info.value.msg == "no free address in range 10.0.0.10-10.0.0.11,10.0.1.20-10.0.1.21"


def test_continues_in_the_range_after_the_last_reserved_one(store):
    cfg = config(
        [
            v4("10.0.0.0/24", rangeStart="10.0.0.10", rangeEnd="10.0.0.12"),
            v4("10.0.1.0/24", rangeStart="10.0.1.10", rangeEnd="10.0.1.12"),
        ]
    )
    store.last[0] = A("10.0.0.12")  # end of range 0: next is range 1's start
    assert add(cfg, store, "a") == ["10.0.1.10"]


def test_dual_stack_one_address_per_range_set(store):
    cfg = config([v4("10.244.1.0/24")], [{"subnet": "fd00:10:244:1::/64"}])
    got = allocator.allocate(cfg, store, "pod", "eth0")
    assert got == (
        Allocation(I("10.244.1.2/24"), A("10.244.1.1"), 0),
        Allocation(I("fd00:10:244:1::2/64"), A("fd00:10:244:1::1"), 1),
    )
    assert store.last == {0: A("10.244.1.2"), 1: A("fd00:10:244:1::2")}


def test_exhaustion_code_110_names_the_range(store):
    cfg = config([v4("10.244.1.0/24", rangeStart="10.244.1.2")])
    for i in range(253):
        add(cfg, store, f"c{i}")
    with pytest.raises(IPAMError) as info:
        add(cfg, store, "late")
    assert info.value.code == POOL_EXHAUSTED == 110
    assert info.value.msg == "no free address in range 10.244.1.2-10.244.1.254"
    assert "range set 0" in info.value.details


def test_failure_in_second_set_releases_the_first(store):
    cfg = config([v4("10.0.0.0/24")], [{"subnet": "fd00::/126"}])
    add(cfg, store, "a")
    add(cfg, store, "b")  # v6 now full (::2, ::3)
    before = (dict(store.files), dict(store.last))
    with pytest.raises(IPAMError) as info:
        add(cfg, store, "c")
    assert info.value.code == POOL_EXHAUSTED and "fd00::1-fd00::3" in info.value.msg
    assert A("10.0.0.4") not in store.files
    assert store.files == before[0]
    assert not store.held


def test_failure_in_second_set_keeps_addresses_held_before_the_call(store):
    cfg1 = config([v4("10.0.0.0/24")])
    add(cfg1, store, "a")  # holds 10.0.0.2 from an earlier ADD
    store.files[A("fd00::2")] = ("x", "eth0")
    store.files[A("fd00::3")] = ("y", "eth0")
    cfg2 = config([v4("10.0.0.0/24")], [{"subnet": "fd00::/126"}])
    with pytest.raises(IPAMError):
        add(cfg2, store, "a")
    assert store.files[A("10.0.0.2")] == ("a", "eth0")


def test_repeat_returns_the_same_addresses_without_reserving(store):
    cfg = config([v4("10.0.0.0/24")], [{"subnet": "fd00::/64"}])
    first = allocator.allocate(cfg, store, "pod", "eth0")
    files, last = dict(store.files), dict(store.last)
    assert allocator.allocate(cfg, store, "pod", "eth0") == first
    assert allocator.allocate(cfg, store, " pod ", "eth0") == first  # ids are trimmed, as host-local
    assert (store.files, store.last) == (files, last)
    other_if = allocator.allocate(cfg, store, "pod", "net1")
    assert set(ips(other_if)).isdisjoint(ips(first))


def test_repeat_after_config_gained_a_range_set_adds_only_the_missing_one(store):
    old = config([v4("10.0.0.0/24")])
    new = config([v4("10.0.0.0/24")], [{"subnet": "fd00::/64"}])
    (a4,) = allocator.allocate(old, store, "pod", "eth0")
    b4, b6 = allocator.allocate(new, store, "pod", "eth0")
    assert b4 == a4 and b6.address == I("fd00::2/64") and b6.range_set == 1


def test_repeat_finds_a_legacy_file(store):
    cfg = config([v4("10.0.0.0/24")])
    store.files[A("10.0.0.9")] = ("pod", None)  # written before files carried ifname
    assert add(cfg, store, "pod") == ["10.0.0.9"]


def test_release_counts_and_repeats(store):
    cfg = config([v4("10.0.0.0/24")], [{"subnet": "fd00::/64"}])
    add(cfg, store, "a")
    add(cfg, store, "b")
    assert allocator.release(store, "a", "eth0") == 2
    assert allocator.release(store, "a", "eth0") == 0
    assert allocator.release(store, "never-seen", "eth0") == 0
    assert allocator.release(store, "b", "net1") == 0  # another interface of b holds nothing
    assert sorted(v for v in store.files.values()) == [("b", "eth0"), ("b", "eth0")]


def test_release_of_legacy_files_only_when_no_exact_match(store):
    store.files[A("10.0.0.2")] = ("a", None)
    store.files[A("10.0.0.3")] = ("a", "eth0")
    store.files[A("10.0.0.4")] = ("b", None)
    assert allocator.release(store, "a", "eth0") == 1  # exact match wins, like host-local
    assert A("10.0.0.2") in store.files
    assert allocator.release(store, "a", "eth0") == 1  # now the legacy file goes
    assert allocator.release(store, "b", "eth0") == 1
    assert store.files == {}


def test_release_goes_on_past_a_failing_file(store):
    store.files[A("10.0.0.2")] = ("a", "eth0")
    store.files[A("fd00::2")] = ("a", "eth0")
    store.fail_free.add(A("10.0.0.2"))
    with pytest.raises(IPAMError) as info:
        allocator.release(store, "a", "eth0")
    assert info.value.code == IO_FAILURE and "10.0.0.2" in info.value.details
    assert A("fd00::2") not in store.files


def test_gc_frees_everything_not_valid(store):
    cfg = config([v4("10.0.0.0/24")], [{"subnet": "fd00::/64"}])
    for cid in ("keep", "drop1", "drop2"):
        add(cfg, store, cid)
    add(cfg, store, "keep", "net1")
    freed = allocator.gc(store, {("keep", "eth0")})
    assert sorted(freed) == sorted(["10.0.0.3", "10.0.0.4", "10.0.0.5", "fd00::3", "fd00::4", "fd00::5"])
    assert set(store.files.values()) == {("keep", "eth0")}
    assert allocator.gc(store, {("keep", "eth0")}) == []


def test_gc_matches_legacy_files_on_container_alone(store):
    store.files[A("10.0.0.2")] = ("alive", None)
    store.files[A("10.0.0.3")] = ("dead", None)
    store.files[A("10.0.0.4")] = ("", None)  # an empty file left by a crash
    assert sorted(allocator.gc(store, {("alive", "net1")})) == ["10.0.0.3", "10.0.0.4"]
    assert list(store.files) == [A("10.0.0.2")]


def test_gc_goes_on_past_per_file_errors_and_reports_them(store):
    for i in range(2, 6):
        store.files[A(f"10.0.0.{i}")] = (f"c{i}", "eth0")
    store.fail_free.add(A("10.0.0.3"))
    with pytest.raises(IPAMError) as info:
        allocator.gc(store, set())
    assert info.value.code == IO_FAILURE
    assert "10.0.0.3" in info.value.details and "freed 3" in info.value.msg
    assert list(store.files) == [A("10.0.0.3")]


def test_find_returns_what_the_attachment_holds(store):
    cfg = config([{"subnet": "fd00::/64"}], [v4("10.0.0.0/24")])
    add(cfg, store, "a")
    store.files[A("10.0.0.200")] = ("legacy", None)
    assert allocator.find(store, "a", "eth0") == (A("10.0.0.2"), A("fd00::2"))  # v4 first, sorted
    assert allocator.find(store, "a", "net1") == ()
    assert allocator.find(store, "legacy", "eth0") == (A("10.0.0.200"),)
    assert allocator.find(store, "nobody", "eth0") == ()


def test_status_ok_then_exhausted_50_then_unwritable_50(store):
    cfg = config([v4("10.0.0.0/24")], [{"subnet": "fd00::/126"}])
    allocator.status(cfg, store)
    add(cfg, store, "a")
    allocator.status(cfg, store)  # one v6 address is still free
    store.files[A("fd00::1")] = ("junk", "eth0")  # a file for the gateway must not count as capacity
    allocator.status(cfg, store)
    add(cfg, store, "b")
    with pytest.raises(IPAMError) as info:
        allocator.status(cfg, store)
    assert info.value.code == STATUS_EXHAUSTED == 50
    assert info.value.msg == "range set 1 exhausted: no free address in range fd00::1-fd00::3"
    allocator.release(store, "b", "eth0")
    store.is_writable = False
    with pytest.raises(IPAMError) as info:
        allocator.status(cfg, store)
    assert info.value.code == STATUS_UNAVAILABLE == 50 and info.value.msg == "store not writable"


def test_lock_contention_is_try_again_and_changes_nothing(store):
    cfg = config([v4()])
    store.held = True  # another process holds the lock
    for call in (
        lambda: allocator.allocate(cfg, store, "a", "eth0"),
        lambda: allocator.release(store, "a", "eth0"),
        lambda: allocator.gc(store, set()),
        lambda: allocator.find(store, "a", "eth0"),
        lambda: allocator.status(cfg, store),
    ):
        with pytest.raises(IPAMError) as info:
            call()
        assert info.value.code == TRY_AGAIN
    assert store.files == {}


def test_every_operation_takes_the_lock_once_and_gives_it_back(store):
    # MemoryStore raises AssertionError on any call made without the lock.
    cfg = config([v4()])
    allocator.allocate(cfg, store, "a", "eth0")
    allocator.find(store, "a", "eth0")
    allocator.status(cfg, store)
    allocator.release(store, "a", "eth0")
    allocator.gc(store, set())
    assert store.acquisitions == 5 and not store.held


def test_large_nearly_full_range_is_fast(store):
    import time

    cfg = config([v4("10.0.0.0/16")])
    for x in range(2, 65535):  # .0.2 .. .255.254
        store.files[A(f"10.0.{x >> 8}.{x & 255}")] = ("c", "eth0")
    del store.files[A("10.0.0.2")]
    store.last[0] = A("10.0.0.3")
    t0 = time.perf_counter()
    assert add(cfg, store, "late") == ["10.0.0.2"]  # found after walking the whole /16
    assert time.perf_counter() - t0 < 1.0
