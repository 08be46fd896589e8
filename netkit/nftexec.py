"""`nft -f -` as a process: posix_spawn and two pipes, nothing imported but `os`.

The one place podwire starts nft for a transaction: the CNI plugin's hostPort/ipMasq path imports
this module alone (netkit.nft's subprocess, logging and threading cost ~10 ms of every hostPort ADD
in the frozen plugin, about as long as nft's own run); netkit.nft.apply (tests, benchmarks, the
daemon's fallback when libnftables cannot be loaded) runs through it too.
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


def nft_binary() -> str | None:
    """nft's path among the usual places (a runtime may give plugins a PATH without sbin)."""
    return next((p for p in _CANDIDATES if os.access(p, os.X_OK)), None)


def run(text: str, netns_path: str | None = None) -> str | None:
    """Apply one transaction; None on success, else nft's stderr. OSError when nft cannot be started.
    `netns_path`: in that network namespace (through nsenter; tests and benchmarks)."""
    binary = nft_binary()
    stdin_r, stdin_w = os.pipe()  # os.pipe() fds are close-on-exec: the child keeps only its dup2 copies
    err_r, err_w = os.pipe()
    try:
        actions = [(os.POSIX_SPAWN_DUP2, stdin_r, 0), (os.POSIX_SPAWN_DUP2, err_w, 2),
                   # our stdout carries the CNI result: nft's never joins it
                   (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)]
        argv = [binary or "nft", "-f", "-"]
        if netns_path:
            argv = ["nsenter", f"--net={netns_path}", *argv]
        spawn = os.posix_spawn if binary and not netns_path else os.posix_spawnp
        pid = spawn(argv[0], argv, _child_env(), file_actions=actions)
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
