"""`nft -f -` for the plugin's hostPort/ipMasq path: posix_spawn and two pipes.

Why not netkit.nft (the project's runner): importing it brings subprocess, logging, threading and
typing (the daemon's in-process libnftables lives there too), ~10 ms of every hostPort ADD and DEL in
the frozen plugin, about as long as nft's own run. The binary is looked up as netkit.nft does.
"""

import os

_CANDIDATES = ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft")


def _child_env() -> dict:
    """Our environment without what the frozen bootloader added for itself: its LD_LIBRARY_PATH points
    at our bundled libraries, which are not nft's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("_PYI_") and k != "LD_LIBRARY_PATH"}
    if "LD_LIBRARY_PATH_ORIG" in env:
        env["LD_LIBRARY_PATH"] = env.pop("LD_LIBRARY_PATH_ORIG")
    return env


def run(text: str) -> str | None:
    """Apply one transaction; None on success, else nft's stderr. OSError when nft cannot be started."""
    binary = next((p for p in _CANDIDATES if os.access(p, os.X_OK)), None)
    stdin_r, stdin_w = os.pipe()  # os.pipe() fds are close-on-exec: the child keeps only its dup2 copies
    err_r, err_w = os.pipe()
    try:
        actions = [(os.POSIX_SPAWN_DUP2, stdin_r, 0), (os.POSIX_SPAWN_DUP2, err_w, 2),
                   # our stdout carries the CNI result: nft's never joins it
                   (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)]
        spawn = os.posix_spawn if binary else os.posix_spawnp
        pid = spawn(binary or "nft", [binary or "nft", "-f", "-"], _child_env(), file_actions=actions)
    except BaseException:
        for fd in (stdin_r, stdin_w, err_r, err_w):
            os.close(fd)
        raise
    os.close(stdin_r)
    os.close(err_w)
    try:
        data = memoryview(text.encode())
        try:
            while data:  # nft reads all of its input before it writes a word: no deadlock on stderr
                data = data[os.write(stdin_w, data):]
        except BrokenPipeError:
            pass  # nft died early; its stderr and status say why
        finally:
            os.close(stdin_w)
        chunks = []
        while chunk := os.read(err_r, 65536):
            chunks.append(chunk)
    finally:
        os.close(err_r)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return b"".join(chunks).decode(errors="replace") or f"nft failed (wait status {status})"
