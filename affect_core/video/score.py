"""``affect score VIDEO_ROOT --model MODEL``: score videos directly, one prediction per decoded frame at its timestamp.

The bundle's video transform (MODEL/video_transform.safetensors, copied there from the dataset it was trained on)
sets how the videos are described; each video is extracted (by ``mapper``, e.g. one Ray task per video), placed on the
model's time grid (the bundle's fps) by its frames' presentation timestamps whatever its own rate, constant or variable
(:mod:`affect_core.video.timegrid`), and handed, as a :class:`~affect_core.scoring.predictions.GridVideo`, to the scorer
every dataset goes through (:func:`affect_core.scoring.score_videos`), which writes one row per decoded frame at its
timestamp. ROOT is a video-layout folder (ROOT/videos/, partition.csv optional: without it every video is scored as
split "test").

One bad video does not stop the others: every file is probed first (it opens, has a video stream, decodes a first
frame), and a video that cannot be probed or extracted is left out, reported in the result's ``failed`` list and
recorded in OUT/_failures.json (``affect info OUT`` lists it); the command exits with status 3 when any failed.

Faces: by default the principal face of each video is scored (face_id 0); ``faces="all"`` (``--faces all``) tracks
every person (:mod:`affect_core.video.tracks`) and scores one track per person, the rows of each with its
``face_id`` (0: the principal face).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from typing import Any

from affect_core import storage
from affect_core.storage import Where
from affect_core.video.extract import VideoFeatures
from affect_core.video.layout import Mapper, VideoFailure, VideoJob, extract_jobs, probe_job, video_jobs
from affect_core.video.segments import LONG_VIDEO_FRAMES, is_long, score_long_videos
from affect_core.video.transform import load_bundle_transform

# The record of the videos a scoring job could not read, beside the predictions (a table reader skips '_' names).
FAILURES_FILE = "_failures.json"


def is_video_root(url: Where, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` is a folder of videos: the video layout (has videos/) or a plain folder holding video files,
    and not a dataset."""
    from affect_core.video.layout import videos_subfolder

    loc = storage.resolve(url, storage_options)
    dataset = storage.exists(loc.fs, loc.join("_delta_log").path) or storage.exists(loc.fs, loc.join("_manifests").path)
    if dataset or not storage.is_dir(loc.fs, loc.path):
        return False
    subfolder = videos_subfolder(loc)
    return not subfolder or storage.is_dir(loc.fs, loc.join(subfolder).path)


FACES = ("principal", "all")


def extract_people_or_fail(job: VideoJob, transform: Any, device: str | None = None) -> list[VideoFeatures] | Any:
    """Every face track's features of one video (``--faces all``; a picklable unit of work for a mapper), or the
    VideoFailure saying why the video could not be read."""
    from affect_core.errors import AffectError
    from affect_core.video.extract import extract_tracks
    from affect_core.video.layout import _checked_source

    try:
        source = _checked_source(job)
        try:
            return extract_tracks(source, job.where, transform, device=device)
        finally:
            if hasattr(source, "close"):
                source.close()
    except AffectError as exc:
        return VideoFailure(job.video_id, job.where, str(exc))


def grid_video(job: VideoJob, features: VideoFeatures, fps: float, *, face_id: int = 0, faces: int = 1) -> Any:
    """The scoring record of one extracted video: its features on the model's grid at ``fps`` (its own rate when the
    model has none), its decoded frames' timestamps and faces kept for the rows written."""
    from affect_core.scoring.predictions import GridVideo, has_face
    from affect_core.video.timegrid import features_on_grid

    rate = fps if fps > 0 else (features.fps or 25.0)
    grid, on_grid = features_on_grid(features.time_s, features.features, rate)
    return GridVideo(
        job.video_id,
        job.split,
        on_grid,
        grid,
        rate,
        frame_time_s=features.time_s,
        frame_face=has_face(features.features),
        face_id=face_id,
        faces=faces,
    )


def record_failures(out: storage.Location, failed: list[VideoFailure]) -> None:
    """Write OUT/_failures.json (the videos this job could not read), or remove a stale one when none failed."""
    path = out.join(FAILURES_FILE).path
    if failed:
        storage.write_bytes_atomic(out.fs, path, json.dumps([f.to_dict() for f in failed], indent=1).encode())
    elif storage.exists(out.fs, path):
        out.fs.rm(path)


