"""`compiled.run_slices`: the compiled kernels' slices on several threads, on torch's own OpenMP team (`openmp`) or,
where that cannot be reached, on a thread pool; both hand each slice to whichever thread is free."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import torch

from affect_core.filters import compiled, openmp
from affect_core.filters.compiled import run_slices

ON_LINUX_OPENMP = sys.platform.startswith("linux") and "parallel backend: OpenMP" in torch.__config__.parallel_info()


@pytest.fixture(params=["team", "pool"])
def threads(request, monkeypatch) -> str:
    """Each test runs with slices on torch's OpenMP team and on the thread pool; two torch threads."""
    if request.param == "team":
        if not ON_LINUX_OPENMP:
            pytest.skip("torch's OpenMP team: Linux builds of torch with OpenMP")
        assert openmp.runner() is not None  # reached wherever torch runs on GNU OpenMP
    else:
        monkeypatch.setattr(openmp, "runner", lambda: None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    return request.param


def test_each_slice_runs_once_and_the_results_come_in_order(threads):
    """More slices than threads: each slice runs once, the results come back in the slices' order, and the calling
    thread takes slices too (it works rather than waits). A slow second thread leaves its share to the caller."""
    caller = threading.get_ident()
    calls: list[tuple[int, int]] = []

    def kernel(k: int) -> int:
        if threading.get_ident() != caller:
            time.sleep(0.2)  # a thread that is late for a core
        calls.append((k, threading.get_ident()))
        return k * k

    assert run_slices(kernel, range(5)) == [0, 1, 4, 9, 16]
    assert sorted(k for k, _ in calls) == list(range(5))
    by_caller = [k for k, thread in calls if thread == caller]
    assert 4 <= len(by_caller) <= 5, calls  # the late thread took at most one slice

    torch.get_num_threads = lambda: 1  # type: ignore[assignment]  (restored by the fixture's monkeypatch)
    calls.clear()
    assert run_slices(kernel, range(3)) == [0, 1, 4]  # one thread: all on the caller, in order
    assert [k for k, _ in calls] == [0, 1, 2] and {t for _, t in calls} == {caller}


def test_two_threads_work_side_by_side(threads):
    """With two threads and two slices, each takes one and they run at the same time (a barrier both must reach)."""
    barrier = threading.Barrier(2)
    seen: list[int] = []

    def kernel(k: int) -> int:
        seen.append(threading.get_ident())
        barrier.wait(10)  # broken (an error) unless a second thread runs the other slice meanwhile
        return k

    assert run_slices(kernel, range(2)) == [0, 1]
    assert len(set(seen)) == 2


def test_a_slice_error_is_raised_only_after_the_running_slices_ended(threads):
    """An error in one slice is raised by the caller, but never while another thread still runs a slice (it writes
    into the caller's arrays); once a slice failed no thread starts another."""
    caller = threading.get_ident()
    started: list[int] = []
    ended: list[int] = []
    other_started = threading.Event()

    def kernel(k: int) -> int:
        if threading.get_ident() == caller:
            assert other_started.wait(10)  # the other thread has taken a slice
            raise ValueError(f"slice {k} failed")
        started.append(k)
        other_started.set()
        time.sleep(0.3)
        ended.append(k)
        return k

    with pytest.raises(ValueError, match="failed"):
        run_slices(kernel, range(2))
    assert started and ended == started  # the other thread's slice had ended before the error reached the caller

    taken: list[int] = []

    def failing_first(k: int) -> int:
        taken.append(k)
        if k == 0:
            raise ValueError("slice 0 failed")
        time.sleep(0.05)
        return k

    torch.get_num_threads = lambda: 1  # type: ignore[assignment]
    with pytest.raises(ValueError, match="slice 0"):
        run_slices(failing_first, range(4))
    assert taken == [0]  # once a slice failed, no other is started


@pytest.mark.skipif(not ON_LINUX_OPENMP, reason="torch's OpenMP team: Linux builds of torch with OpenMP")
def test_the_team_is_torchs_own_no_thread_is_started():
    """The slices run on the threads torch runs its operations on: after a parallel torch operation made its team,
    the two threads that run the slices were there before (a libgomp of our own would start its own)."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.ones(2**22).sum()  # torch's OpenMP team for this thread, two threads
        before = set(os.listdir("/proc/self/task"))
        barrier = threading.Barrier(2)
        native: list[int] = []

        def kernel(k: int) -> int:
            native.append(threading.get_native_id())
            barrier.wait(10)
            return k

        assert run_slices(kernel, range(2)) == [0, 1]
        assert len(set(native)) == 2
        assert {str(n) for n in native} <= before  # threads that were there already (torch's): none was started
    finally:
        torch.set_num_threads(threads_before)


def test_the_pool_does_not_wait_for_a_thread_busy_elsewhere(monkeypatch):
    """On the thread pool, with every pool thread busy with other work, the caller runs all the slices itself and
    returns: a helper that never started is not waited for."""
    monkeypatch.setattr(openmp, "runner", lambda: None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    run_slices(lambda k: k, range(2))  # the pool exists
    release = threading.Event()
    assert compiled._pool is not None
    busy = [compiled._pool.submit(release.wait, 30) for _ in range(os.cpu_count() or 2)]
    try:
        start = time.perf_counter()
        assert run_slices(lambda k: k + 1, range(3)) == [1, 2, 3]
        assert time.perf_counter() - start < 5
    finally:
        release.set()
        for f in busy:
            f.result()
