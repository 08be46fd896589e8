import gc  # builtin
import time  # a builtin the bootloader has loaded already

# No cyclic GC in a process that lives for one call: the collections that our imports' allocations
# would trigger only walk objects the process exit frees anyway (~1-2 ms per call).
gc.disable()
ENTERED = time.monotonic_ns()  # before our imports: where bench/cni_startup.py's "imports" begin

from cni_plugin.main import main  # noqa: E402

main(ENTERED)
