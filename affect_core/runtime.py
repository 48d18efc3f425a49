"""Process settings for training and scoring processes (the CLI and the Ray workers call them once at start).

:func:`retain_freed_memory`: glibc returns every freed block larger than its mmap threshold (at most 32 MiB) to the
operating system, so the next tensor of that size is mapped afresh and pays a page fault per 4 KiB page on first
touch. Ten stacked seeds of paper-sized sequences allocate and free activations of 20-80 MB in every pass; on the
development machine the page faults alone were a fifth of the stack's training time (a 78 MB buffer: 45 ms to
allocate and fill fresh, 6 ms reused). Keeping freed memory in the process's heap for reuse removes them; the cost is
that the process keeps its peak heap size until it exits, which suits these batch processes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied = False


def retain_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it (glibc's mallopt: M_MMAP_MAX = 0, M_TRIM_THRESHOLD at
    its maximum). Returns True when applied (now or by an earlier call), False where the C library has no mallopt
    (not glibc, not Linux): then nothing changes."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _applied
