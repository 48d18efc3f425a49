"""Scoring: per-frame valence and arousal with the filter's variance for every video, and evaluation against labels.

Predictions are a table (:mod:`affect_core.data.delta`, Delta Lake) at PRED_URL: columns PREDICTION_SCHEMA, files of
many whole videos partitioned by split, frames in order. The table's metadata names the model (``model_id``: a hash of
its weights and configuration) and the dataset URL and version it scored; every row carries both too. A job commits
what it has scored each time a file fills (or every COMMIT_SECONDS), so a crashed job resumes by skipping the videos
committed by the same model on the same dataset version. Scoring into a URL that holds another model's or another
version's predictions replaces them in the job's first commit (one transaction: readers see the old rows or the new,
never both), or with ``replace=False`` refuses.

Throughput: videos are predicted in batches (:func:`affect_core.inference.predict_batch`: one model pass for up to
BATCH_VIDEOS videos and BATCH_FRAMES padded frames), the next videos are read on a background thread and the finished
ones written on another while the model runs (Parquet decoding and encoding release the GIL). Both threads work
through bounded queues, so memory stays bounded whatever the corpus; their errors are raised in the caller.
"""

from __future__ import annotations

import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from affect_core.artifact import ModelBundle
from affect_core.data import delta
from affect_core.data.readers import check_video_id
from affect_core.data.records import Video
from affect_core.errors import AffectError
from affect_core.inference import predict_batch
from affect_core.metrics import sequence_metrics
from affect_core.runtime import lower_thread_priority
from affect_core.storage import Location, resolve

PREDICTION_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("split", pa.string()),
        ("frame", pa.int32()),
        ("time_s", pa.float64()),
        ("arousal", pa.float32()),
        ("valence", pa.float32()),
        ("arousal_var", pa.float32()),
        ("valence_var", pa.float32()),
        ("model_id", pa.string()),
        ("dataset_version", pa.string()),
    ]
)
PREDICTIONS_KIND = "predictions"
# A running job commits what it has scored at least this often (a crash loses at most this much work).
COMMIT_SECONDS = 300.0
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

