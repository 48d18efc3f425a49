"""The scoring pipeline: per-frame valence and arousal with the filter's variance for every video of a dataset, into
the predictions table (:mod:`affect_core.scoring.predictions`).

Throughput: videos are predicted in batches (:func:`affect_core.inference.predict_batch`: one model pass for up to
BATCH_VIDEOS videos and BATCH_FRAMES padded frames), the next videos are read on a background thread and the finished
ones written on another while the model runs (:mod:`affect_core.scoring.background`; Parquet decoding and encoding
release the GIL). Both threads work through bounded queues, so memory stays bounded whatever the corpus; their errors
are raised in the caller.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from affect_core.artifact import ModelBundle
from affect_core.data import delta
from affect_core.data.readers import check_video_id
from affect_core.data.records import Video
from affect_core.errors import AffectError
from affect_core.inference import predict_batch
from affect_core.scoring.background import BackgroundWriter, ReadAhead
from affect_core.scoring.predictions import (
    COMMIT_SECONDS,
    PredictionTarget,
    PredictionWriter,
    Tracks,
    plan_scoring,
    written_frames,
)
from affect_core.storage import Location, Where, resolve

# Videos longer than this are scored in chunks with the LSTM and filter state carried across (bounded memory).
CHUNK_FRAMES = 15_000
# The most videos predicted in one model pass, and the most frames (counting the padding to the longest) such a batch
# may hold. On the CPU a pass costs a fixed 2-3 ms of Python and tensor set-up beside its compiled kernels, paid again
# by the writer for each batch: scoring 10^4 videos of 250 frames took 4.7 s in batches of 16 videos and 3.9 s in
# batches of 256 (64,000 frames); 198 videos of 7,501 frames 1.8 s in batches of 2 (16,384 frames at most) and 1.3 s
# in batches of 17 (BATCH_FRAMES). The padded batch and the filter's covariances (up to about 600 bytes a frame, for a
# joint model) set the memory.
BATCH_VIDEOS = 256
# The GIL's switch interval while score_stream runs (Python's default is 5 ms): the model's thread takes the GIL back
# between its kernels, and a reading or writing thread holding it made it wait up to the interval each time (7,501-frame
# videos: 2.25 s with 5 ms, 1.65 s with 1 ms for 198 videos; 250-frame videos 6.4 s against 5.5 s for 10^4).
SWITCH_INTERVAL_S = 0.001
BATCH_FRAMES = 16 * 8192


@dataclass
class ScoreResult:
    url: str
    videos: int
    frames: int
    skipped: int
    seconds: float
    # Seconds before the first video's scoring began that are not scoring: a Ray job's actors starting (importing,
    # loading the model, opening the dataset); 0 in this process.
    startup_seconds: float = 0.0
    # Videos of a folder of videos that could not be read and were left out: {video_id, file, problem} each
    # (affect_core.video.score); the others were scored.
    failed: list[dict[str, str]] = field(default_factory=list)
    # Whether the variances written are the label's (the bundle holds a calibration) rather than the filter's own
    # uncalibrated state variance (a bundle from before calibration); None where the scorer did not say.
    calibrated: bool | None = None

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


def check_compatible(bundle: ModelBundle, feature_names: list[str], where: str) -> None:
    """Refuse a model trained on another feature space than the data's."""
    if len(feature_names) != len(bundle.feature_names) or (
        feature_names and bundle.feature_names and list(feature_names) != list(bundle.feature_names)
    ):
        raise AffectError(
            f"{where}: the data has {len(feature_names)} features but the model was trained on "
            f"{len(bundle.feature_names)} features of set {bundle.feature_set!r}; score with data of the same "
            "feature set"
        )


def predict_tracks(bundle: ModelBundle, features: Sequence[np.ndarray]) -> list[Tracks]:
    """features: (T_i, d) raw features per video -> per video {dimension: (level (T_i,), variance (T_i,))}; the
    variance is the label's given the video (calibrated, :meth:`TrainedModel.tracks`), or the filter's own for a
    bundle without a calibration.

    The videos go through each model of the bundle in one batch (equal to ``bundle.predict`` on each video); videos
    longer than CHUNK_FRAMES stream through in chunks.
    """
    for f in features:
        if f.ndim != 2 or f.shape[1] != len(bundle.feature_names):
            raise AffectError(
                f"model bundle: expects {len(bundle.feature_names)} features of set {bundle.feature_set!r}, "
                f"got an array of shape {f.shape}"
            )
    out: list[Tracks] = [{} for _ in features]
    for trained in bundle.models:
        predictions = predict_batch(trained.model, trained.transform, features, chunk_frames=CHUNK_FRAMES)
        for tracks, prediction in zip(out, predictions, strict=True):
            tracks.update(trained.tracks(prediction))  # the calibrated variance where the bundle has a calibration
    return out


