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
    from affect_core.filters.compiled import run_slices
    from affect_core.runtime import flush_denormals

    def tiny():  # a denormal float32 times one: itself, or 0 where denormals are flushed
        return float(np.float32(1e-39) * np.float32(1.0))

    if sys.argv[1] == "flush":
        assert flush_denormals()
    main = tiny()
    torch_value = float(torch.tensor([1e-39]) * 1.0)
    started = []
    thread = threading.Thread(target=lambda: started.append(tiny()))
    thread.start()
    thread.join()
    pool = run_slices(lambda s: tiny(), [slice(0, 1), slice(1, 2)])  # the compiled kernels' thread pool
    print(main, torch_value, started[0], *pool)
    """
)


def test_flush_denormals_reaches_new_threads_and_the_kernels_pool():
    """Denormals stay by default; once flushed, they are zero on the main thread, in torch, in threads started later
    and in the compiled filter kernels' pool threads (where the filters' recursions run)."""

    def values(mode: str) -> list[float]:
        out = subprocess.run([sys.executable, "-c", FLUSH_PROGRAM, mode], capture_output=True, text=True, check=True)
        return [float(v) for v in out.stdout.split()]

    kept, flushed = values("keep"), values("flush")
    assert all(v > 0 for v in kept), kept
    assert flushed == [0.0] * 5, flushed


def test_run_slices_runs_each_slice_once_in_order_on_the_caller_and_the_pool(monkeypatch):
    """More slices than threads: each slice runs once, the results come back in the slices' order, and the calling
    thread takes slices too (it works rather than waits). A slow pool thread leaves its share to the caller."""
    import threading
    import time

    import torch

    from affect_core.filters.compiled import run_slices

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    caller = threading.get_ident()
    calls: list[tuple[int, int]] = []

    def kernel(k: int) -> int:
        if threading.get_ident() != caller:
            time.sleep(0.2)  # a pool thread that is late for a core
        calls.append((k, threading.get_ident()))
        return k * k

    assert run_slices(kernel, range(5)) == [0, 1, 4, 9, 16]
    assert sorted(k for k, _ in calls) == list(range(5))
    by_caller = [k for k, thread in calls if thread == caller]
    assert len(by_caller) >= 4, calls  # the late pool thread took at most one slice

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert run_slices(kernel, range(3)) == [0, 1, 4]  # one thread: all on the caller, in order


def test_run_slices_raises_a_slice_error_only_after_every_slice_ended(monkeypatch):
    """An error in one slice is raised by the caller, but never while another thread still runs a slice (it writes
    into the caller's arrays)."""
    import threading
    import time

    import torch

    from affect_core.filters.compiled import run_slices

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    caller = threading.get_ident()
    ended: list[int] = []

    started: list[int] = []
    pool_started = threading.Event()

    def kernel(k: int) -> int:
        if threading.get_ident() == caller:
            assert pool_started.wait(10)  # the pool thread has taken the other slice
            raise ValueError(f"slice {k} failed")
        started.append(k)
        pool_started.set()
        time.sleep(0.3)
        ended.append(k)
        return k

    with pytest.raises(ValueError, match="failed"):
        run_slices(kernel, range(2))
    assert started and ended == started  # the pool thread's slice had ended before the error reached the caller

    taken: list[int] = []

    def failing_first(k: int) -> int:
        taken.append(k)
        if k == 0:
            raise ValueError("slice 0 failed")
        time.sleep(0.05)
        return k

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    with pytest.raises(ValueError, match="slice 0"):
        run_slices(failing_first, range(4))
    assert taken == [0]  # once a slice failed, no other is started


def test_run_slices_does_not_wait_for_a_pool_busy_elsewhere(monkeypatch):
    """With every pool thread busy with other work, the caller runs all the slices itself and returns: a helper
    that never started is not waited for."""
    import os
    import threading
    import time

    import torch

    from affect_core.filters import compiled
    from affect_core.filters.compiled import run_slices

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    run_slices(lambda k: k, range(2))  # the pool exists
    release = threading.Event()
    busy = [compiled._pool.submit(release.wait, 30) for _ in range(os.cpu_count() or 2)]
    try:
        start = time.perf_counter()
        assert run_slices(lambda k: k + 1, range(3)) == [1, 2, 3]
        assert time.perf_counter() - start < 5
    finally:
        release.set()
        for f in busy:
            f.result()
