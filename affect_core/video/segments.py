"""Long videos: scored in memory flat in their length, their segments' features extracted in parallel by a mapper.

A video longer than LONG_VIDEO_FRAMES (by its container's frame count) is not extracted whole and then scored: it
flows through in pieces, each dropped once its prediction rows are made.

1. Features, in order (:func:`feature_pieces`): in this process, the extractor's chunks (LGBP-TOP computed with the
   features' temporal context on each side, so a chunk's rows are the whole video's) grouped into pieces of
   ``piece_frames`` frames; with a mapper that cuts videos into segments (Ray's, ``segment_frames``), one task per
   segment, each computed from before its first frame to after its last by the features' context
   (:func:`affect_core.video.extract.extract_video`'s ``start``/``stop``), the segments coming back in order with a
   bounded number in flight.
2. The model's grid (:class:`StreamingGrid`): each grid step is placed from the decoded frames around it as
   :func:`affect_core.video.timegrid.features_on_grid` places it, the last frames of a piece carried to the next. The
   step a hole is measured against is the coarser of the grid's and the median step of the first piece's frames
   (the whole video's median on the one-pass path; the same for a video at a constant rate).
3. The model (:func:`stream_tracks`): every model of the bundle through
   :func:`affect_core.streaming.stream_predict` (the LSTM's and the filter's state carried across pieces, the
   alignment a streaming convolution), the models in step.
4. The decoded frames (:class:`FramePlacer`): each frame takes the output at its timestamp once the grid steps on
   both sides of it are predicted, as :func:`affect_core.video.timegrid.on_frames` does.

What is held at any time is a piece of features, the grid steps and frames waiting for the alignment's window, and the
prediction rows made so far (about 40 bytes a decoded frame, written as the video's rows at its end: 7 MB for two
hours at 25 fps). The rows equal the one-pass path's within float rounding.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from affect_core.data.assemble import labels_on_frames
from affect_core.data.tracks import TIME_DECIMALS
from affect_core.video.decode import DecodedFrame
from affect_core.video.extract import CHUNK_FRAMES, VideoFeatures, iter_chunks
from affect_core.video.layout import Mapper, VideoJob, _checked_source, extract_job, segment_jobs
from affect_core.video.timegrid import on_frames
from affect_core.video.transform import VideoTransform

# Videos longer than this (frames, by the container's count) are scored in pieces: 10 minutes at 25 fps.
LONG_VIDEO_FRAMES = 15_000
# Decoded frames per piece of the in-process path.
PIECE_FRAMES = 1_024
# Grid steps and frames closer than this to a piece's last time wait for the next piece (a frame matched to a step is
# within 1 ms of it).
_MARGIN_S = 2e-3


def is_long(job: VideoJob, long_frames: int | None) -> bool:
    """Whether ``job``'s video (its container's frame count) is longer than ``long_frames`` (None: never)."""
    from affect_core.video.layout import _estimated_frames

    return bool(long_frames) and _estimated_frames(job) > int(long_frames or 0)


def feature_pieces(
    job: VideoJob,
    transform: VideoTransform,
    *,
    mapper: Mapper | None = None,
    segment_frames: int | None = None,
    piece_frames: int = PIECE_FRAMES,
    device: str | None = None,
) -> Iterator[VideoFeatures]:
    """The video's features in consecutive pieces, in order (module docstring, 1). segment_frames: cut the video into
    segments of this many frames, each extracted by one call of ``mapper`` (default: the mapper's own
    ``segment_frames``; None on both: the video is extracted here, streamed)."""
    size = segment_frames or getattr(mapper, "segment_frames", None)
    if mapper is not None and size:
        work = segment_jobs([job], size)
        yield from mapper(functools.partial(extract_segment, transform=transform, device=device), work)
        return
    yield from _local_pieces(job, transform, piece_frames=piece_frames, device=device)


class _NotConstantRate(Exception):
    """The frames after a seek are not at the container's constant rate: their indices cannot be told."""


