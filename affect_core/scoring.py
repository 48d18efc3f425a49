"""Scoring: per-frame valence and arousal with the filter's variance for every video, and evaluation against labels.

Predictions layout of PRED_URL (readable by pyarrow.dataset, pandas, polars and duckdb as one dataset):

    part-<video_id>.parquet   one file per video, columns PREDICTION_SCHEMA, frames in order
    _manifest.json            written last: model id, videos and rows; its presence means the job finished

Each video's file is written atomically and is the whole video, so an interrupted job re-run skips the finished videos
and never duplicates a row. Files whose names start with "_" are ignored by Parquet dataset readers.

Throughput: videos are predicted in batches (:func:`affect_core.inference.predict_batch`: one model pass for up to
BATCH_VIDEOS videos), the next videos are read on a background thread and the finished ones written on another while
the model runs (Parquet decoding and encoding release the GIL). Both threads work through bounded queues, so memory
stays bounded whatever the corpus; their errors are raised in the caller.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from affect_core.artifact import ModelBundle
from affect_core.data.readers import check_video_id
from affect_core.data.records import Video
from affect_core.errors import AffectError
from affect_core.inference import predict_batch
from affect_core.metrics import average_over_sequences, sequence_metrics
from affect_core.storage import Location, exists, list_dir, read_bytes, resolve, write_bytes_atomic

PREDICTION_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("frame", pa.int32()),
        ("time_s", pa.float64()),
        ("arousal", pa.float32()),
        ("valence", pa.float32()),
        ("arousal_var", pa.float32()),
        ("valence_var", pa.float32()),
        ("model_id", pa.string()),
    ]
)
MANIFEST = "_manifest.json"
# Videos longer than this are scored in chunks with the LSTM and filter state carried across (bounded memory).
CHUNK_FRAMES = 15_000
# Videos predicted in one model pass, and the most frames (counting the padding to the longest) such a batch may hold.
# The front-end LSTM's cost per video falls with the batch up to about 16 sequences and is flat beyond; a smaller batch
# lets reading and writing overlap the model sooner. The padded batch and the filter's covariances (about 250 bytes a
# frame) set the memory.
BATCH_VIDEOS = 16
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


def tracks_table(video: Video, tracks: Tracks, model_id: str) -> pa.Table:
    """One video's predicted tracks as a table in PREDICTION_SCHEMA (a dimension missing from ``tracks`` is null)."""
    t = video.num_frames
    empty = np.full(t, np.nan, dtype=np.float32)
    columns: dict[str, Any] = {
        "video_id": pa.repeat(pa.scalar(video.video_id, pa.string()), t),
        "frame": pa.array(np.arange(t, dtype=np.int32)),
        "time_s": pa.array(np.asarray(video.time_s, dtype=np.float64)),
    }
    for dim in ("arousal", "valence"):
        level, var = tracks.get(dim, (empty, empty))
        columns[dim] = pa.array(np.asarray(level, np.float32), from_pandas=dim not in tracks)
        columns[f"{dim}_var"] = pa.array(np.asarray(var, np.float32), from_pandas=True)
    columns["model_id"] = pa.repeat(pa.scalar(model_id, pa.string()), t)
    return pa.table(columns, schema=PREDICTION_SCHEMA)


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


def part_name(video_id: str) -> str:
    return f"part-{video_id}.parquet"


def check_video_ids(video_ids: Iterable[str], out: Location) -> None:
    """Refuse, before anything is written, a video id that would name a file outside PRED_URL (e.g. '../x')."""
    for video_id in video_ids:
        check_video_id(video_id, out.display())


def write_video_predictions(out: Location, table: pa.Table, video_id: str) -> None:
    check_video_id(video_id, out.display())  # the part file's name comes from the data: never let it leave ``out``
    buffer = io.BytesIO()
    # Dictionary encoding only where values repeat (the ids): tried on the float columns it costs half the encoding
    # time and makes the file larger.
    pq.write_table(table, buffer, use_dictionary=["video_id", "model_id"])
    write_bytes_atomic(out.fs, out.join(part_name(video_id)).path, buffer.getvalue())


def finished_videos(out: Location) -> set[str]:
    """Video ids whose prediction file is already complete under ``out``."""
    names = {name for name, kind in list_dir(out.fs, out.path) if kind == "file"}
    return {n[len("part-") : -len(".parquet")] for n in names if n.startswith("part-") and n.endswith(".parquet")}


def write_manifest(out: Location, model_id: str, video_ids: Iterable[str]) -> None:
    """Write ``_manifest.json`` last, once every video's file exists: the job is complete."""
    manifest = {
        "model_id": model_id,
        "videos": sorted(video_ids),
        "schema": [f.name for f in PREDICTION_SCHEMA],
    }
    write_bytes_atomic(out.fs, out.join(MANIFEST).path, json.dumps(manifest, indent=2).encode())


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
) -> ScoreResult:
    """Score every video into ``out_url``; videos already scored there are skipped (idempotent re-runs).

    The videos go through :func:`score_stream` (read ahead, predicted ``batch_videos`` at a time, default
    BATCH_VIDEOS, written behind); the manifest is written once every part file is.
    """
    started = time.perf_counter()
    out = resolve(out_url, storage_options)
    check_compatible(bundle, feature_names, out.display())
    out.fs.makedirs(out.path, exist_ok=True)
    done = finished_videos(out)
    ids: list[str] = []
    skipped = 0

    def to_score() -> Iterator[Video]:
        nonlocal skipped
        for video in tqdm(videos, total=total, desc="scoring", unit="video", disable=not progress):
            ids.append(video.video_id)
            if video.video_id in done:
                skipped += 1
                continue
            yield video

    frames = sum(n for _, n in score_stream(bundle, to_score(), out, batch_videos=batch_videos))
    write_manifest(out, bundle.model_id, ids)
    return ScoreResult(out.url, len(ids), frames, skipped, time.perf_counter() - started)