Tracks = dict[str, tuple[np.ndarray, np.ndarray]]
"""{dimension: (level (T,), variance (T,))} of one video."""


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
    """features: (T_i, d) raw features per video -> per video {dimension: (level (T_i,), variance (T_i,))}.

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
            for dim in trained.dimensions:
                tracks[dim] = prediction.track(dim)
    return out


def write_predicted(
    files: delta.FileWriter, videos: Sequence[Video], tracks: Sequence[Tracks], model_id: str, dataset_version: str
) -> list[delta.DataFile]:
    """Append the prediction rows of consecutive videos to table files; returns the files this closed."""
    table = prediction_rows(videos, tracks, model_id, dataset_version)
    return files.add_videos(table, [delta.VideoEntry(v.video_id, v.split, v.num_frames) for v in videos])


def prediction_rows(
    videos: Sequence[Video], tracks: Sequence[Tracks], model_id: str, dataset_version: str = ""
) -> pa.Table:
    """The predicted tracks of consecutive videos as one table in PREDICTION_SCHEMA, a video's rows together and in
    frame order (a dimension missing from a video's tracks is null). Built column by column for the whole batch."""
    lengths = np.array([v.num_frames for v in videos], dtype=np.int64)
    total = int(lengths.sum())
    owner = pa.array(np.repeat(np.arange(len(videos), dtype=np.int64), lengths))
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    columns: dict[str, Any] = {
        "video_id": pa.array([v.video_id for v in videos], pa.string()).take(owner),
        "split": pa.array([v.split for v in videos], pa.string()).take(owner),
        "frame": pa.array((np.arange(total, dtype=np.int64) - starts).astype(np.int32)),
        "time_s": pa.array(_joined([np.asarray(v.time_s, dtype=np.float64) for v in videos], np.float64)),
    }
    for dim in ("arousal", "valence"):
        levels = [np.asarray(t[dim][0], np.float32) if dim in t else None for t in tracks]
        variances = [np.asarray(t[dim][1], np.float32) if dim in t else None for t in tracks]
        missing = np.repeat(np.array([x is None for x in levels]), lengths)
        filled = [x if x is not None else np.full(n, np.nan, np.float32) for x, n in zip(levels, lengths, strict=True)]
        columns[dim] = pa.array(_joined(filled, np.float32), mask=missing if missing.any() else None)
        filled = [
            x if x is not None else np.full(n, np.nan, np.float32) for x, n in zip(variances, lengths, strict=True)
        ]
        columns[f"{dim}_var"] = pa.array(_joined(filled, np.float32), from_pandas=True)
    columns["model_id"] = pa.repeat(pa.scalar(model_id, pa.string()), total)
    columns["dataset_version"] = pa.repeat(pa.scalar(dataset_version, pa.string()), total)
    return pa.table(columns, schema=PREDICTION_SCHEMA)


def _joined(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


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


@dataclass
class PredictionTarget:
    """Who the predictions at a URL are from: the model and the dataset (URL and version) it scored."""

    model_id: str
    dataset_url: str = ""
    dataset_version: str = ""

    def metadata(self) -> dict[str, str]:
        return {
            "affect.kind": PREDICTIONS_KIND,
            "affect.model_id": self.model_id,
            "affect.dataset_url": self.dataset_url,
            "affect.dataset_version": self.dataset_version,
        }

    @classmethod
    def of(cls, snapshot: delta.Snapshot) -> PredictionTarget:
        meta = snapshot.metadata
        return cls(
            str(meta.get("affect.model_id", "")),
            str(meta.get("affect.dataset_url", "")),
            str(meta.get("affect.dataset_version", "")),
        )


def open_predictions(out: Location, *, version: int | None = None) -> delta.Snapshot | None:
    """The predictions table at ``out`` (None if there is none yet); refuses a URL holding something else."""
    snap = delta.snapshot(out, version)
    if snap is None:
        # split=... folders without a log are a crashed first job's uncommitted files: the next job may write here
        entries = [n for n, _ in _list(out) if not n.startswith((".", "_", "split="))]
        if entries:
            raise AffectError(
                f"{out.display()}: holds {entries[0]!r} and is not a predictions table (no _delta_log/); "
                "score into an empty directory or a new URL"
            )
        return None
    if snap.metadata.get("affect.kind") != PREDICTIONS_KIND:
        raise AffectError(
            f"{out.display()}: a table of {snap.metadata.get('affect.kind', 'dataset')} rows, not of predictions; "
            "score into another URL"
        )
    return snap


def _list(out: Location) -> list[tuple[str, str]]:
    from affect_core.storage import list_dir

    return list_dir(out.fs, out.path)


def finished_videos(out: Location) -> set[str]:
    """Video ids whose predictions are committed under ``out``."""
    snap = open_predictions(out)
    return set(snap.video_ids().to_pylist()) if snap is not None else set()


def plan_scoring(
    out: Location, target: PredictionTarget, *, replace: bool = True
) -> tuple[delta.Snapshot | None, set[str], bool]:
    """(table snapshot, videos already done, whether the first commit replaces the table) for a job scoring
    ``target`` into ``out``. Predictions of another model or dataset version are replaced (``replace``) or refused."""
    snap = open_predictions(out)
    if snap is None:
        return None, set(), False
    held = PredictionTarget.of(snap)
    if held == target:
        return snap, set(snap.video_ids().to_pylist()), False
    if not replace:
        raise AffectError(
            f"{out.display()}: holds predictions of model {held.model_id} on {held.dataset_url} version "
            f"{held.dataset_version or '-'}, not of model {target.model_id} on {target.dataset_url} version "
            f"{target.dataset_version or '-'}; score into another URL, or allow replacing them"
        )
    return snap, set(), True


class PredictionWriter:
    """Packs predicted videos into table files and commits them: when a file fills, every COMMIT_SECONDS, and at
    :meth:`close`. The first commit replaces the table when ``replace``. Called from one thread."""

    def __init__(
        self,
        out: Location,
        target: PredictionTarget,
        *,
        snapshot: delta.Snapshot | None,
        replace: bool,
        target_file_bytes: int = delta.DEFAULT_TARGET_FILE_BYTES,
        commit_seconds: float = COMMIT_SECONDS,
    ) -> None:
        self.out = out
        self.target = target
        self.model_id = target.model_id
        self.read_version = snapshot.version if snapshot is not None else None
        self.replace = replace
        self.commit_seconds = commit_seconds
        self.files = delta.FileWriter(out, PREDICTION_SCHEMA, target_file_bytes=target_file_bytes)
        self.ready: list[delta.DataFile] = []
        self.last_commit = time.monotonic()
        self.commits = 0
        self.failed = False

    def add_batch(self, videos: Sequence[Video], tracks: Sequence[Tracks]) -> None:
        """Write the predicted tracks of consecutive videos (commits as files fill, or every commit_seconds)."""
        if self.failed:  # a batch before this one failed: the job stops committing
            return
        try:
            self.ready += write_predicted(self.files, videos, tracks, self.model_id, self.target.dataset_version)
            if self._due():
                self.commit(flush=not self.ready)
        except BaseException:
            self.failed = True
            raise

    def add_files(self, files: Sequence[delta.DataFile]) -> None:
        """Commit table files of predictions that a scorer elsewhere (a Ray actor) wrote: with the next commit, which
        is now. They are deleted by :meth:`abort` until committed."""
        self.files.written += files
        self.ready += files
        self.commit(flush=False)

    def _due(self) -> bool:
        """Whether to commit now: a file filled up, or commit_seconds passed since the last commit."""
        return any(f.full for f in self.ready) or time.monotonic() - self.last_commit >= self.commit_seconds

    def commit(self, *, flush: bool = True) -> None:
        if flush:
            self.ready += self.files.flush()
        if not self.ready and not (self.replace or self.read_version is None):
            return
        try:
            self.read_version = delta.commit(
                self.out,
                PREDICTION_SCHEMA,
                added=self.ready,
                read_version=self.read_version,
                metadata=self.target.metadata(),
                replace=self.replace,
                operation="score",
            )
        except delta.CommitConflict as exc:
            self.abort()
            raise AffectError(
                f"{exc}. Another scoring job wrote into this URL at the same time; run this one again to resume"
            ) from None
        self.files.written = [f for f in self.files.written if f not in self.ready]
        self.ready = []
        self.replace = False
        self.commits += 1
        self.last_commit = time.monotonic()

    def close(self) -> None:
        self.commit(flush=True)

    def abort(self) -> None:
        """Delete the files not yet committed."""
        self.files.abort()
        self.ready = []


def score_videos(
    bundle: ModelBundle,
    videos: Iterable[Video],
    out_url: str,
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
    """Score every video into the predictions table at ``out_url``; videos this model already scored there on the
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
    return ScoreResult(out.url, seen, frames, skipped, time.perf_counter() - started)


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
                frames += sum(v.num_frames for v in batch)
    finally:
        torch.set_num_threads(threads)
        sys.setswitchinterval(interval)
    return videos_done, frames


def model_threads() -> int:
    """torch threads the model gets while :func:`score_stream` reads and writes: one fewer than torch's setting."""
    return max(1, torch.get_num_threads() - 1)


class ReadAhead:
    """Iterates ``items`` on a background thread ahead of the consumer, so that reading overlaps the consumer's work
    (at a lower priority than the consumer's: :func:`affect_core.runtime.lower_thread_priority`); the reader waits
    while ``max_frames`` frames or more are ready. Use as a context manager; an error raised by ``items`` is raised in
    the consumer, and leaving the block early stops the reader."""

    def __init__(self, items: Iterable[Video], *, max_frames: int) -> None:
        self._items = items
        self._max_frames = max_frames
        self._ready: deque[Video] = deque()
        self._frames = 0
        self._finished = False
        self._stopped = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="affect-score-read", daemon=True)

    def __enter__(self) -> Iterator[Video]:
        self._thread.start()
        return self._consume()

    def __exit__(self, *exc_info: object) -> None:
        with self._changed:
            self._stopped = True
            self._ready.clear()
            self._changed.notify_all()
        self._thread.join()

    def _read(self) -> None:
        lower_thread_priority()  # the consumer (the model) gets the cores first
        iterator = iter(self._items)
        try:
            for item in iterator:
                with self._changed:
                    while self._ready and self._frames >= self._max_frames and not self._stopped:
                        self._changed.wait()
                    if self._stopped:
                        return
                    self._ready.append(item)
                    self._frames += item.num_frames
                    self._changed.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            with self._changed:
                self._error = exc
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            with self._changed:
                self._finished = True
                self._changed.notify_all()

    def _consume(self) -> Iterator[Video]:
        while True:
            with self._changed:
                while not self._ready and not self._finished:
                    self._changed.wait()
                if not self._ready:
                    if self._error is not None:
                        raise self._error
                    return
                item = self._ready.popleft()
                self._frames -= item.num_frames
                self._changed.notify_all()
            yield item


class BackgroundWriter:
    """Runs write tasks one after another on a background thread (at a lower priority than the caller's), at most
    ``max_pending`` of them queued: submit() waits for the oldest beyond that (bounded memory) and raises its error.
    Leaving the block waits for every task and raises the first error; leaving it on an error cancels the tasks not
    yet started."""

    def __init__(self, max_pending: int) -> None:
        self._max_pending = max(1, max_pending)
        self._pending: deque[Future[None]] = deque()
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="affect-score-write", initializer=lower_thread_priority
        )

    def __enter__(self) -> BackgroundWriter:
        return self

    def submit(self, task: Callable[..., None], *args: Any) -> None:
        self._pending.append(self._pool.submit(task, *args))
        while len(self._pending) > self._max_pending:
            self._pending.popleft().result()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        try:
            while exc_type is None and self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def score_dataset(
    data_url: str,
    model_url: str,
    out_url: str,
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
    a batch, so fewer commit sooner, and a batch's memory falls with them."""
    from affect_core.artifact import load_bundle
    from affect_core.device import resolve_device

    info, _, _, wanted = scoring_plan(data_url, storage_options, splits, version, None)
    check_video_ids(wanted, resolve(out_url, storage_options))
    bundle = load_bundle(model_url, storage_options, device=str(resolve_device(device)))
    feature_set, names = bundle_features(bundle, info)
    from affect_core.data.dataset import iter_videos

    url, _ = delta.parse_versioned_url(data_url)
    videos = iter_videos(
        url, splits=splits or None, feature_set=feature_set, version=info.version, storage_options=storage_options
    )
    return score_videos(
        bundle,
        videos,
        out_url,
        feature_names=names,
        storage_options=storage_options,
        progress=progress,
        total=len(wanted),
        dataset_url=info.url,
        dataset_version=info.version,
        replace=replace,
        target_file_bytes=target_file_bytes,
        batch_videos=batch_videos,
    )


def scoring_plan(
    data_url: str,
    storage_options: dict[str, Any] | None,
    splits: Sequence[str] | None,
    version: str | int | None,
    bundle: ModelBundle | None,
) -> tuple[Any, str | None, list[str], list[str]]:
    """(dataset info at the pinned version, feature set, feature names, video ids to score) of a scoring job;
    refuses unknown splits."""
    from affect_core.data.dataset import dataset_info

    info = dataset_info(data_url, version=version, storage_options=storage_options)
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


def scored_version(
    predictions: PredictionStore, dataset_url: str, storage_options: dict[str, Any] | None
) -> str | None:
    """The version of ``dataset_url`` to read beside ``predictions``: the one they were scored from when the URL
    names that table and pins no version itself; else None (the URL's own version, or the latest)."""
    url, pinned = delta.parse_versioned_url(dataset_url)
    target = predictions.target
    if pinned is not None or not target.dataset_version or not target.dataset_url:
        return None
    if resolve(url, storage_options).display() != target.dataset_url:
        return None
    return target.dataset_version


class PredictionStore(Mapping[str, pa.Table]):
    """The predictions of one table version as a read-only mapping {video id: its rows (PREDICTION_SCHEMA)}, in the
    table's order (split, then natural id). Memory stays flat whatever the table holds: the index is the snapshot's
    Arrow columns, and rows are read on access, one row group at a time (the last one read is kept).

    Lookups in the table's order (what evaluation does) walk a cursor forward through the index: each costs O(1)
    and consecutive videos of a row group one read. A lookup behind the cursor restarts the walk from the first
    video (O(videos) for that lookup)."""

    def __init__(self, out: Location, snapshot: delta.Snapshot) -> None:
        self.out = out
        self.snapshot = snapshot
        self.target = PredictionTarget.of(snapshot)
        self._cursor: Iterator[delta.VideoEntry] = iter(())
        self._cached: tuple[tuple[str, int], pa.Table] | None = None
        self._file: Any = None

    def _find(self, video_id: str) -> delta.VideoEntry | None:
        for entry in self._cursor:
            if entry.video_id == video_id:
                return entry
        self._cursor = self.snapshot.entries()  # behind the cursor, or absent: one walk from the start
        for entry in self._cursor:
            if entry.video_id == video_id:
                return entry
        return None

    def __getitem__(self, video_id: str) -> pa.Table:
        entry = self._find(video_id)
        if entry is None:
            raise KeyError(video_id)
        key = (entry.path, entry.row_group)
        if self._cached is None or self._cached[0] != key:
            if self._file is None or self._file.path != entry.path:
                self.close()
                self._file = delta.TableFile(self.out, entry.path)  # the footer is parsed once per file
            self._cached = (key, self._file.read([entry.row_group]))
        table = self._cached[1]
        mask = pc.equal(table.column("video_id"), video_id)
        return table.filter(mask)

    def close(self) -> None:
        """Close the file held open (reading again reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __iter__(self) -> Iterator[str]:
        return (entry.video_id for entry in self.snapshot.entries())

    def __len__(self) -> int:
        return self.snapshot.video_count

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and bool(
            delta.select_index(pa.table({"video_id": self.snapshot.video_ids()}), None, [video_id]).num_rows
        )

    def video_ids(self) -> pa.ChunkedArray:
        """The ids of every video with predictions (an Arrow column: no object per video)."""
        return self.snapshot.video_ids()

    def frames(self) -> int:
        """Predicted frames over the table."""
        return sum(int(pc.sum(f.index.column("frames")).as_py() or 0) for f in self.snapshot.files if f.video_count)


def read_predictions(
    pred_url: str, storage_options: dict[str, Any] | None = None, *, version: int | str | None = None
) -> PredictionStore:
    """The predictions at PRED_URL (``URL@VERSION`` or ``version`` pins a version) as a lazy mapping {video id:
    table}; the table's ``target`` names the model and dataset version they are from."""
    url, pinned = delta.parse_versioned_url(pred_url)
    loc = resolve(url, storage_options)
    wanted = pinned if pinned is not None else delta.parse_version(version, loc.display())
    snap = open_predictions(loc, version=wanted)
    if snap is None:
        raise AffectError(f"{loc.display()}: no predictions here")
    store = PredictionStore(loc, snap)
    if not len(store):
        raise AffectError(f"{loc.display()}: the predictions table holds no video")
    return store


def evaluate_predictions(
    predictions: Mapping[str, pa.Table], videos: Iterable[Video]
) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {dimension: {ccc, rmse, pcc, sequences}}}: per sequence, then averaged over a split's sequences.

    Streams: one video and its predictions at a time (``predictions`` from :func:`read_predictions` reads rows on
    access, fastest with ``videos`` in the table's order), so memory is bounded whatever the corpus: the per-sequence
    metrics are kept as packed doubles (24 bytes a sequence). Frames are matched by frame index; a labelled video
    without predictions is an error (the evaluation would be silently partial otherwise).
    """
    per: dict[str, dict[str, dict[str, array]]] = {}
    for video in videos:
        if not video.labelled:
            continue
        table = predictions.get(video.video_id)
        if table is None:
            raise AffectError(f"predictions: video {video.video_id!r} ({video.split}) has labels but no predictions")
        frames = table.column("frame").to_numpy()
        for dim in ("arousal", "valence"):
            gold = video.labels(dim)
            pred_col = table.column(dim).to_numpy(zero_copy_only=False)
            if gold is None or not np.isfinite(pred_col).any():
                continue
            if frames.max(initial=-1) >= len(gold) or len(frames) != len(gold):
                raise AffectError(
                    f"predictions: video {video.video_id!r} has {len(frames)} predicted frames, labels have {len(gold)}"
                )
            aligned = np.full(len(gold), np.nan)
            aligned[frames] = pred_col
            packed = per.setdefault(video.split, {}).setdefault(dim, {})
            for name, value in sequence_metrics(aligned, gold).items():
                packed.setdefault(name, array("d")).append(value)
    result: dict[str, dict[str, dict[str, float]]] = {}
    for split, dims in per.items():
        result[split] = {}
        for dim, packed in dims.items():
            # the mean over sequences (average_over_sequences, read from the packed columns)
            means = {name: float(np.mean(np.frombuffer(values, dtype=np.float64))) for name, values in packed.items()}
            result[split][dim] = {**means, "sequences": float(len(next(iter(packed.values()))))}
    if not result:
        raise AffectError("evaluation: no labelled video has predictions for arousal or valence")
    return result


def evaluation_markdown(result: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| split | dimension | sequences | CCC | RMSE | PCC |", "|---|---|---|---|---|---|"]
    for split in sorted(
        result, key=lambda s: ("train", "dev", "test").index(s) if s in ("train", "dev", "test") else 9
    ):
        for dim, m in result[split].items():
            lines.append(
                f"| {split} | {dim} | {int(m['sequences'])} | {m['ccc']:.4f} | {m['rmse']:.4f} | {m['pcc']:.4f} |"
            )
    return "\n".join(lines) + "\n"