def extract_segment(job: VideoJob, transform: VideoTransform, device: str | None = None) -> VideoFeatures:
    """The features of the segment ``job.start`` <= index < ``job.stop`` of a video, equal to
    :func:`affect_core.video.layout.extract_job`'s (the same window: the features' context and a detection interval
    on each side), decoding from the key frame before the window rather than from the video's first frame. A frame's
    index is told from its timestamp at the container's rate, each checked to follow the one before; a video whose
    frames are not at a constant rate is decoded from its start instead."""
    from affect_core.video.decode import decode_frames, probe

    if job.start == 0:
        return extract_job(job, transform, device)
    settings = transform.config
    reach = settings.context + settings.detect_every
    first, stop = max(0, job.start - reach), None if job.stop is None else job.stop + reach
    source = _checked_source(job)
    try:
        fps = probe(source, job.where).fps
        opening = decode_frames(_rewound(source), job.where)
        try:
            origin = next(opening).time_s
        finally:
            opening.close()
        if fps <= 0:
            return extract_job(job, transform, device)

        def sought() -> Iterator[DecodedFrame]:
            frames = decode_frames(_rewound(source), job.where, seek_s=origin + (first - 0.5) / fps)
            try:
                previous = None
                for frame in frames:
                    index = round((frame.time_s - origin) * fps)
                    if abs(frame.time_s - origin - index / fps) > 0.25 / fps:
                        raise _NotConstantRate
                    if previous is None and index > first or previous is not None and index != previous + 1:
                        raise _NotConstantRate
                    previous = index
                    if index >= first:
                        yield DecodedFrame(index, frame.time_s, frame.gray)
            finally:
                frames.close()

        rows, times, boxes = [], [], []
        chunks = iter_chunks(
            _rewound(source), job.where, settings, device=device, window=(first, stop), decoded=sought()
        )
        for chunk in chunks:
            keep = (chunk.index >= job.start) & (chunk.index < (job.stop if job.stop is not None else 2**62))
            if keep.any():
                rows.append(transform.apply(chunk.raw[keep]))
                times.append(chunk.time_s[keep])
                boxes.append(chunk.boxes[keep])
        return VideoFeatures(np.concatenate(times), np.concatenate(rows), np.concatenate(boxes), fps)
    except _NotConstantRate:
        return extract_job(job, transform, device)
    finally:
        if hasattr(source, "close"):
            source.close()


def _rewound(source: Any) -> Any:
    if hasattr(source, "seek"):
        source.seek(0)
    return source


def _local_pieces(
    job: VideoJob, transform: VideoTransform, *, piece_frames: int, device: str | None
) -> Iterator[VideoFeatures]:
    from affect_core.video.decode import frame_rate

    source = _checked_source(job)
    try:
        fps = frame_rate(source, job.where)
        if hasattr(source, "seek"):
            source.seek(0)
        parts: list[Any] = []
        held = 0
        chunk_frames = min(CHUNK_FRAMES, max(1, piece_frames))
        for chunk in iter_chunks(source, job.where, transform.config, device=device, chunk_frames=chunk_frames):
            parts.append(chunk)
            held += len(chunk.index)
            if held >= piece_frames:
                yield _joined(parts, transform, fps)
                parts, held = [], 0
        if parts:
            yield _joined(parts, transform, fps)
    finally:
        if hasattr(source, "close"):
            source.close()


def _joined(chunks: list[Any], transform: VideoTransform, fps: float) -> VideoFeatures:
    return VideoFeatures(
        np.concatenate([c.time_s for c in chunks]),
        transform.apply(np.concatenate([c.raw for c in chunks])),
        np.concatenate([c.boxes for c in chunks]),
        fps,
    )