def video_batches(
    videos: Iterable[Video], *, max_videos: int = BATCH_VIDEOS, max_frames: int = BATCH_FRAMES
) -> Iterator[list[Video]]:
    """Consecutive videos in batches of at most ``max_videos`` whose padded size (videos x longest) stays within
    ``max_frames``; a video longer than CHUNK_FRAMES (scored in chunks) is a batch of its own."""
    batch: list[Video] = []
    longest = 0
    for video in videos:
        n = video.num_frames
        if n > CHUNK_FRAMES:
            if batch:
                yield batch
            batch, longest = [], 0
            yield [video]
            continue
        if batch and (len(batch) >= max_videos or (len(batch) + 1) * max(longest, n) > max_frames):
            yield batch
            batch, longest = [], 0
        batch.append(video)
        longest = max(longest, n)
    if batch:
        yield batch


def score_videos(
    bundle: ModelBundle,
    videos: Iterable[Video],
    out_url: Where,
    *,
    feature_names: list[str],
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
    total: int | None = None,
    batch_videos: int | None = None,
    dataset_url: str = "",
    dataset_version: str | None = None,
    replace: bool = True,
    target_file_bytes: int = delta.DEFAULT_TARGET_FILE_BYTES,
    commit_seconds: float = COMMIT_SECONDS,
    predict: Callable[[Sequence[np.ndarray]], list[Tracks]] | None = None,
) -> ScoreResult:
    """Score every video into the predictions table at ``out_url`` (a URL, resolved here with ``storage_options``,
    or a Location resolved before); videos this model already scored there on the
    same dataset version are skipped (a re-run resumes). Predictions of another model or version are replaced in the
    first commit, or refused when ``replace`` is False.

    The videos go through :func:`score_stream` (read ahead, predicted ``batch_videos`` at a time, default
    BATCH_VIDEOS, written behind). predict: what turns a batch's features into tracks (default
    :func:`predict_tracks` with ``bundle``; the benchmarks' I/O floor passes one that returns constants)."""
    started = time.perf_counter()
    out = resolve(out_url, storage_options)
    check_compatible(bundle, feature_names, out.display())
    target = PredictionTarget(bundle.model_id, dataset_url, dataset_version or "")
    snap, done, replacing = plan_scoring(out, target, replace=replace)
    writer = PredictionWriter(
        out,
        target,
        snapshot=snap,
        replace=replacing,
        target_file_bytes=target_file_bytes,
        commit_seconds=commit_seconds,
    )
    seen = skipped = 0

    def to_score() -> Iterator[Video]:
        nonlocal seen, skipped
        for video in tqdm(videos, total=total, desc="scoring", unit="video", disable=not progress):
            seen += 1
            if video.video_id in done:
                skipped += 1
                continue
            yield video

    try:
        _, frames = score_stream(bundle, to_score(), writer, batch_videos=batch_videos, predict=predict)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return ScoreResult(
        out.url,
        seen,
        frames,
        skipped,
        time.perf_counter() - started,
        calibrated=bundle.calibrated if predict is None else None,
    )


def score_stream(
    bundle: ModelBundle,
    videos: Iterable[Video],
    out: PredictionWriter | Any,
    *,
    batch_videos: int | None = None,
    predict: Callable[[Sequence[np.ndarray]], list[Tracks]] | None = None,
) -> tuple[int, int]:
    """Predict every video of ``videos`` and hand each batch's tracks to ``out.add_batch(videos, tracks)`` (a
    :class:`PredictionWriter`, or any object with that method); returns (videos, frames) predicted.

    ``videos`` is iterated on a background thread up to BATCH_FRAMES frames ahead, the videos are predicted in
    batches of up to ``batch_videos`` (default BATCH_VIDEOS) and BATCH_FRAMES padded frames (:func:`video_batches`,
    :func:`predict_tracks`) and written on another thread, at most two batches behind (a batch's rows are built column
    by column, so the writing thread holds the GIL little while the model runs). Returns once every file is written;
    the first error of any of the three is raised here.

    Meanwhile the model runs on :func:`model_threads` of torch's threads, one fewer than torch's setting: that core
    is left to the reading and writing threads. An OpenMP team sharing its cores with them waits, at each of the
    LSTM's time steps, for a member the scheduler has parked (on a 2-core machine 2 threads scored a third slower
    than 1). The reading and writing threads run at a lower priority than the model's
    (:func:`affect_core.runtime.lower_thread_priority`): the model is the critical path.
    """
    size = max(1, batch_videos or BATCH_VIDEOS)
    predicted = predict or (lambda features: predict_tracks(bundle, features))
    videos_done = frames = 0
    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    torch.set_num_threads(model_threads())
    sys.setswitchinterval(min(interval, SWITCH_INTERVAL_S))
    try:
        with ReadAhead(videos, max_frames=BATCH_FRAMES) as incoming, BackgroundWriter(2) as writer:
            for batch in video_batches(incoming, max_videos=size, max_frames=BATCH_FRAMES):
                writer.submit(out.add_batch, batch, predicted([v.features for v in batch]))
                videos_done += len(batch)
                frames += sum(written_frames(v) for v in batch)  # rows written (a video's decoded frames)
    finally:
        torch.set_num_threads(threads)
        sys.setswitchinterval(interval)
    return videos_done, frames


