"""One video in, per-frame features out: decode -> detect/track -> align -> LGBP-TOP -> (PCA), streamed in chunks.

Frames flow through in chunks of CHUNK_FRAMES aligned faces; each chunk is computed with ``config.context`` frames of
overlap on each side and only its exact rows are kept, so the result equals computing the whole video at once while
memory stays flat in the video's length (the only thing that grows is the output, ``p`` floats per frame).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np
import torch

from affect_core.device import resolve_device
from affect_core.video.align import align_face
from affect_core.video.config import VideoConfig
from affect_core.video.decode import DecodedFrame, decode_frames
from affect_core.video.detect import Box, detector_for, track_faces
from affect_core.video.lgbp_top import lgbp_top
from affect_core.video.tracks import FaceTracks
from affect_core.video.transform import VideoTransform

CHUNK_FRAMES = 16


@dataclass
class FrameChunk:
    """Consecutive frames. index, time_s: (n,); boxes: (n, 4) float32 top, left, height, width (NaN: no face);
    raw: (n, D) float32 LGBP-TOP rows (NaN rows: no face)."""

    index: np.ndarray
    time_s: np.ndarray
    boxes: np.ndarray
    raw: np.ndarray


@dataclass
class VideoFeatures:
    """One video's result, one row per decoded frame. time_s: (T,) float64 presentation timestamps (increasing, at
    any rate, constant or variable); features: (T, k) float32, NaN rows for frames without a face; boxes: (T, 4)
    float32 face boxes (NaN: none); fps: the rate the container declares (a label; 0 when it declares none)."""

    time_s: np.ndarray
    features: np.ndarray
    boxes: np.ndarray
    fps: float

    @property
    def frames_without_face(self) -> int:
        return int(np.isnan(self.boxes[:, 0]).sum())


def iter_chunks(
    source: str | IO[bytes],
    where: str,
    config: VideoConfig,
    *,
    device: str | None = None,
    chunk_frames: int = CHUNK_FRAMES,
    window: tuple[int, int | None] = (0, None),
    boxes_of: np.ndarray | None = None,
    decoded: Iterator[DecodedFrame] | None = None,
) -> Iterator[FrameChunk]:
    """Stream LGBP-TOP rows of the decoded frames of ``source`` in order, ``chunk_frames`` frames at a time.
    decoded: the frames, when the caller decodes them (a long video's segment, sought to: video/segments.py).

    window: (first, stop) frame indices to process (stop None: to the end); the frames before are decoded and
    skipped, those at stop and after are not decoded. The rows within ``config.context`` frames of a window's cut, and
    the frames before its first key frame, are not those of the whole video (see :func:`extract_video`).
    boxes_of: (N, 4) float32 face boxes by decoded frame index (NaN: no face), one track of
    :func:`affect_core.video.tracks.track_people`, used instead of the single-face tracker."""
    device = str(resolve_device(device))
    detector = detector_for(config)
    margin = config.context
    index: list[int] = []
    times: list[float] = []
    boxes: list[Box | None] = []
    faces: list[np.ndarray] = []
    blank = np.zeros((config.face_size, config.face_size), np.float32)
    emitted = 0  # global index of the next row to emit
    start = 0  # global index of the buffer's first frame

    def compute(final: bool) -> FrameChunk:
        nonlocal emitted, start
        present = np.array([b is not None for b in boxes])
        stop = len(index) if final else len(index) - margin
        lo = emitted - start
        stacked = torch.from_numpy(np.stack(faces)).to(device)
        raw = lgbp_top(stacked, present, config)[lo:stop]
        chunk = FrameChunk(
            np.asarray(index[lo:stop], dtype=np.int64),
            np.asarray(times[lo:stop], dtype=np.float64),
            np.array(
                [[b.top, b.left, b.height, b.width] if b else [np.nan] * 4 for b in boxes[lo:stop]], np.float32
            ).reshape(-1, 4),
            raw,
        )
        emitted = start + stop
        drop = max(0, stop - margin)
        del index[:drop], times[:drop], boxes[:drop], faces[:drop]
        start += drop
        return chunk

    frames = _window(decoded if decoded is not None else decode_frames(source, where), *window)
    paired = (
        track_faces(frames, detector, detect_every=config.detect_every)
        if boxes_of is None
        else _given_boxes(frames, boxes_of)
    )
    for frame, box in paired:
        index.append(frame.index)
        times.append(frame.time_s)
        boxes.append(box)
        faces.append(blank if box is None else align_face(frame.gray, box, config.face_size))
        if len(index) - (emitted - start) >= chunk_frames + margin:
            yield compute(final=False)
    if emitted - start < len(index):
        yield compute(final=True)


def extract_video(
    source: str | IO[bytes],
    where: str,
    transform: VideoTransform | None,
    *,
    config: VideoConfig | None = None,
    device: str | None = None,
    chunk_frames: int = CHUNK_FRAMES,
    start: int = 0,
    stop: int | None = None,
) -> VideoFeatures:
    """Features of the frames ``start`` <= index < ``stop`` (default: every frame) of one video: PCA-reduced with
    ``transform`` (its settings), or the raw LGBP-TOP rows when ``transform`` is None (then ``config`` gives the
    settings; raw rows are large, for short clips).

    A segment (``start`` > 0 or ``stop`` given) is computed from the key frame at or before ``start`` minus the
    features' context to the key frame at or after ``stop`` plus it, so its rows are those of the whole video; only
    the choice among several faces at the segment's first key frame may differ (no earlier face to continue).
    """
    from affect_core.video.decode import frame_rate

    settings = transform.config if transform is not None else (config or VideoConfig())
    fps = frame_rate(_rewind(source), where)
    reach = settings.context + settings.detect_every
    window = (max(0, start - reach), None if stop is None else stop + reach)
    width = transform.output_dim if transform is not None else settings.raw_dim
    parts, times, boxes = [np.zeros((0, width), np.float32)], [np.zeros(0)], [np.zeros((0, 4), np.float32)]
    chunks = iter_chunks(_rewind(source), where, settings, device=device, chunk_frames=chunk_frames, window=window)
    for chunk in chunks:
        keep = (chunk.index >= start) & (chunk.index < (stop if stop is not None else np.iinfo(np.int64).max))
        if keep.any():
            parts.append(transform.apply(chunk.raw[keep]) if transform is not None else chunk.raw[keep])
            times.append(chunk.time_s[keep])
            boxes.append(chunk.boxes[keep])
    return VideoFeatures(np.concatenate(times), np.concatenate(parts), np.concatenate(boxes), fps)


def _given_boxes(frames: Iterator[DecodedFrame], boxes_of: np.ndarray) -> Iterator[tuple[DecodedFrame, Box | None]]:
    for frame in frames:
        row = boxes_of[frame.index] if frame.index < len(boxes_of) else None
        yield frame, None if row is None or not np.isfinite(row[0]) else Box(*(float(v) for v in row))


def find_tracks(source: str | IO[bytes], where: str, config: VideoConfig) -> FaceTracks:
    """Every face track of one video (:func:`affect_core.video.tracks.track_people`: a pass that keeps boxes only)."""
    from affect_core.video.tracks import track_people

    frames = decode_frames(_rewind(source), where)
    try:
        detector = detector_for(config)
        return track_people(frames, detector, detect_every=config.detect_every)
    finally:
        frames.close()


def extract_track(
    source: str | IO[bytes],
    where: str,
    transform: VideoTransform,
    boxes_of: np.ndarray,
    *,
    device: str | None = None,
    chunk_frames: int = CHUNK_FRAMES,
) -> VideoFeatures:
    """The features of one face track of a video: ``boxes_of`` (N, 4) its boxes by decoded frame (NaN: no face)."""
    from affect_core.video.decode import frame_rate

    fps = frame_rate(_rewind(source), where)
    parts, times, boxes = [np.zeros((0, transform.output_dim), np.float32)], [np.zeros(0)], [boxes_of[:0]]
    settings = transform.config
    for chunk in iter_chunks(
        _rewind(source), where, settings, device=device, chunk_frames=chunk_frames, boxes_of=boxes_of
    ):
        parts.append(transform.apply(chunk.raw))
        times.append(chunk.time_s)
        boxes.append(chunk.boxes)
    return VideoFeatures(np.concatenate(times), np.concatenate(parts), np.concatenate(boxes), fps)


def extract_tracks(
    source: str | IO[bytes],
    where: str,
    transform: VideoTransform,
    *,
    device: str | None = None,
    chunk_frames: int = CHUNK_FRAMES,
) -> list[VideoFeatures]:
    """Features of every person of one video, one VideoFeatures per face track, track 0 the principal face
    (:mod:`affect_core.video.tracks`): the faces are tracked on a first pass (boxes only), then each track is
    extracted on a pass of its own, so memory stays flat in the video's length. A video without any face gives one
    track without a face."""
    tracks = find_tracks(source, where, transform.config)
    all_boxes = tracks.boxes if tracks.count else np.full((1, len(tracks.time_s), 4), np.nan, np.float32)
    return [
        extract_track(source, where, transform, boxes_of, device=device, chunk_frames=chunk_frames)
        for boxes_of in all_boxes
    ]


def _window(frames: Iterator[DecodedFrame], first: int, stop: int | None) -> Iterator[DecodedFrame]:
    try:
        for frame in frames:
            if stop is not None and frame.index >= stop:
                return
            if frame.index >= first:
                yield frame
    finally:
        frames.close()


def sample_video(
    source: str | IO[bytes],
    where: str,
    config: VideoConfig,
    *,
    every: int,
    limit: int,
    device: str | None = None,
) -> np.ndarray:
    """Raw LGBP-TOP rows of every ``every``-th frame with a face, at most ``limit``: (n, D) float32 (for the PCA)."""
    rows: list[np.ndarray] = []
    count = 0
    for chunk in iter_chunks(source, where, config, device=device):
        keep = (chunk.index % every == 0) & np.isfinite(chunk.boxes[:, 0])
        if keep.any() and count < limit:
            picked = chunk.raw[keep][: limit - count]
            rows.append(picked)
            count += len(picked)
    return np.concatenate(rows) if rows else np.zeros((0, config.raw_dim), np.float32)


def _rewind(source: str | IO[bytes]) -> str | IO[bytes]:
    if hasattr(source, "seek"):
        source.seek(0)
    return source
