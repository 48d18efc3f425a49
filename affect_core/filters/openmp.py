"""A Python function run on torch's own OpenMP threads: GNU OpenMP's ``GOMP_parallel`` called through ctypes.

Why: on CPU, torch runs its operations on an OpenMP team (the calling thread and `torch.get_num_threads() - 1`
workers), and after each parallel operation the workers spin for a while, holding their cores, before they sleep.
The compiled kernels' slices started right after torch's operations on threads of their own were a third runnable
thread on two cores: measured, a pool thread waited 2-3.5 ms for a core and a slice ran up to twice its time while
the spinning worker shared its core (docs/benchmarks.md, "Filter speed"). Run on the same team, the slices go to
threads that are already awake, and no more threads run than torch has.

`runner()` is None where the team cannot be reached (not Linux, torch built without OpenMP, or its ``libgomp`` not
found among the loaded libraries): `compiled.run_slices` then uses its own thread pool.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable

import torch

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
Runner = Callable[[Callable[[], None], int], None]

_runner: Runner | None = None
_looked = False
_lock = threading.Lock()


def _gomp_parallel() -> Callable[..., None] | None:
    """``GOMP_parallel(fn, data, num_threads, flags)`` of the libgomp torch runs on, or None."""
    if not sys.platform.startswith("linux") or not hasattr(os, "RTLD_NOLOAD"):
        return None
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        # Only a library already loaded (RTLD_NOLOAD): "libgomp.so.1" resolves, as torch's own dependency of that
        # name did, to the copy torch runs on; none other is ever loaded here.
        library = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD)
        function = library.GOMP_parallel
    except (OSError, AttributeError):
        return None
    function.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    function.restype = None
    return function


def runner() -> Runner | None:
    """A function ``run(work, threads)`` that calls ``work()`` once on each of ``threads`` threads of the calling
    thread's OpenMP team (the caller among them) and returns when every call has returned, raising the first error
    one of them raised; None where the team cannot be reached."""
    global _runner, _looked
    with _lock:
        if not _looked:
            parallel = _gomp_parallel()
            _runner = None if parallel is None else _make_runner(parallel)
            _looked = True
    return _runner


def _make_runner(parallel: Callable[..., None]) -> Runner:
    def run(work: Callable[[], None], threads: int) -> None:
        from affect_core.runtime import denormals_flushed

        caller = threading.get_ident()
        flush = denormals_flushed()
        errors: list[BaseException] = []

        def body(_: int | None) -> None:  # on each thread of the team, holding the GIL until the kernels drop it
            try:
                if flush and threading.get_ident() != caller:
                    torch.set_flush_denormal(True)  # a worker started before the process asked for it
                work()
            except BaseException as error:  # noqa: BLE001 - a callback cannot raise: kept, raised by the caller
                errors.append(error)

        callback = _CALLBACK(body)  # alive until the call returns
        parallel(callback, None, threads, 0)  # ctypes drops the GIL for the call
        if errors:
            raise errors[0]

    return run
