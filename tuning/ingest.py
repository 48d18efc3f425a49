"""Parallel ingest on Ray: :func:`affect_core.data.dataset.ingest_by_video` with Ray tasks reading the videos.

The driver is affect_core's (the source listed once, unchanged videos recognised by their stamps and not read, the
cross-video checks as summaries arrive, only changed videos written, in one commit); here is only the reader
(:class:`RayReader`): each video to read is a Ray task (:func:`affect_core.data.dataset.read_summary`: one video's
files, so a task's memory does not grow with the corpus), which returns a small summary (content hash, feature names
and sets, fps) and, separately, the video, left in Ray's object store until the driver writes it. A source that holds
every video in one file (``features.parquet``) is ingested by the single-process
:func:`affect_core.data.dataset.ingest`.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from affect_core.data.dataset import IngestResult
from affect_core.data.records import Video
from affect_core.data.source_videos import SourceRequest, SourceVideoFiles, VideoSummary

# Reads in flight per CPU of the cluster: enough to keep every CPU busy while the driver collects results.
IN_FLIGHT_PER_CPU = 2


class RayReader:
    """Reads videos with Ray tasks, a window of them in flight (``IN_FLIGHT_PER_CPU`` per CPU of the cluster), for
    :func:`affect_core.data.dataset.ingest_by_video`. Ray starts (or is joined) at the first video to read, so a
    no-op re-ingest does not start it."""

    def __init__(
        self,
        request: SourceRequest,
        *,
        cpus_per_task: float = 1.0,
        cluster_storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.request = request
        self.cpus_per_task = cpus_per_task
        self.cluster_storage_options = cluster_storage_options
        self._videos: dict[str, Any] = {}  # video id -> object ref of the video a task read
        self._hashes: dict[str, str] = {}
        self._task: Any = None
        self._shared = request
        self._window = 1

    def _start(self) -> None:
        import ray

        from affect_core.data.dataset import read_summary
        from tuning.cluster import ensure_ray, shareable_storage_options

        cluster = ensure_ray(storage_options=self.cluster_storage_options)
        self._window = max(1, int(cluster.cpus * IN_FLIGHT_PER_CPU))
        self._task = ray.remote(num_returns=2, num_cpus=self.cpus_per_task)(read_summary)
        # Credentials and endpoint reach the workers through their environment, never through task arguments.
        shared = shareable_storage_options(self.request.storage_options)
        self._shared = dataclasses.replace(self.request, storage_options=shared)

    def read(self, items: Sequence[SourceVideoFiles]) -> Iterator[VideoSummary]:
        """Summaries of ``items`` as their tasks finish; AffectError for a video with bad input."""
        import ray

        if self._task is None:
            self._start()
        queue = deque(items)
        pending: dict[Any, str] = {}
        while queue or pending:
            while queue and len(pending) < self._window:
                item = queue.popleft()
                summary_ref, video_ref = self._task.remote(self._shared, item)
                pending[summary_ref] = item.video_id
                self._videos[item.video_id] = video_ref
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                summary = _get(ref)
                self._hashes[summary.video_id] = summary.hash
                yield summary

    def load(self, item: SourceVideoFiles) -> Video:
        """The video a task read, pulled from the object store (and let go of there); read again here if asked for
        twice (a commit retried after another writer's)."""
        from affect_core.data.dataset import reread_video

        ref = self._videos.pop(item.video_id, None)
        if ref is None:
            return reread_video(self.request, item, self._hashes.get(item.video_id))
        return _get(ref)


def _get(ref: Any) -> Any:
    """``ray.get``, with a task's AffectError (bad input) raised as itself."""
    import ray

    from affect_core.errors import AffectError

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, AffectError):
            raise AffectError(str(cause)) from None
        raise


def ingest(
    source_root: str,
    dataset_url: str,
    *,
    layout: str,
    feature_set: str | Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    source_storage_options: Mapping[str, Any] | None = None,
    fps: float | None = None,
    cpus_per_task: float = 1.0,
    target_file_bytes: int | None = None,
    row_group_rows: int | None = None,
    min_face_confidence: float = 0.5,
) -> IngestResult:
    """Ingest ``source_root`` into ``dataset_url`` with Ray tasks reading the videos (see the module docstring).
    Same arguments and result as :func:`affect_core.data.dataset.ingest`; raises AffectError on bad input (nothing
    is written)."""
    from affect_core.data import dataset as ds
    from affect_core.data import delta
    from affect_core.data.source_videos import splittable

    options = dict(storage_options or {}) or None
    source_options = dict(source_storage_options) if source_storage_options is not None else options
    sizes = {
        "target_file_bytes": target_file_bytes or delta.DEFAULT_TARGET_FILE_BYTES,
        "row_group_rows": row_group_rows or delta.ROW_GROUP_ROWS,
    }
    if not splittable(source_root, layout, source_options):
        return ds.ingest(
            source_root,
            dataset_url,
            layout=layout,
            feature_set=feature_set,
            storage_options=options,
            source_storage_options=source_options,
            progress=False,
            fps=fps,
            min_face_confidence=min_face_confidence,
            **sizes,
        )
    request = SourceRequest(source_root, layout, feature_set, source_options, fps, min_face_confidence)
    reader = RayReader(request, cpus_per_task=cpus_per_task, cluster_storage_options=source_options or options)
    return ds.ingest_by_video(request, dataset_url, reader=reader, storage_options=options, **sizes)
