"""Batch scoring on Ray Data: the dataset table's videos, scored whole by a pool of actors that write the predictions
table's files; the driver only commits them.

The dataset version is resolved once and pinned. The videos to score become a Ray dataset of video ids in the table's
order, one block per actor call: consecutive whole videos (a row is a video, never a part of one) of about one
target file of predictions, at most a quarter of an actor's share of the job so that the pool balances its load. An
actor loads the model once and opens the pinned version once (:class:`affect_core.data.dataset.DatasetReader`); the
pool is an ``ActorPoolStrategy`` with a minimum and maximum size, and ``num_gpus`` may be a fraction. Each call reads
its videos' row groups, predicts them with the single-process scorer's code (:func:`affect_core.scoring.score_stream`)
and writes their rows into table files of its own (:func:`affect_core.scoring.write_predicted`), returning only the
files' descriptions. The driver commits each call's files as they come (:meth:`PredictionWriter.add_files`): it never
holds a prediction row, both scorers write the same rows, and a re-run resumes from the videos committed by the same
model on the same version. A call that fails deletes its files; files of an actor that died uncommitted are left to
``affect vacuum``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from affect_core.errors import AffectError
from affect_core.scoring import ScoreResult
from tuning.cluster import ensure_ray, shareable_storage_options

logger = logging.getLogger(__name__)

# Bytes a frame's predictions take in a table file (zstd; measured 7 on generated videos), to size an actor call at
# about one target file.
PREDICTION_BYTES_PER_FRAME = 8
# Calls per actor at least (each call's files are committed when it returns: more calls, finer resumption).
CALLS_PER_ACTOR = 4


class VideoScorer:
    """Ray Data actor: loads the bundle once, then scores the videos of each block of ids it is given into table
    files of its own, returning their descriptions (:data:`affect_core.data.delta.FILES_SCHEMA`) and when the call
    began (``started``, seconds since the epoch)."""

    def __init__(
        self,
        *,
        data_url: str,
        model_url: str,
        out_url: str,
        feature_set: str | None,
        version: str | None,
        storage_options: dict[str, Any] | None,
        target_file_bytes: int,
        threads: int,
        use_gpu: bool,
        batch_videos: int | None = None,
        device: str | None = "auto",
    ) -> None:
        import torch

        from affect_core.artifact import load_bundle
        from affect_core.device import resolve_device
        from affect_core.runtime import flush_denormals, limit_malloc_arenas, retain_freed_memory
        from affect_core.storage import resolve

        limit_malloc_arenas()
        retain_freed_memory()
        flush_denormals()
        torch.set_num_threads(max(1, threads))
        # Ray shows an actor only the GPU it was given (CUDA_VISIBLE_DEVICES): "cuda" is that one.
        where = resolve_device(device, assigned="cuda" if use_gpu else None)
        from affect_core.data.dataset import DatasetReader

        self.version = version
        self.storage_options = storage_options or None
        self.out = resolve(out_url, self.storage_options)
        self.target_file_bytes = target_file_bytes
        self.batch_videos = batch_videos
        # The pinned version's log and index are read once per actor, not once per call.
        self.reader = DatasetReader(
            data_url, version=version, feature_set=feature_set, storage_options=self.storage_options
        )
        self.bundle = load_bundle(model_url, self.storage_options, device=str(where))

    def __call__(self, block: pa.Table) -> pa.Table:
        from affect_core.data import delta
        from affect_core.scoring import PREDICTION_SCHEMA, score_stream, write_predicted

        started = time.time()
        videos = self.reader.videos(video_ids=block.column("video_id").to_pylist())
        files = delta.FileWriter(self.out, PREDICTION_SCHEMA, target_file_bytes=self.target_file_bytes)
        model_id, version = self.bundle.model_id, self.version or ""

        class Files:
            def add_batch(self, videos: Any, tracks: Any) -> None:
                write_predicted(files, videos, tracks, model_id, version)

        try:
            score_stream(self.bundle, videos, Files(), batch_videos=self.batch_videos)
            files.close()
        except BaseException:
            files.abort()
            raise
        described = delta.files_table(files.written)
        return described.append_column("started", pa.array([started] * described.num_rows, pa.float64()))


def call_blocks(entries: Iterator[Any], done: Any, call_frames: int) -> Iterator[pa.Table]:
    """Blocks of video ids (one column, ``video_id``) of about ``call_frames`` frames each, in the entries' order,
    leaving out the ids in ``done``."""
    ids: list[str] = []
    frames = 0
    for entry in entries:
        if entry.video_id in done:
            continue
        ids.append(entry.video_id)
        frames += entry.frames
        if frames >= call_frames:
            yield pa.table({"video_id": pa.array(ids, pa.string())})
            ids, frames = [], 0
    if ids:
        yield pa.table({"video_id": pa.array(ids, pa.string())})


def score_dataset(
    data_url: Any,
    model_url: Any,
    out_url: Any,
    *,
    splits: Sequence[str] | None = None,
    actors: int = 4,
    min_actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    call_frames: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    version: str | int | None = None,
    replace: bool = True,
    target_file_bytes: int | None = None,
    batch_videos: int | None = None,
    device: str | None = "auto",
) -> ScoreResult:
    """Score every video of ``data_url`` (or of ``splits``) into the predictions table at ``out_url`` with a Ray
    Data actor pool.

    actors: the pool's largest size; min_actors its smallest (the pool grows with the queued work, and an autoscaler
    grows the cluster for it). gpus_per_actor: a GPU fraction per actor (0: CPU only). call_frames: the frames an
    actor scores in one call (in model batches: :func:`affect_core.scoring.video_batches`) and writes to files of its
    own; None: about one target file's worth, at most 1/CALLS_PER_ACTOR of an actor's share. version / replace: as
    :func:`affect_core.scoring.score_dataset`. device: where each actor's model runs, by the one device rule
    (:func:`affect_core.device.resolve_device`; "auto": the actor's GPU when it was given one). Raises AffectError for
    an incompatible model or missing data, or a GPU asked for without GPUs for the actors.

    ``data_url``, ``model_url``, ``out_url``: URLs (resolved here, once, with ``storage_options``) or Locations the
    caller resolved; either way the actors get their URLs and ``storage_options``' shareable part, and resolve them
    on their side.
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

    # The driver's side of the Ray boundary: each URL resolved once here; the actors get URLs and shareable options.
    if str(device).startswith("cuda") and not gpus_per_actor:
        raise AffectError("--device cuda on Ray needs GPUs for the scoring actors: give --gpus-per-actor")
    started, wall_started = time.perf_counter(), time.time()
    options = dict(storage_options or {}) or None
    data = delta.resolve_versioned(data_url, options)
    out = resolve(out_url, options)
    model = resolve(model_url, options)
    info, _, _, wanted = scoring_plan(data, splits, version, None)
    bundle = load_bundle(model)
    feature_set, names = bundle_features(bundle, info)
    check_compatible(bundle, names, out.display())
    check_video_ids(wanted, out)
    target = PredictionTarget(bundle.model_id, info.url, info.version or "")
    snap, done, replacing = plan_scoring(out, target, replace=replace)
    file_bytes = target_file_bytes or delta.DEFAULT_TARGET_FILE_BYTES
    writer = PredictionWriter(out, target, snapshot=snap, replace=replacing, target_file_bytes=file_bytes)
    snapshot = delta.snapshot(data.loc, int(info.version))
    todo = todo_frames = 0
    for entry in snapshot.entries(splits=splits):
        if entry.video_id not in done:
            todo, todo_frames = todo + 1, todo_frames + entry.frames
    frames = 0
    first_call = float("inf")
    try:
        if todo:
            ensure_ray(storage_options=storage_options)
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = progress
            gpus = gpus_per_actor
            size = max(1, min(actors, todo))
            share = -(-todo_frames // (CALLS_PER_ACTOR * size))
            per_call = call_frames or max(1, min(share, file_bytes // PREDICTION_BYTES_PER_FRAME))
            # blocks made here, in the table's order, one per call: no task of Ray Data's needs a CPU the actors hold
            ids = ray.data.from_arrow(list(call_blocks(snapshot.entries(splits=splits), done, per_call)))
            del snapshot
            scored = ids.map_batches(
                VideoScorer,
                batch_size=None,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(min_size=max(1, min(min_actors, size)), max_size=size),
                fn_constructor_kwargs={
                    "data_url": data.loc.url,
                    "model_url": model.url,
                    "out_url": out.url,
                    "feature_set": feature_set,
                    "version": info.version,
                    "storage_options": shareable_storage_options(storage_options),
                    "target_file_bytes": file_bytes,
                    "threads": max(1, int(cpus_per_actor)),
                    "use_gpu": gpus > 0,
                    "batch_videos": batch_videos,
                    "device": device,
                },
                num_cpus=cpus_per_actor,
                num_gpus=gpus or None,
            )
            for described in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                files = delta.table_files(described, out.display())
                writer.add_files(files)
                frames += sum(f.rows for f in files)
                first_call = min([first_call, *described.column("started").to_pylist()])
        writer.close()
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - started
    startup = max(0.0, first_call - wall_started) if frames else 0.0
    logger.info("scored %d video(s) on Ray Data in %.1f s (the first call began after %.1f s)", todo, seconds, startup)
    return ScoreResult(out.url, len(wanted), frames, len(wanted) - todo, seconds, startup)