def score_stream(
    bundle: ModelBundle, videos: Iterable[Video], out: Location, *, batch_videos: int | None = None
) -> list[tuple[str, int]]:
    """Predict every video of ``videos`` and write its part file under ``out``; returns (video id, frames) of each.

    ``videos`` is iterated on a background thread up to BATCH_FRAMES frames ahead, the videos are predicted in
    batches of up to ``batch_videos`` (default BATCH_VIDEOS; :func:`video_batches`, :func:`predict_tracks`) and
    written on another thread, at most a batch behind. Returns once every file is written; the first error of any of
    the three is raised here.

    Meanwhile the model runs on :func:`model_threads` of torch's threads, one fewer than torch's setting: that core
    is left to the reading and writing threads. An OpenMP team sharing its cores with them waits, at each of the
    LSTM's time steps, for a member the scheduler has parked (on a 2-core machine 2 threads scored a third slower
    than 1).
    """
    model_id = bundle.model_id
    size = max(1, batch_videos or BATCH_VIDEOS)
    scored: list[tuple[str, int]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(model_threads())
    try:
        with ReadAhead(videos, max_frames=BATCH_FRAMES) as incoming, BackgroundWriter(size) as writer:
            for batch in video_batches(incoming, max_videos=size, max_frames=BATCH_FRAMES):
                for video, tracks in zip(batch, predict_tracks(bundle, [v.features for v in batch]), strict=True):
                    writer.submit(_write_tracks, out, video, tracks, model_id)
                    scored.append((video.video_id, video.num_frames))
    finally:
        torch.set_num_threads(threads)
    return scored


def model_threads() -> int:
    """torch threads the model gets while :func:`score_stream` reads and writes: one fewer than torch's setting."""
    return max(1, torch.get_num_threads() - 1)


def _write_tracks(out: Location, video: Video, tracks: Tracks, model_id: str) -> None:
    write_video_predictions(out, tracks_table(video, tracks, model_id), video.video_id)


class ReadAhead:
    """Iterates ``items`` on a background thread ahead of the consumer, so that reading overlaps the consumer's work;
    the reader waits while ``max_frames`` frames or more are ready. Use as a context manager; an error raised by
    ``items`` is raised in the consumer, and leaving the block early stops the reader."""

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
    """Runs write tasks one after another on a background thread, at most ``max_pending`` of them queued: submit()
    waits for the oldest beyond that (bounded memory) and raises its error. Leaving the block waits for every task and
    raises the first error; leaving it on an error cancels the tasks not yet started."""

    def __init__(self, max_pending: int) -> None:
        self._max_pending = max(1, max_pending)
        self._pending: deque[Future[None]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="affect-score-write")

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
) -> ScoreResult:
    """Score a dataset (or bare features URL) with a model bundle in this process, streaming one video at a time.

    The bundle's feature set is selected from the dataset when it holds several; unknown splits and video ids that
    would escape ``out_url`` are refused before anything is written.
    """
    from affect_core.artifact import load_bundle
    from affect_core.data.dataset import dataset_info, iter_videos

    info = dataset_info(data_url, storage_options=storage_options)
    unknown = [s for s in splits or [] if s not in info.videos]
    if unknown:
        raise AffectError(f"{info.url}: split {unknown[0]!r} has no videos; available: {', '.join(info.videos)}")
    bundle = load_bundle(model_url, storage_options)
    feature_set = bundle.feature_set if bundle.feature_set in info.feature_sets else None
    names = list(info.feature_names)
    if feature_set is not None and names:
        lo, hi = info.feature_sets[feature_set]
        names = names[lo:hi]
    wanted = [v for s, ids in info.videos.items() if not splits or s in splits for v in ids]
    check_video_ids(wanted, resolve(out_url, storage_options))
    videos = iter_videos(data_url, splits=splits or None, feature_set=feature_set, storage_options=storage_options)
    return score_videos(
        bundle,
        videos,
        out_url,
        feature_names=names,
        storage_options=storage_options,
        progress=progress,
        total=len(wanted),
    )


def read_predictions(pred_url: str, storage_options: dict[str, Any] | None = None) -> dict[str, pa.Table]:
    """Prediction tables per video id from PRED_URL."""
    loc = resolve(pred_url, storage_options)
    if not exists(loc.fs, loc.path):
        raise AffectError(f"{loc.display()}: no predictions here")
    out = {}
    for video_id in sorted(finished_videos(loc)):
        data = read_bytes(loc.fs, loc.join(part_name(video_id)).path)
        out[video_id] = pq.read_table(io.BytesIO(data))
    if not out:
        raise AffectError(f"{loc.display()}: no prediction files (part-*.parquet) here")
    return out


def evaluate_predictions(
    predictions: dict[str, pa.Table], videos: Iterable[Video]
) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {dimension: {ccc, rmse, pcc, sequences}}}: per sequence, then averaged over a split's sequences.

    Frames are matched by frame index; a labelled video without predictions is an error (the evaluation would be
    silently partial otherwise).
    """
    per: dict[str, dict[str, list[dict[str, float]]]] = {}
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
            per.setdefault(video.split, {}).setdefault(dim, []).append(sequence_metrics(aligned, gold))
    result: dict[str, dict[str, dict[str, float]]] = {}
    for split, dims in per.items():
        result[split] = {}
        for dim, rows in dims.items():
            result[split][dim] = {**average_over_sequences(rows), "sequences": float(len(rows))}
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
