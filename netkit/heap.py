"""Hand the C heap's free memory back to the kernel (glibc's malloc_trim).

glibc keeps what a large burst freed (a LIST page's JSON, a full sync's nft batch) inside its
heaps, so a daemon's RSS stays at its peak; trimming after such bursts returns it."""
from __future__ import annotations

_libc = None
_loaded = False
M_ARENA_MAX = -8  # mallopt's parameter number (glibc malloc.h)


def _glibc():
    global _libc, _loaded
    if not _loaded:
        _loaded = True
        import ctypes  # here: netkit.nft imports this module, and the CNI plugin netkit.nft

        try:
            lib = ctypes.CDLL("libc.so.6")
            if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt"):
                _libc = lib
        except OSError:
            pass
    return _libc


def trim() -> bool:
    """malloc_trim(0); False when this libc has none (musl, say)."""
    lib = _glibc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True


def limit_arenas(n: int = 2) -> bool:
    """At most `n` malloc arenas (glibc makes up to 8 per core, one per thread that allocates: the
    daemon's informer, sync and server threads each keep their own free memory). What the
    MALLOC_ARENA_MAX variable does, set from inside before the threads start."""
    lib = _glibc()
    return lib is not None and lib.mallopt(M_ARENA_MAX, n) == 1
