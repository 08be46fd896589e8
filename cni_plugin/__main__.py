import time  # a builtin the bootloader has loaded already

ENTERED = time.monotonic_ns()  # before our imports: where bench/cni_startup.py's "imports" begin

from cni_plugin.main import main  # noqa: E402

main(ENTERED)
