"""netkit.heap on this machine's glibc: both calls reach the C library (not the musl fallback)."""
from netkit import heap


def test_trim_and_the_arena_limit_reach_glibc():
    assert heap.trim() is True
    assert heap.limit_arenas(8) is True  # 8: what glibc allows per core anyway; the test process keeps its shape
