"""``affect ingest``: :func:`ingest`, the one entrance for every input layout, and what it falls back to when a
source must be read whole.

Every layout goes through it, and every one is read one video at a time
(:class:`~affect_core.data.dataset.by_video.VideoIngest`): a layout with a file per video with an
:class:`~affect_core.data.dataset.by_video.InProcessReader`; a source holding every video in one table file
(features.parquet) with a :class:`~affect_core.data.dataset.single_file.TableFileReader`, in chunks of rows; a layout
provided above data (the video layout) with its own plan (:mod:`affect_core.data.layouts.provided`: its reader and the
files stored with the version, inside the same commit). A source whose videos disagree or hold bad input is then read
whole (:func:`affect_core.data.readers.read_source`), which names the problem."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from affect_core import storage
from affect_core.data import delta
from affect_core.data import source_videos as sv
from affect_core.data.dataset.by_video import InProcessReader, SourcePlan, VideoIngest, run_plan
from affect_core.data.dataset.result import IngestResult
from affect_core.data.dataset.single_file import single_table, table_file_plan
from affect_core.data.dataset.write import write_dataset
from affect_core.data.layouts.provided import LayoutOptions, provided
from affect_core.data.readers import ReadOptions, read_source
from affect_core.errors import AffectError


def ingest(
    source_root: str,
    dataset_url: str,
    *,
    layout: str,
    feature_set: str | Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    source_storage_options: dict[str, Any] | None = None,
    progress: bool = True,
    fps: float | None = None,
    target_file_bytes: int = delta.DEFAULT_TARGET_FILE_BYTES,
    row_group_rows: int = delta.ROW_GROUP_ROWS,
    min_face_confidence: float = ReadOptions.min_face_confidence,
    mapper: Callable[..., Any] | None = None,
    device: str | None = None,
    video_config: Any = None,
) -> IngestResult:
    """Read and validate ``source_root`` (a layout of :data:`affect_core.data.readers.LAYOUTS`), then write it to
    ``dataset_url`` as a new dataset version, or do nothing if the latest version holds the same videos.

    The video layout (provided by ``affect_core.video.layout``, which must have been imported) fits its feature
    transform, reads the videos one at a time with ``mapper`` (the builtin ``map`` by default; a Ray mapper runs each
    video in a Ray task) on ``device`` with ``video_config`` (a ``VideoConfig``; default settings when None), and
    stores the fitted transform with the version, written before the commit that publishes it.

    storage_options apply to the dataset URL (and to the source when ``source_storage_options`` is None).
    Raises AffectError on bad input (nothing is written) or when the destination cannot take the dataset."""
    started = time.perf_counter()
    source_options = source_storage_options if source_storage_options is not None else storage_options
    request = sv.SourceRequest(source_root, layout, feature_set, source_options, fps, min_face_confidence)
    dataset = storage.resolve(dataset_url, storage_options)  # once: every step below is handed the Location
    sizes = {"target_file_bytes": target_file_bytes, "row_group_rows": row_group_rows}
    layout_reader = provided(layout)
    if layout_reader is not None:
        options = LayoutOptions(mapper=mapper, device=device, config=video_config, progress=progress)
        plan = layout_reader.plan(request, options)
        return run_plan(request, dataset, plan, started, **sizes)
    stamps: dict[str, str] = {}
    make_plan: Callable[[], SourcePlan] | None = None
    if sv.splittable(request.location, layout):
        make_plan = functools.partial(SourcePlan.listed, request, InProcessReader(request))
    elif single_table(request.location, layout):
        make_plan = functools.partial(table_file_plan, request)
    if make_plan is not None:
        job = _read_by_video(request, dataset, started, make_plan)
        try:
            if job is not None and job.complete:
                return job.write(**sizes)
        finally:
            if job is not None and hasattr(job.plan.reader, "close"):
                job.plan.reader.close()
        stamps = job.stamps if job is not None else {}
        del job  # what it holds is not needed by the whole-corpus read
    return _ingest_whole(request, dataset, stamps, started, **sizes)


def _read_by_video(
    request: sv.SourceRequest,
    dataset: storage.Location,
    started: float,
    make_plan: Callable[[], SourcePlan],
) -> VideoIngest | None:
    """An ingest of ``make_plan()`` video by video, read and checked (``complete``); not complete, or None when the
    source could not even be listed, where it met bad input (videos that disagree, a bad file, rows not grouped by
    video): the whole-corpus reader then names the problem as it always has, its checks across the whole corpus
    first."""
    try:
        job = VideoIngest.start(request, dataset, make_plan(), started=started)
    except AffectError:
        return None
    try:
        job.read()
    except AffectError:
        pass
    return job


def _ingest_whole(
    request: sv.SourceRequest,
    dataset: storage.Location,
    stamps: dict[str, str],
    started: float,
    *,
    target_file_bytes: int,
    row_group_rows: int,
) -> IngestResult:
    """Ingest the corpus read whole into memory (:func:`affect_core.data.readers.read_source`), recording ``stamps``
    as the videos' source stamps."""
    corpus = read_source(
        request.location,
        request.layout,
        feature_set=request.feature_set,
        fps=request.fps,
        min_face_confidence=request.min_face_confidence,
    )
    written = write_dataset(
        corpus,
        dataset,
        layout=request.layout,
        source=request.root,
        target_file_bytes=target_file_bytes,
        row_group_rows=row_group_rows,
        sources=stamps,
    )
    return IngestResult.of(
        dataset.url,
        written,
        rows=sum(v.num_frames for v in corpus.videos),
        videos=len(corpus.videos),
        source_bytes=int(corpus.metadata.get("source_bytes", "0")),
        started=started,
        notes=json.loads(corpus.metadata.get("notes", "[]")),
    )