class StreamingGrid:
    """Decoded frames arriving in pieces placed on the model's grid at ``fps``, equal to
    :func:`affect_core.video.timegrid.features_on_grid` over the whole video (the step of a hole: module docstring).

    push(frame times (n,), features (n, k)) and finish() return (grid times (g,), features on them (g, k) float32)
    for the next grid steps; all of them together are the whole video's grid."""

    def __init__(self, fps: float) -> None:
        self.fps = float(fps)
        self.times = np.zeros(0)
        self.rows: np.ndarray | None = None
        self.first: float | None = None
        self.step: float | None = None
        self.next = 0  # grid index of the next step to place

    def _grid(self, stop: int) -> np.ndarray:
        assert self.first is not None
        return np.round(self.first + np.arange(self.next, stop) / self.fps, TIME_DECIMALS)

    def _place(self, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.rows is not None and self.step is not None
        placed = labels_on_frames(self.times, self.rows, grid, step=self.step).astype(np.float32)
        self.next += grid.shape[0]
        return grid, placed

    def push(self, time_s: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if time_s.shape[0] == 0:
            return np.zeros(0), np.zeros((0, features.shape[1]), np.float32)
        self.times = np.concatenate([self.times, np.asarray(time_s, np.float64)])
        self.rows = features if self.rows is None else np.concatenate([self.rows, features])
        if self.first is None:
            self.first = float(self.times[0])
        if self.step is None and self.times.shape[0] > 1:
            self.step = max(float(np.median(np.diff(self.times))), 1.0 / self.fps)
        if self.step is None:
            return np.zeros(0), self.rows[:0].astype(np.float32)
        # Steps whose frames on both sides have arrived (a frame matched to a step lies within 1 ms of it).
        stop = int(np.floor((self.times[-1] - _MARGIN_S - self.first) * self.fps)) + 1
        grid = self._grid(max(stop, self.next))
        grid = grid[grid < self.times[-1] - _MARGIN_S]
        out = self._place(grid)
        # Keep the frames from the one before the next step's time (two at least).
        upcoming = self.first + self.next / self.fps
        keep = min(max(int(np.searchsorted(self.times, upcoming, side="right")) - 2, 0), self.times.shape[0] - 2)
        self.times, self.rows = self.times[keep:], self.rows[keep:]
        return out

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if self.first is None or self.rows is None:
            return np.zeros(0), np.zeros((0, 0), np.float32)
        if self.step is None:  # one frame: one grid step, itself
            self.step = 1.0 / self.fps
            if self.next == 0:
                self.next = 1
                return np.round(self.times[:1], TIME_DECIMALS), self.rows[:1].astype(np.float32)
            return np.zeros(0), self.rows[:0].astype(np.float32)
        steps = int(np.floor((float(self.times[-1]) - self.first) * self.fps + 0.5))
        return self._place(self._grid(steps + 1))


Tracks = dict[str, tuple[np.ndarray, np.ndarray]]


def stream_tracks(bundle: Any, pieces: Iterable[np.ndarray], *, name: str) -> Iterator[Tracks]:
    """Every model of ``bundle`` over the grid's rows arriving in ``pieces`` (each streamed, its state carried), in
    step: yields the tracks {dimension: (level, variance)} of consecutive grid steps, as ``bundle.predict`` on the
    whole video gives them (the calibrated variance where the bundle has a calibration)."""
    from affect_core.inference import Prediction
    from affect_core.streaming import stream_predict

    models = list(bundle.models)
    feeds = _fan_out(iter(pieces), len(models))
    outputs = [stream_predict(t.model, t.transform, feed, name=name) for t, feed in zip(models, feeds, strict=True)]
    held: list[deque[tuple[np.ndarray, np.ndarray]]] = [deque() for _ in models]
    counts = [0] * len(models)  # rows each model has yielded
    done = [False] * len(models)
    given = 0  # rows handed on

    def take(n: int) -> Tracks:
        tracks: Tracks = {}
        for m, trained in enumerate(models):
            levels, variances, need = [], [], n
            while need:
                lv, var = held[m][0]
                if lv.shape[0] <= need:
                    held[m].popleft()
                else:
                    held[m][0] = (lv[need:], var[need:])
                    lv, var = lv[:need], var[:need]
                levels.append(lv)
                variances.append(var)
                need -= lv.shape[0]
            dims = trained.model.config.affect_dimensions
            tracks.update(trained.tracks(Prediction(dims, np.concatenate(levels), np.concatenate(variances))))
        return tracks

    while not all(done):
        # The model furthest behind runs next, so that the shared feed holds a bounded look-ahead.
        m = min((i for i in range(len(models)) if not done[i]), key=lambda i: counts[i])
        try:
            levels, variances = next(outputs[m])
        except StopIteration:
            done[m] = True
            continue
        held[m].append((levels, variances))
        counts[m] += levels.shape[0]
        ready = min(counts) - given
        if ready > 0:
            yield take(ready)
            given += ready
    if min(counts) > given:
        yield take(min(counts) - given)


def _fan_out(source: Iterator[Any], n: int) -> list[Iterator[Any]]:
    """``n`` iterators over the items of ``source``, each item held until every one has taken it (itertools.tee
    holds them in blocks of 57)."""
    queues: list[deque[Any]] = [deque() for _ in range(n)]

    def feed(i: int) -> Iterator[Any]:
        while True:
            if not queues[i]:
                item = next(source, _END)
                if item is _END:
                    return
                for queue in queues:
                    queue.append(item)
            yield queues[i].popleft()

    return [feed(i) for i in range(n)]


_END = object()


class FramePlacer:
    """The model's outputs on grid steps arriving in order put on the decoded frames by their timestamps, equal to
    :func:`affect_core.video.timegrid.on_frames` over the whole video.

    add_frames(times, face) queues decoded frames; add_grid(grid times, tracks) and finish() return (times, face,
    tracks on those frames) for the next frames whose grid steps on both sides are known."""

    def __init__(self) -> None:
        self.frame_time = np.zeros(0)
        self.frame_face = np.zeros(0, bool)
        self.grid = np.zeros(0)
        self.values: Tracks = {}

    def add_frames(self, time_s: np.ndarray, face: np.ndarray) -> None:
        self.frame_time = np.concatenate([self.frame_time, time_s])
        self.frame_face = np.concatenate([self.frame_face, face])

    def add_grid(self, grid: np.ndarray, tracks: Tracks) -> tuple[np.ndarray, np.ndarray, Tracks]:
        self.grid = np.concatenate([self.grid, grid])
        for dim, (level, var) in tracks.items():
            old = self.values.get(dim, (np.zeros(0), np.zeros(0)))
            self.values[dim] = (np.concatenate([old[0], level]), np.concatenate([old[1], var]))
        if self.grid.shape[0] < 2:
            return self._none()
        count = int(np.searchsorted(self.frame_time, self.grid[-1] - _MARGIN_S, side="left"))
        out = self._place(count)
        # Keep the grid steps from the one before the next frame (two at least).
        if self.frame_time.shape[0]:
            keep = int(np.searchsorted(self.grid, self.frame_time[0], side="right")) - 2
        else:
            keep = self.grid.shape[0] - 2
        keep = min(max(keep, 0), self.grid.shape[0] - 2)
        self.grid = self.grid[keep:]
        self.values = {d: (lv[keep:], var[keep:]) for d, (lv, var) in self.values.items()}
        return out

    def finish(self) -> tuple[np.ndarray, np.ndarray, Tracks]:
        return self._place(self.frame_time.shape[0])

    def _none(self) -> tuple[np.ndarray, np.ndarray, Tracks]:
        return np.zeros(0), np.zeros(0, bool), {d: (np.zeros(0), np.zeros(0)) for d in self.values}

    def _place(self, count: int) -> tuple[np.ndarray, np.ndarray, Tracks]:
        if count == 0 or self.grid.shape[0] == 0:
            return self._none()
        times, face = self.frame_time[:count], self.frame_face[:count]
        placed = {
            dim: (on_frames(self.grid, level, times), on_frames(self.grid, var, times))
            for dim, (level, var) in self.values.items()
        }
        self.frame_time, self.frame_face = self.frame_time[count:], self.frame_face[count:]
        return times, face, placed


def predicted_pieces(
    bundle: Any, pieces: Iterable[VideoFeatures], fps: float, *, name: str
) -> Iterator[tuple[np.ndarray, np.ndarray, Tracks]]:
    """(decoded frames' times (n,), face (n,), tracks on them) of consecutive frames of a video given as feature
    pieces, the model run on its grid at ``fps`` (the video's declared rate, else 25, when the model has none)."""
    from affect_core.scoring.predictions import has_face

    grid = StreamingGrid(fps) if fps > 0 else None
    placer = FramePlacer()
    pending: deque[np.ndarray] = deque()  # grid times waiting for the model's outputs

    def grid_rows() -> Iterator[np.ndarray]:
        nonlocal grid
        for piece in pieces:
            if grid is None:
                grid = StreamingGrid(piece.fps or 25.0)
            placer.add_frames(piece.time_s, has_face(piece.features))
            times, rows = grid.push(piece.time_s, piece.features)
            if times.shape[0]:
                pending.append(times)
                yield rows
        if grid is not None:
            times, rows = grid.finish()
            if times.shape[0]:
                pending.append(times)
                yield rows

    for tracks in stream_tracks(bundle, grid_rows(), name=name):
        n = next(iter(tracks.values()))[0].shape[0]
        times = _pop(pending, n)
        out = placer.add_grid(times, tracks)
        if out[0].shape[0]:
            yield out
    out = placer.finish()
    if out[0].shape[0]:
        yield out


def _pop(pending: deque[np.ndarray], n: int) -> np.ndarray:
    parts = []
    while n:
        head = pending[0]
        if head.shape[0] <= n:
            pending.popleft()
        else:
            pending[0] = head[n:]
            head = head[:n]
        parts.append(head)
        n -= head.shape[0]
    return np.concatenate(parts) if parts else np.zeros(0)


def long_video_rows(
    bundle: Any,
    job: VideoJob,
    transform: VideoTransform,
    *,
    mapper: Mapper | None = None,
    segment_frames: int | None = None,
    piece_frames: int = PIECE_FRAMES,
    device: str | None = None,
    dataset_version: str = "",
) -> pa.Table:
    """One long video's prediction rows (PREDICTION_SCHEMA, one per decoded frame), made piece by piece."""
    from affect_core.data.records import Video
    from affect_core.scoring.predictions import prediction_rows

    pieces = feature_pieces(
        job, transform, mapper=mapper, segment_frames=segment_frames, piece_frames=piece_frames, device=device
    )
    tables = []
    written = 0
    for times, face, tracks in predicted_pieces(bundle, pieces, bundle.fps, name=job.video_id):
        marks = np.where(face, 0.0, np.nan)[:, None].astype(np.float32)  # a NaN row: the frame had no face
        piece = Video(job.video_id, job.split, marks, times, bundle.fps)
        table = prediction_rows([piece], [tracks], bundle.model_id, dataset_version)
        frames = pa.array(np.arange(written, written + table.num_rows, dtype=np.int32))
        tables.append(table.set_column(table.schema.get_field_index("frame"), "frame", frames))
        written += table.num_rows
    from affect_core.scoring.predictions import PREDICTION_SCHEMA

    return pa.concat_tables(tables) if tables else PREDICTION_SCHEMA.empty_table()


def score_long_videos(
    bundle: Any,
    jobs: list[VideoJob],
    transform: VideoTransform,
    out: Any,
    result: Any,
    *,
    mapper: Mapper | None = None,
    piece_frames: int | None = None,
    device: str | None = None,
    failed: list[Any] | None = None,
) -> Any:
    """Score the long videos ``jobs`` into the predictions table at ``out`` (a Location) after the others (whose
    ScoreResult is ``result``; returned with these added), each piece by piece (:func:`long_video_rows`); videos this
    model already scored there are skipped. A video that cannot be read is appended to ``failed`` (a VideoFailure)."""
    import time

    from affect_core.data.delta import VideoEntry
    from affect_core.errors import AffectError
    from affect_core.scoring.predictions import FACE, PredictionTarget, PredictionWriter, plan_scoring
    from affect_core.video.layout import VideoFailure

    started = time.perf_counter()
    target = PredictionTarget(bundle.model_id, "", "")
    snap, done, replacing = plan_scoring(out, target)
    writer = PredictionWriter(out, target, snapshot=snap, replace=replacing)
    frames = skipped = 0
    try:
        for job in jobs:
            if job.video_id in done:
                skipped += 1
                continue
            try:
                table = long_video_rows(
                    bundle, job, transform, mapper=mapper, piece_frames=piece_frames or PIECE_FRAMES, device=device
                )
            except AffectError as exc:
                if failed is None:
                    raise
                failed.append(VideoFailure(job.video_id, job.where, str(exc)))
                continue
            no_face = int((~table.column(FACE).to_numpy(zero_copy_only=False)).sum())
            entry = VideoEntry(job.video_id, job.split, table.num_rows, frames_without_face=no_face)
            writer.ready += writer.files.add(table, entry)
            frames += table.num_rows
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return dataclasses.replace(
        result,
        videos=result.videos + len(jobs),
        frames=result.frames + frames,
        skipped=result.skipped + skipped,
        seconds=result.seconds + time.perf_counter() - started,
    )
