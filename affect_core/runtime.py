"""Process settings for training and scoring processes (the CLI and the Ray workers call them once at start), and
the priority of the scoring pipeline's background threads (each sets its own as it starts).

:func:`flush_denormals`: denormal floats flushed to zero (see its docstring: the LSTM's backward through stretches
without a face).

:func:`retain_freed_memory`: glibc returns every freed block larger than its mmap threshold (at most 32 MiB) to the
operating system, so the next tensor of that size is mapped afresh and pays a page fault per 4 KiB page on first
touch. Ten stacked seeds of paper-sized sequences allocate and free activations of 20-80 MB in every pass; on the
development machine the page faults alone were a fifth of the stack's training time (a 78 MB buffer: 45 ms to
allocate and fill fresh, 6 ms reused). Keeping freed memory in the process's heap for reuse removes them; the cost is
that the process keeps its peak heap size until it exits, which suits these batch processes.

:func:`limit_malloc_arenas`: glibc gives threads that allocate at the same moment heaps (arenas) of their own, up to
8 per core, and each arena keeps its own high-water mark. The data plane's pipelines read, predict and write on three
threads, so a process's peak grew with the arenas its threads had filled once: scoring 10^5 videos (the scale curve
in docs/benchmarks.md) peaked at 588 MB with glibc's default and 503 MB with two arenas, against 407 MB for 10^3
videos. Python allocates under the GIL and torch's kernels do not allocate per element, so two arenas cost no
measurable time.

:func:`lower_thread_priority`: the scoring pipeline's model thread is its critical path, and its reading and writing
threads, with Arrow's decoding and encoding threads, are runnable beside it for much of a job. With every thread at
one priority the scheduler gave each a fair share, so on a 2-core machine the model waited for a core behind work that
had time to spare. With the reading and writing threads 10 nice levels lower, scoring 10^5 videos of 250 frames (the
scale curve) took 24.0-25.1 s against 26.9-27.0 s, and 10^4 videos 3.23-3.31 s against 3.40-3.50 s (alternating
runs); 19 levels measured the same as 10. The scheduler still gives them every cycle the model leaves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from typing import Any

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Heaps that glibc may give the threads of a process (see limit_malloc_arenas).
MALLOC_ARENAS = 2
# Nice levels by which the scoring pipeline's reading and writing threads yield to its model (see
# lower_thread_priority).
BACKGROUND_NICENESS = 10
_applied = False
_denormals_flushed = False


def _mallopt() -> Any:
    """glibc's mallopt, or None where the C library has none (not glibc, not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def limit_malloc_arenas(count: int = MALLOC_ARENAS) -> bool:
    """Let the process's threads share at most ``count`` malloc arenas (glibc's M_ARENA_MAX), unless the user set
    MALLOC_ARENA_MAX. Call it before the process starts threads. Returns True when applied."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    mallopt = _mallopt()
    return mallopt is not None and mallopt(_M_ARENA_MAX, max(1, int(count))) == 1


def retain_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it (glibc's mallopt: M_MMAP_MAX = 0, M_TRIM_THRESHOLD at
    its maximum). Returns True when applied (now or by an earlier call), False where the C library has no mallopt
    (not glibc, not Linux): then nothing changes."""
    global _applied
    if _applied:
        return True
    mallopt = _mallopt()
    if mallopt is None:
        return False
    _applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _applied


def flush_denormals() -> bool:
    """Flush denormal floats to zero on this thread and on the threads it starts from now on (x86 FTZ/DAZ through
    ``torch.set_flush_denormal``; a new thread inherits its creator's floating-point state, and the threads the
    compiled filter kernels run on set it again: torch's OpenMP workers as they take slices, the fallback pool's
    threads as they start). Returns True when applied, False where the CPU cannot.

    Why: the gradient reaching the front-end is zero on every frame without a face (the filter does not read them),
    and the LSTM's backward, decaying through such a stretch, runs on denormal numbers, each operation on them
    tens of times slower: the front-end's backward with 60% of the frames without a face took 343 ms against 204 ms
    once flushed (docs/benchmarks.md, "Filter speed"). Values below 1.2e-38 (float32) become 0, far below anything
    the model's outputs or their gradients can resolve."""
    global _denormals_flushed
    import torch

    _denormals_flushed = bool(torch.set_flush_denormal(True))
    return _denormals_flushed


def denormals_flushed() -> bool:
    """Whether :func:`flush_denormals` applied in this process (threads started later should do the same)."""
    return _denormals_flushed


def lower_thread_priority(levels: int = BACKGROUND_NICENESS) -> bool:
    """Lower the calling thread's scheduling priority by ``levels`` nice levels (at most to 19), so the process's
    other threads get the cores first when they compete. Linux only (elsewhere niceness belongs to the process):
    returns True when applied. A thread cannot take its priority back without privileges: call it on a thread that
    ends with its work."""
    if not sys.platform.startswith("linux"):
        return False
    thread = threading.get_native_id()
    try:
        niceness = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, niceness + max(0, int(levels))))
    except OSError:
        return False
    return True
