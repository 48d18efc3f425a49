"""Video feature extraction on Ray: one task per video (per segment of a long one); frames never leave the worker,
only features come back.

:func:`ray_mapper` returns a mapper for :mod:`affect_core.video.layout` (``read_video_source``, its ingest,
``score_video_root``): each video's job (its URL, not its bytes) goes to a Ray task that decodes, detects, describes
and reduces the video there and returns its per-frame features. The work function (with the fitted transform) is put
in the object store once and shared by every task. At most ``max_in_flight`` tasks run ahead of the consumer, and
results come back in the jobs' order, so the driver holds a bounded number of videos' features. A task asks for
``cpus`` CPUs and, on a cluster with GPUs, ``gpus`` of one (the Gabor bank then runs on it). A video longer than 1.5
SEGMENT_FRAMES is cut into segments of SEGMENT_FRAMES frames, one task each, whose rows equal the whole video's
(``affect_core.video.extract.extract_video``'s ``start``/``stop``); the driver joins them.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from affect_core.errors import AffectError
from tuning.cluster import ensure_ray

T = TypeVar("T")
# A task per 10 minutes of 25 fps video: a long video's segments run in parallel.
SEGMENT_FRAMES = 15_000


def _run(fn: Callable[[Any], Any], job: Any) -> Any:
    import torch

    torch.set_num_threads(1)
    return fn(job)


def ray_mapper(
    *,
    cpus: float = 1.0,
    gpus: float | None = None,
    max_in_flight: int | None = None,
    max_retries: int = 2,
    segment_frames: int | None = SEGMENT_FRAMES,
) -> Callable[[Callable[[Any], T], Iterable[Any]], Iterator[T]]:
    """A mapper running each job as one Ray task (in order of the jobs, bounded look-ahead); videos longer than 1.5
    ``segment_frames`` go to several tasks of ``segment_frames`` frames each (None: one task per video)."""

    def mapper(fn: Callable[[Any], T], jobs: Iterable[Any]) -> Iterator[T]:
        import ray

        info = ensure_ray()
        want_gpus = gpus if gpus is not None else (0.25 if info.has_gpus else 0.0)
        task = ray.remote(_run).options(num_cpus=cpus, num_gpus=want_gpus, max_retries=max_retries)
        shared = ray.put(fn)
        limit = max_in_flight or max(2, int(2 * info.cpus / max(cpus, 0.01)))
        pending: deque[Any] = deque()
        try:
            for job in jobs:
                pending.append(task.remote(shared, job))
                if len(pending) >= limit:
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())
        finally:
            for ref in pending:  # stopped early (an error): the rest is not needed
                ray.cancel(ref)

    mapper.segment_frames = segment_frames  # type: ignore[attr-defined]
    return mapper


def _result(ref: Any) -> Any:
    """The task's result; bad input found by a worker is raised here as the one-line AffectError it was."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, AffectError):
            raise AffectError(str(exc.cause)) from None
        raise


def video_mapper(ray: bool | None = None) -> Callable[[Callable[[Any], T], Iterable[Any]], Iterator[T]]:
    """Ray when asked (or, by default, when ``RAY_ADDRESS`` is set), else the builtin ``map`` (one process)."""
    use_ray = ray if ray is not None else bool(os.environ.get("RAY_ADDRESS"))
    return ray_mapper() if use_ray else map
