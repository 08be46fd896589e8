"""Running `nft -f -`: the one way podwire changes nftables (one atomic transaction per call)."""

import logging
import threading

from netkit import heap, nftexec


class NftError(RuntimeError):
    def __init__(self, stderr: str):
        super().__init__(stderr.strip() or "nft failed")
        self.stderr = stderr


def nft_binary() -> str:
    return nftexec.nft_binary() or "nft"  # else PATH decides; a clear error comes if it is missing


def apply(text: str, netns_path: str | None = None) -> None:
    """Apply a whole ruleset transaction (`nft -f -`, netkit.nftexec); raise NftError with nft's own
    message on failure."""
    err = nftexec.run(text, netns_path)
    if err is not None:
        raise NftError(err)


TRIM_ABOVE = 1 << 20  # bytes of nft text after which the C heap is handed back (see Library.apply)


class Library:
    """libnftables (what `nft` itself is a front end of), called in-process: a transaction without
    a process start, ~5 ms less per sync, which is most of a one-element change's cost. The
    buffer is one batch, atomic as `nft -f` is. A context is not thread-safe: one lock. The
    library is part of the nftables package the daemon's image and this machine have. (1.0.6's
    error text for a refused batch may point at another line of it than `nft -f` would.)"""

    _lock = threading.Lock()
    _instance: "Library | None" = None
    _failed = False

    def __init__(self, name: str = "libnftables.so.1"):
        import ctypes

        lib = ctypes.CDLL(name)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for fn in (lib.nft_ctx_buffer_output, lib.nft_ctx_buffer_error):
            fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        ctx = lib.nft_ctx_new(0)
        if not ctx or lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
            raise OSError("libnftables: no context")
        self._lib, self._ctx = lib, ctx

    @classmethod
    def get(cls) -> "Library | None":
        """The process's one instance; None when the library cannot be loaded (then `nft -f`)."""
        with cls._lock:
            if cls._instance is None and not cls._failed:
                try:
                    cls._instance = cls()
                except OSError as e:
                    cls._failed = True
                    logging.getLogger(__name__).warning("libnftables not usable (%s): transactions run `nft -f`", e)
            return cls._instance

    def apply(self, text: str) -> None:
        if "\0" in text:
            raise NftError("refusing text with a NUL byte")
        with self._lock:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""  # read (and reset) every time
            if len(text) > TRIM_ABOVE:
                # the parse of a big batch (a full sync) leaves ~1.5 KB per element free in the
                # C heap, which glibc keeps (measured: 205 MB after 120k elements, 26 MB trimmed)
                heap.trim()
        if rc != 0:
            raise NftError(err.decode(errors="replace"))


class NftRunner:
    """The transaction edge as an object: `apply(text)` is `apply(text, netns_path)`. One home for
    every feature's runner (the proxy's adds a listing of its objects, egress its error type);
    `netns_path` aims tests and benchmarks at a namespace (through `nft -f`), the daemon leaves it
    None and applies in-process through libnftables when the library loads."""

    def __init__(self, netns_path: str | None = None, library: bool = True):
        self.netns_path = netns_path
        self.library = Library.get() if library and netns_path is None else None

    def apply(self, text: str) -> None:
        if self.library is not None:
            self.library.apply(text)
        else:
            apply(text, self.netns_path)