def model_threads() -> int:
    """torch threads the model gets while :func:`score_stream` reads and writes: one fewer than torch's setting."""
    return max(1, torch.get_num_threads() - 1)


def score_dataset(
    data_url: str | Location | delta.VersionedLocation,
    model_url: Where,
    out_url: Where,
    *,
    splits: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
    version: str | int | None = None,
    replace: bool = True,
    target_file_bytes: int = delta.DEFAULT_TARGET_FILE_BYTES,
    device: str | None = None,
    batch_videos: int | None = None,
) -> ScoreResult:
    """Score a dataset (or bare features URL) with a model bundle in this process, streaming one video at a time.

    The dataset version (``version``, ``URL@VERSION``, else the latest) is resolved once and pinned for the whole
    job; the bundle's feature set is selected from the dataset when it holds several; unknown splits are refused
    before anything is written. ``replace``: see :func:`score_videos`. device: where the model runs (None or "auto":
    a GPU when present). batch_videos: the most videos in one model pass (default BATCH_VIDEOS); a job commits after
    a batch, so fewer commit sooner, and a batch's memory falls with them.

    Each URL (``data_url``, ``model_url``, ``out_url``) is resolved here, once, with ``storage_options``; a Location
    given instead was resolved by the caller."""
    from affect_core.artifact import load_bundle
    from affect_core.data.dataset import iter_videos
    from affect_core.device import resolve_device

    data = delta.resolve_versioned(data_url, storage_options)
    out = resolve(out_url, storage_options)
    model = resolve(model_url, storage_options)
    info, _, _, wanted = scoring_plan(data, splits, version, None)
    check_video_ids(wanted, out)
    bundle = load_bundle(model, device=str(resolve_device(device)))
    feature_set, names = bundle_features(bundle, info)
    videos = iter_videos(
        delta.VersionedLocation(data.loc), splits=splits or None, feature_set=feature_set, version=info.version
    )
    return score_videos(
        bundle,
        videos,
        out,
        feature_names=names,
        progress=progress,
        total=len(wanted),
        dataset_url=info.url,
        dataset_version=info.version,
        replace=replace,
        target_file_bytes=target_file_bytes,
        batch_videos=batch_videos,
    )


def scoring_plan(
    data: delta.VersionedLocation,
    splits: Sequence[str] | None,
    version: str | int | None,
    bundle: ModelBundle | None,
) -> tuple[Any, str | None, list[str], list[str]]:
    """(dataset info at the pinned version, feature set, feature names, video ids to score) of a scoring job;
    refuses unknown splits."""
    from affect_core.data.dataset import dataset_info

    info = dataset_info(data, version=version)
    unknown = [s for s in splits or [] if s not in info.videos]
    if unknown:
        raise AffectError(f"{info.url}: split {unknown[0]!r} has no videos; available: {', '.join(info.videos)}")
    feature_set, names = bundle_features(bundle, info) if bundle is not None else (None, list(info.feature_names))
    wanted = [v for s, ids in info.videos.items() if not splits or s in splits for v in ids]
    return info, feature_set, names, wanted


def check_video_ids(video_ids: Iterable[str], out: Location) -> None:
    """Refuse, before anything is written, a video id that is no plain name (e.g. '../x'): ids name files when
    predictions are exported per video."""
    for video_id in video_ids:
        check_video_id(video_id, out.display())


def bundle_features(bundle: ModelBundle, info: Any) -> tuple[str | None, list[str]]:
    """The feature set a bundle reads from a dataset (None: every column) and its feature names: the dataset's own
    when the model was trained on all of it, else the selection its set names make (a set, sets fused with '+', or a
    set kept per affect dimension, whose name selects both dimensions' versions as training did)."""
    from affect_core.data.dataset import selected_feature_names

    if not bundle.feature_set or bundle.feature_set == info.feature_set:
        return None, list(info.feature_names)
    try:
        return bundle.feature_set, selected_feature_names(info.metadata, bundle.feature_set, info.url)
    except AffectError:
        return None, list(info.feature_names)
