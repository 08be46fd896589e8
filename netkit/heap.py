"""Hand the C heap's free memory back to the kernel (glibc's malloc_trim).

glibc keeps what a large burst freed (a LIST page's JSON, a full sync's nft batch) inside its
heaps, so a daemon's RSS stays at its peak; trimming after such bursts returns it."""
from __future__ import annotations

from typing import Callable

_trim: Callable[[int], int] | None = None
_loaded = False


def trim() -> bool:
    """malloc_trim(0); False when this libc has none (musl, say)."""
    global _trim, _loaded
    if not _loaded:
        _loaded = True
        import ctypes  # here: netkit.nft imports this module, and the CNI plugin netkit.nft

        try:
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = None
    if _trim is None:
        return False
    _trim(0)
    return True
