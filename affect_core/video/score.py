"""``affect score VIDEO_ROOT --model MODEL``: score videos directly, one prediction per decoded frame at its timestamp.

The bundle's video transform (MODEL/video_transform.safetensors, copied there from the dataset it was trained on)
sets how the videos are described; each video is extracted (by ``mapper``, e.g. one Ray task per video) and handed,
as a :class:`~affect_core.data.records.Video`, to the scorer every dataset goes through
(:func:`affect_core.scoring.score_videos`). ROOT is a video-layout folder (ROOT/videos/, partition.csv optional:
without it every video is scored as split "test").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from affect_core.data.records import Video
from affect_core.errors import fail
from affect_core.storage import Where
from affect_core.video.layout import FPS_TOLERANCE, Mapper, extract_jobs, to_video, video_jobs
from affect_core.video.transform import load_bundle_transform


def is_video_root(url: Where, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` is a folder in the video layout (has videos/ and is not a dataset)."""
    from affect_core import storage

    loc = storage.resolve(url, storage_options)
    dataset = storage.exists(loc.fs, loc.join("_delta_log").path) or storage.exists(loc.fs, loc.join("_manifests").path)
    return storage.is_dir(loc.fs, loc.join("videos").path) and not dataset


def score_video_root(
    root: Where,
    model_url: Where,
    out_url: Where,
    *,
    splits: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    mapper: Mapper = map,
    device: str | None = None,
    progress: bool = True,
    target_file_bytes: int | None = None,
    batch_videos: int | None = None,
) -> Any:
    """Extract every video of ``root`` with the bundle's video transform and score it into ``out_url``; returns the
    scorer's ScoreResult. A video whose frame rate differs from the model's is refused before it is scored.
    device: where the features are extracted and the model runs (``--device``, by the one device rule: "auto" or
    None, a GPU when present). target_file_bytes, batch_videos: as :func:`affect_core.scoring.score_videos` (None:
    its defaults).

    Each URL is resolved here, once, with ``storage_options`` (a Location given instead was resolved before); each
    video's job carries its URL and ``storage_options`` to the extraction (perhaps a Ray task), which opens it."""
    from affect_core.artifact import load_bundle
    from affect_core.data import delta
    from affect_core.device import resolve_device
    from affect_core.scoring import check_video_ids, score_videos
    from affect_core.storage import resolve

    model, out = resolve(model_url, storage_options), resolve(out_url, storage_options)
    # The model runs here; each extraction (a Ray task, perhaps on another node) resolves "auto" where it runs.
    bundle = load_bundle(model, device=str(resolve_device(device)))
    transform = load_bundle_transform(model)
    videos_root = resolve(root, storage_options)
    jobs = video_jobs(videos_root, storage_options, partition_required=False)
    jobs = [j for j in jobs if not splits or j.split in splits]
    check_video_ids([j.video_id for j in jobs], out)

    def videos() -> Iterator[Video]:
        for job, features in extract_jobs(jobs, transform, mapper=mapper, device=device):
            if bundle.fps > 0 and abs(features.fps / bundle.fps - 1.0) > FPS_TOLERANCE:
                raise fail(
                    job.where,
                    f"{features.fps:g} fps but the model was trained at {bundle.fps:g} fps; expected videos at the "
                    "model's frame rate",
                )
            yield to_video(job, features)

    return score_videos(
        bundle,
        videos(),
        out,
        feature_names=transform.feature_names,
        progress=progress,
        total=len(jobs),
        target_file_bytes=target_file_bytes or delta.DEFAULT_TARGET_FILE_BYTES,
        batch_videos=batch_videos,
    )
