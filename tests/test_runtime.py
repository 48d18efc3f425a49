"""Process settings: freed memory kept in the process for reuse (glibc), malloc arenas, background threads' priority."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from affect_core import runtime

PROGRAM = textwrap.dedent(
    """
    import sys
    import numpy as np
    from affect_core.runtime import retain_freed_memory

    def resident_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    if sys.argv[1] == "retain":
        assert retain_freed_memory()
    before = resident_mb()
    block = np.ones(200 * 2**20 // 8)  # 200 MB, touched
    del block
    print(resident_mb() - before)
    """
)


def _kept_after_free(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retain_freed_memory_keeps_a_freed_block_for_reuse():
    """By default a 200 MB block goes back to the system when freed; once applied it stays in the heap."""
    assert _kept_after_free("default") < 50
    assert _kept_after_free("retain") > 150


def test_retain_freed_memory_is_idempotent_and_reports_a_missing_mallopt(monkeypatch):
    monkeypatch.setattr(runtime, "_applied", False)

    def no_libc(*args, **kwargs):
        raise OSError("no C library")

    monkeypatch.setattr(runtime.ctypes, "CDLL", no_libc)
    assert runtime.retain_freed_memory() is False
    monkeypatch.setattr(runtime, "_applied", True)
    assert runtime.retain_freed_memory() is True  # applied earlier: nothing to do


ARENAS = textwrap.dedent(
    """
    import ctypes, sys, threading
    import numpy as np
    from affect_core.runtime import limit_malloc_arenas

    if sys.argv[1] == "limit":
        assert limit_malloc_arenas(2)
    held = []
    barrier = threading.Barrier(6)

    def work():
        barrier.wait()  # every thread alive at once: each asks glibc for a heap
        held.append(np.ones(4096))

    threads = [threading.Thread(target=work) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" block per heap, on stderr
    """
)


def _arenas(mode: str, env: dict[str, str] | None = None) -> int:
    import os

    out = subprocess.run(
        [sys.executable, "-c", ARENAS, mode],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (env or {}),
    )
    return sum(1 for line in out.stderr.splitlines() if line.startswith("Arena "))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_limit_malloc_arenas_makes_threads_share_two_heaps():
    assert _arenas("default") > 2  # glibc's default: a heap per thread (up to 8 per core)
    assert _arenas("limit") <= 2


def test_limit_malloc_arenas_leaves_a_users_setting(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert runtime.limit_malloc_arenas() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness is per thread on Linux")
def test_lower_thread_priority_lowers_only_the_calling_thread():
    import os
    import threading

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = niceness()
    seen = {}

    def background() -> None:
        seen["applied"] = runtime.lower_thread_priority(3)
        seen["niceness"] = niceness()
        seen["capped"] = runtime.lower_thread_priority(100) and niceness()

    thread = threading.Thread(target=background)
    thread.start()
    thread.join()
    assert seen == {"applied": True, "niceness": min(19, before + 3), "capped": 19}
    assert niceness() == before  # the caller's own priority is untouched


FLUSH_PROGRAM = textwrap.dedent(
    """
    import sys
    import threading
    import numpy as np
    import torch
    from affect_core.filters import openmp
    from affect_core.filters.compiled import run_slices
    from affect_core.runtime import flush_denormals

    if sys.argv[2] == "pool":
        openmp.runner = lambda: None  # the thread pool used where torch's OpenMP team cannot be reached
    else:
        assert openmp.runner() is not None

    def tiny():  # a denormal float32 times one: itself, or 0 where denormals are flushed
        return float(np.float32(1e-39) * np.float32(1.0))

    torch.set_num_threads(2)
    torch.ones(2**22).sum()  # torch's OpenMP workers exist before denormals are flushed
    if sys.argv[1] == "flush":
        assert flush_denormals()
    main = tiny()
    torch_value = float(torch.tensor([1e-39]) * 1.0)
    started = []
    thread = threading.Thread(target=lambda: started.append(tiny()))
    thread.start()
    thread.join()
    barrier = threading.Barrier(2)

    def kernel(s):  # each of the two threads takes one slice
        barrier.wait(10)
        return tiny()

    on_threads = run_slices(kernel, [slice(0, 1), slice(1, 2)])  # where the compiled kernels run
    print(main, torch_value, started[0], *on_threads)
    """
)


@pytest.mark.parametrize("threads", ["team", "pool"])
def test_flush_denormals_reaches_new_threads_and_the_kernels_threads(threads):
    """Denormals stay by default; once flushed, they are zero on the main thread, in torch, in threads started later
    and on the threads the compiled filter kernels run on (torch's OpenMP team, or the thread pool)."""

    def values(mode: str) -> list[float]:
        out = subprocess.run(
            [sys.executable, "-c", FLUSH_PROGRAM, mode, threads], capture_output=True, text=True, check=True
        )
        return [float(v) for v in out.stdout.split()]

    kept, flushed = values("keep"), values("flush")
    assert all(v > 0 for v in kept), kept
    assert flushed == [0.0] * 5, flushed
