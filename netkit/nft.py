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