def read_failures(out: storage.Location) -> list[dict[str, str]]:
    """The videos the last scoring job into ``out`` could not read ([] when none failed)."""
    path = out.join(FAILURES_FILE).path
    if not storage.exists(out.fs, path):
        return []
    return list(json.loads(storage.read_bytes(out.fs, path)))


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
    faces: str = "principal",
    long_video_frames: int | None = LONG_VIDEO_FRAMES,
    piece_frames: int | None = None,
) -> Any:
    """Extract every video of ``root`` with the bundle's video transform and score it into ``out_url``; returns the
    scorer's ScoreResult with ``failed``: the videos left out (module docstring). Any frame rate is scored: the model
    runs on its own grid and each decoded frame gets the prediction at its timestamp.
    device: where the features are extracted and the model runs (``--device``, by the one device rule: "auto" or
    None, a GPU when present). target_file_bytes, batch_videos: as :func:`affect_core.scoring.score_videos` (None:
    its defaults). faces: "principal" (default) or "all" (module docstring).

    Each URL is resolved here, once, with ``storage_options`` (a Location given instead was resolved before); each
    video's job carries its URL and ``storage_options`` to the extraction (perhaps a Ray task), which opens it."""
    from affect_core.artifact import load_bundle
    from affect_core.data import delta
    from affect_core.device import resolve_device
    from affect_core.errors import AffectError
    from affect_core.scoring import check_video_ids, finished_videos, score_videos
    from affect_core.storage import resolve

    if faces not in FACES:
        raise AffectError(f"--faces {faces}: expected one of {', '.join(FACES)}")
    model, out = resolve(model_url, storage_options), resolve(out_url, storage_options)
    # The model runs here; each extraction (a Ray task, perhaps on another node) resolves "auto" where it runs.
    bundle = load_bundle(model, device=str(resolve_device(device)))
    transform = load_bundle_transform(model)
    videos_root = resolve(root, storage_options)
    jobs = video_jobs(videos_root, storage_options, partition_required=False)
    jobs = [j for j in jobs if not splits or j.split in splits]
    check_video_ids([j.video_id for j in jobs], out)
    probed = list(mapper(probe_job, jobs))  # before any extraction: what is no video costs nothing more
    failed = [f for f in probed if f is not None]
    readable = [job for job, problem in zip(jobs, probed, strict=True) if problem is None]
    # Videos longer than long_video_frames: their principal face scored piece by piece after the others
    # (affect_core.video.segments).
    # Each is measured by the mapper (Ray tasks on Ray: no file opened one after another here).
    long = (
        list(mapper(functools.partial(is_long, long_frames=long_video_frames), readable))
        if long_video_frames and faces != "all"
        else [False] * len(readable)
    )
    long_jobs = [job for job, is_it in zip(readable, long, strict=True) if is_it]
    readable = [job for job, is_it in zip(readable, long, strict=True) if not is_it]

    people_of: list[str] = []  # --faces all: the videos whose tracks were handed to the scorer

    def people() -> Iterator[Any]:
        extract = functools.partial(extract_people_or_fail, transform=transform, device=device)
        for job, tracks in zip(readable, mapper(extract, readable), strict=True):
            if isinstance(tracks, VideoFailure):
                failed.append(tracks)
                continue
            people_of.append(job.video_id)
            for face_id, features in enumerate(tracks):
                yield grid_video(job, features, bundle.fps, face_id=face_id, faces=len(tracks))

    def videos() -> Iterator[Any]:
        if faces == "all":
            yield from people()
            return
        for job, features in extract_jobs(readable, transform, mapper=mapper, device=device, keep_going=True):
            if isinstance(features, VideoFailure):
                failed.append(features)
                continue
            yield grid_video(job, features, bundle.fps)

    done_before = finished_videos(out) if faces == "all" else set()
    result = score_videos(
        bundle,
        videos(),
        out,
        feature_names=transform.feature_names,
        progress=progress,
        total=len(readable),
        target_file_bytes=target_file_bytes or delta.DEFAULT_TARGET_FILE_BYTES,
        batch_videos=batch_videos,
    )
    if faces == "all":  # the scorer counted tracks: count videos (a video's tracks are scored or skipped together)
        skipped = sum(v in done_before for v in people_of) if result.skipped else 0
        result = dataclasses.replace(result, videos=len(people_of), skipped=skipped)
    if long_jobs:
        result = score_long_videos(
            bundle,
            long_jobs,
            transform,
            out,
            result,
            mapper=mapper,
            piece_frames=piece_frames,
            device=device,
            failed=failed,
        )
    order = {job.video_id: n for n, job in enumerate(jobs)}
    failed.sort(key=lambda f: order[f.video_id])
    record_failures(out, failed)
    return dataclasses.replace(result, failed=[f.to_dict() for f in failed])
