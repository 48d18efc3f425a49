"""Batch scoring on Ray Data: a dataset of video ids, scored by a pool of actors that each load the model once.

Each actor call takes a batch of video ids, reads the videos' frames in order from the dataset URL
(``iter_videos(video_ids=[...])``) and scores them with the single-process scorer's code and layout
(:func:`affect_core.scoring.score_stream`: read ahead, predicted together in batches, each video's part file written
atomically). A video is scored whole by one actor, so its result equals the single-process scorer's. Videos whose
part file exists are skipped, so a re-run after an interruption finishes the job without duplicating a row; the
manifest is written last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from affect_core.scoring import BATCH_VIDEOS, ScoreResult
from tuning.cluster import ensure_ray, shareable_storage_options

logger = logging.getLogger(__name__)


class VideoScorer:
    """Ray Data actor: loads the bundle once, then scores the videos of each batch of ids it is given."""

    def __init__(
        self,
        *,
        data_url: str,
        model_url: str,
        out_url: str,
        feature_set: str | None,
        storage_options: dict[str, Any] | None,
        threads: int,
        use_gpu: bool,
    ) -> None:
        import torch

        from affect_core.artifact import load_bundle
        from affect_core.runtime import retain_freed_memory
        from affect_core.storage import resolve

        retain_freed_memory()
        torch.set_num_threads(max(1, threads))
        self.data_url = data_url
        self.feature_set = feature_set
        self.storage_options = storage_options or None
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.bundle = load_bundle(model_url, self.storage_options, device=device)
        self.out = resolve(out_url, self.storage_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from affect_core.data.dataset import iter_videos
        from affect_core.scoring import score_stream

        ids = [str(v) for v in batch["video_id"]]
        videos = iter_videos(
            self.data_url, video_ids=ids, feature_set=self.feature_set, storage_options=self.storage_options
        )
        frames = score_stream(self.bundle, videos, self.out)
        return {
            "video_id": np.array([v for v, _ in frames], dtype=object),
            "frames": np.array([n for _, n in frames], dtype=np.int64),
        }


def score_dataset(
    data_url: str,
    model_url: str,
    out_url: str,
    *,
    splits: Sequence[str] | None = None,
    actors: int | None = None,
    min_actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    videos_per_call: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> ScoreResult:
    """Score every video of ``data_url`` (or of ``splits``) into ``out_url`` with a Ray Data actor pool.

    actors: the pool's largest size (default: as many as the cluster's CPUs, or GPUs, allow); min_actors: its
    smallest. gpus_per_actor None: one GPU per actor when the cluster has GPUs. videos_per_call: the videos an actor
    scores together (predicted in batches); None: about four calls per actor, at most BATCH_VIDEOS videos each.
    Raises AffectError for an incompatible model or missing data.
    """
    import ray.data

    from affect_core.artifact import load_bundle
    from affect_core.data.dataset import dataset_info
    from affect_core.scoring import check_compatible, check_video_ids, finished_videos, write_manifest
    from affect_core.storage import resolve

    started = time.perf_counter()
    options = dict(storage_options or {}) or None
    bundle = load_bundle(model_url, options)
    info = dataset_info(data_url, storage_options=options)
    feature_set = bundle.feature_set if bundle.feature_set in info.feature_sets else None
    names = list(info.feature_names)
    if feature_set is not None and info.feature_names:
        lo, hi = info.feature_sets[feature_set]
        names = names[lo:hi]
    out = resolve(out_url, options)
    check_compatible(bundle, names, out.display())
    wanted = [v for split, ids in info.videos.items() if not splits or split in splits for v in ids]
    check_video_ids(wanted, out)
    out.fs.makedirs(out.path, exist_ok=True)
    done = finished_videos(out)
    todo = [v for v in wanted if v not in done]
    frames = 0
    if todo:
        cluster = ensure_ray(storage_options=storage_options)
        ray.data.DataContext.get_current().enable_progress_bars = progress
        gpus = gpus_per_actor if gpus_per_actor is not None else (1.0 if cluster.has_gpus else 0.0)
        limit = cluster.gpus / gpus if gpus > 0 else cluster.cpus / cpus_per_actor
        size = max(1, min(actors or int(limit) or 1, len(todo)))
        per_call = videos_per_call or max(1, min(BATCH_VIDEOS, -(-len(todo) // (4 * size))))
        ids = ray.data.from_items([{"video_id": v} for v in todo], override_num_blocks=min(len(todo), 4 * size))
        scored = ids.map_batches(
            VideoScorer,
            batch_size=per_call,
            compute=ray.data.ActorPoolStrategy(min_size=min(min_actors, size), max_size=size),
            fn_constructor_kwargs={
                "data_url": data_url,
                "model_url": model_url,
                "out_url": out_url,
                "feature_set": feature_set,
                "storage_options": shareable_storage_options(storage_options),
                "threads": max(1, int(cpus_per_actor)),
                "use_gpu": gpus > 0,
            },
            num_cpus=cpus_per_actor,
            num_gpus=gpus or None,
        )
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            frames += int(np.sum(batch["frames"]))
    missing = set(wanted) - finished_videos(out)
    if missing:
        from affect_core.errors import AffectError

        raise AffectError(f"{out.display()}: {len(missing)} video(s) not scored, e.g. {sorted(missing)[0]!r}")
    write_manifest(out, bundle.model_id, wanted)
    logger.info("scored %d video(s) on Ray Data in %.1f s", len(todo), time.perf_counter() - started)
    return ScoreResult(out.url, len(wanted), frames, len(wanted) - len(todo), time.perf_counter() - started)
