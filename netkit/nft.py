"""Running `nft -f -`: the one way podwire changes nftables (one atomic transaction per call)."""

import os
import subprocess

_CANDIDATES = ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft")


class NftError(RuntimeError):
    def __init__(self, stderr: str):
        super().__init__(stderr.strip() or "nft failed")
        self.stderr = stderr


def nft_binary() -> str:
    for path in _CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return "nft"  # let PATH decide; a clear error comes from subprocess if it is missing


def apply(text: str, netns_path: str | None = None) -> None:
    """Apply a whole ruleset transaction; raise NftError with nft's own message on failure."""
    cmd = [nft_binary(), "-f", "-"]
    if netns_path:
        cmd = ["nsenter", f"--net={netns_path}", *cmd]
    proc = subprocess.run(cmd, input=text.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise NftError(proc.stderr.decode(errors="replace"))


class NftRunner:
    """The transaction edge as an object: `apply(text)` is `apply(text, netns_path)`. One home for
    every feature's runner (the proxy's adds a listing of its objects, egress its error type);
    `netns_path` aims tests and benchmarks at a namespace, the daemon leaves it None."""

    def __init__(self, netns_path: str | None = None):
        self.netns_path = netns_path

    def apply(self, text: str) -> None:
        apply(text, self.netns_path)
