"""Peak memory growth of a block of CPU code, from the kernel's own high-water mark (Linux).

glibc keeps freed memory in its heap, where the resident-set peak cannot see reuse; with a low mmap threshold every
tensor-sized allocation is mapped and unmapped, so VmHWM follows live memory. `ensure_exact_peaks()` re-executes the
script with that setting; `/proc/self/clear_refs` resets the high-water mark before each measurement.
"""

import contextlib
import os
import sys


def ensure_exact_peaks():
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})


def _status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


@contextlib.contextmanager
def peak_growth():
    """Yields a dict whose "mib" is, on exit, the peak resident growth (MiB) over the block."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current resident size
    base, result = _status_kib("VmRSS"), {}
    yield result
    result["mib"] = (_status_kib("VmHWM") - base) / 1024
