"""Batch scoring on Ray Data: the dataset table's videos, scored whole by a pool of actors, written to the predictions
table by the driver.

The dataset version is resolved once and pinned. The videos to score become a Ray dataset of video ids in the table's
order (videos that share a file and row group are neighbours), and ``map_batches`` hands each actor call consecutive
whole videos (a row is a video, never a part of one). An actor loads the model once and opens the pinned version once
(:class:`affect_core.data.dataset.DatasetReader`); the pool is an ``ActorPoolStrategy`` with a minimum and maximum
size, and ``num_gpus`` may be a fraction. Each call reads its videos' row groups and predicts them with the
single-process scorer's code (:func:`affect_core.scoring.score_stream`), returning their prediction rows. The driver
streams those rows into the same :class:`affect_core.scoring.PredictionWriter` as the single-process scorer (files of
many videos, commits as files fill), so both write the same rows and a re-run resumes from the videos committed by the
same model on the same version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from affect_core.scoring import ScoreResult
from tuning.cluster import ensure_ray, shareable_storage_options

logger = logging.getLogger(__name__)

# The most videos one actor call scores (in model batches of BATCH_VIDEOS): each call costs Ray Data a task round
# trip, so short videos go many to a call.
VIDEOS_PER_CALL = 256


class VideoScorer:
    """Ray Data actor: loads the bundle once, then scores the videos of each batch of ids it is given."""

    def __init__(
        self,
        *,
        data_url: str,
        model_url: str,
        feature_set: str | None,
        version: str | None,
        storage_options: dict[str, Any] | None,
        threads: int,
        use_gpu: bool,
    ) -> None:
        import torch

        from affect_core.artifact import load_bundle
        from affect_core.runtime import limit_malloc_arenas, retain_freed_memory

        limit_malloc_arenas()
        retain_freed_memory()
        torch.set_num_threads(max(1, threads))
        from affect_core.data.dataset import DatasetReader

        self.version = version
        self.storage_options = storage_options or None
        # The pinned version's log and index are read once per actor, not once per call.
        self.reader = DatasetReader(
            data_url, version=version, feature_set=feature_set, storage_options=self.storage_options
        )
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.bundle = load_bundle(model_url, self.storage_options, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:

        from affect_core.scoring import PREDICTION_SCHEMA, prediction_rows, score_stream

        videos = self.reader.videos(video_ids=[str(v) for v in batch["video_id"]])
        tables: list[pa.Table] = []
        model_id, version = self.bundle.model_id, self.version or ""

        class Collect:
            def add_batch(self, videos: Any, tracks: Any) -> None:
                tables.append(prediction_rows(videos, tracks, model_id, version))

        score_stream(self.bundle, videos, Collect())
        return pa.concat_tables(tables) if tables else PREDICTION_SCHEMA.empty_table()


def score_dataset(
    data_url: str,
    model_url: str,
    out_url: str,
    *,
    splits: Sequence[str] | None = None,
    actors: int = 4,
    min_actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    videos_per_call: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    version: str | int | None = None,
    replace: bool = True,
    target_file_bytes: int | None = None,
) -> ScoreResult:
    """Score every video of ``data_url`` (or of ``splits``) into the predictions table at ``out_url`` with a Ray
    Data actor pool.

    actors: the pool's largest size; min_actors its smallest (the pool grows with the queued work, and an autoscaler
    grows the cluster for it). gpus_per_actor: a GPU fraction per actor (0: CPU only). videos_per_call: the videos an
    actor scores together (predicted in batches of BATCH_VIDEOS); None: about four calls per actor, at most
    VIDEOS_PER_CALL videos each. version / replace: as :func:`affect_core.scoring.score_dataset`. Raises AffectError
    for an incompatible model or missing data.
    """
    import ray.data

    from affect_core.artifact import load_bundle
    from affect_core.data import delta
    from affect_core.scoring import (
        PredictionTarget,
        PredictionWriter,
        bundle_features,
        check_compatible,
        check_video_ids,
        plan_scoring,
        scoring_plan,
    )
    from affect_core.storage import resolve

    started = time.perf_counter()
    options = dict(storage_options or {}) or None
    info, _, _, wanted = scoring_plan(data_url, options, splits, version, None)
    bundle = load_bundle(model_url, options)
    feature_set, names = bundle_features(bundle, info)
    out = resolve(out_url, options)
    check_compatible(bundle, names, out.display())
    check_video_ids(wanted, out)
    target = PredictionTarget(bundle.model_id, info.url, info.version or "")
    snap, done, replacing = plan_scoring(out, target, replace=replace)
    writer = PredictionWriter(
        out,
        target,
        snapshot=snap,
        replace=replacing,
        target_file_bytes=target_file_bytes or delta.DEFAULT_TARGET_FILE_BYTES,
    )
    url, _ = delta.parse_versioned_url(data_url)
    snapshot = delta.snapshot(resolve(url, options), int(info.version))
    todo = [e.video_id for e in snapshot.entries(splits=splits) if e.video_id not in done]
    del snapshot
    frames = 0
    first, first_frames = 0.0, 0
    try:
        if todo:
            ensure_ray(storage_options=storage_options)
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = progress
            # the driver writes the actors' rows in the table's order (table files are sorted by split and id)
            context.execution_options.preserve_order = True
            gpus = gpus_per_actor
            size = max(1, min(actors, len(todo)))
            per_call = videos_per_call or max(1, min(VIDEOS_PER_CALL, -(-len(todo) // (4 * size))))
            # blocks made here, in the table's order: no task of Ray Data's needs a CPU the actors hold
            column = pa.table({"video_id": pa.array(todo, pa.string())})
            step = -(-len(todo) // min(len(todo), 4 * size))
            ids = ray.data.from_arrow([column.slice(i, step) for i in range(0, len(todo), step)])
            scored = ids.map_batches(
                VideoScorer,
                batch_size=per_call,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=max(1, min(min_actors, size)), max_size=size),
                fn_constructor_kwargs={
                    "data_url": url,
                    "model_url": model_url,
                    "feature_set": feature_set,
                    "version": info.version,
                    "storage_options": shareable_storage_options(storage_options),
                    "threads": max(1, int(cpus_per_actor)),
                    "use_gpu": gpus > 0,
                },
                num_cpus=cpus_per_actor,
                num_gpus=gpus or None,
            )
            for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                if not frames:  # the first results: the pool's actors are up
                    first, first_frames = time.perf_counter() - started, batch.num_rows
                frames += batch.num_rows
                writer.add_rows(batch)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - started
    logger.info("scored %d video(s) on Ray Data in %.1f s (first results after %.1f s)", len(todo), seconds, first)
    return ScoreResult(out.url, len(wanted), frames, len(wanted) - len(todo), seconds, first, first_frames)
