"""Decoding: the frames of one video file as grey-level images with their timestamps, streamed (PyAV, FFmpeg).

Frames are decoded one at a time and handed on; nothing holds the whole video. A video must have a video stream, at
least one frame and a constant frame rate: every frame's timestamp lies within a quarter of a frame of the grid
``t0 + i / fps``. Anything else is an AffectError naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, Any

import numpy as np

from affect_core.errors import fail

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")
# A frame further than this share of a frame step from its place on the constant-rate grid means a variable rate.
GRID_TOLERANCE = 0.25


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded frame. gray: (H, W) uint8; index: 0-based decode order; time_s: presentation time in seconds."""

    index: int
    time_s: float
    gray: np.ndarray


@dataclass(frozen=True)
class StreamInfo:
    """What the container says about the video stream (``frames``: declared, else estimated from the duration; 0 when
    the container tells neither)."""

    width: int
    height: int
    fps: float
    frames: int
    codec: str


def _open(source: str | IO[bytes], where: str) -> Any:
    import av

    try:
        return av.open(source, mode="r")
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        if _is_empty(source):
            raise fail(where, "empty file (0 bytes); expected a video file") from None
        raise fail(where, f"cannot be read as a video ({type(exc).__name__}); expected a video file") from None


def _is_empty(source: str | IO[bytes]) -> bool:
    try:
        if isinstance(source, str):
            return os.path.getsize(source) == 0
        source.seek(0, os.SEEK_END)
        return source.tell() == 0
    except (OSError, ValueError):
        return False


def _rate(stream: Any) -> Fraction | None:
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def probe(source: str | IO[bytes], where: str) -> StreamInfo:
    """The video stream's size, frame rate and declared frame count, without decoding frames."""
    container = _open(source, where)
    try:
        stream = _video_stream(container, where)
        rate = _rate(stream)
        frames = int(stream.frames or 0)
        if not frames and rate:  # containers without a frame count (mkv, webm): from the duration
            if stream.duration is not None and stream.time_base is not None:
                frames = round(float(stream.duration * stream.time_base) * float(rate))
            elif container.duration is not None:
                frames = round(container.duration / 1_000_000 * float(rate))
        return StreamInfo(
            int(stream.codec_context.width),
            int(stream.codec_context.height),
            float(rate) if rate else 0.0,
            frames,
            str(stream.codec_context.name),
        )
    finally:
        container.close()


def _video_stream(container: Any, where: str) -> Any:
    if not container.streams.video:
        raise fail(where, "no video stream; expected a file with a video track")
    return container.streams.video[0]


def decode_frames(source: str | IO[bytes], where: str, *, threads: int = 0) -> Iterator[DecodedFrame]:
    """Stream the frames of ``source`` (a path or a binary file object) in presentation order.

    Yields DecodedFrame with gray (H, W) uint8. Raises AffectError (message naming ``where``) for an unreadable file,
    a file without a video stream, a stream without frames, or a variable frame rate (checked as frames arrive).
    threads: FFmpeg decoding threads (0: FFmpeg's choice).
    """
    import av

    container = _open(source, where)
    try:
        stream = _video_stream(container, where)
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        rate = _rate(stream)
        if rate is None:
            raise fail(where, "the video stream has no frame rate; expected a constant-rate video")
        step = 1.0 / float(rate)
        first: float | None = None
        index = 0
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    raise fail(where, f"frame {index} has no timestamp; expected timestamped frames")
                time_s = float(frame.pts * frame.time_base)
                if first is None:
                    first = time_s
                offset = (time_s - first) / step - index
                if abs(offset) > GRID_TOLERANCE:
                    raise fail(
                        where,
                        f"frame {index} at {time_s:.4f} s is {offset:+.2f} frames off the {float(rate):g} fps grid "
                        "(variable frame rate); expected a constant frame rate (re-encode with a fixed rate)",
                    )
                yield DecodedFrame(index, round(time_s, 9), frame.to_ndarray(format="gray"))
                index += 1
        except av.FFmpegError as exc:
            problem = f"decoding failed at frame {index} ({type(exc).__name__}); expected a readable video"
            raise fail(where, problem) from None
        if index == 0:
            raise fail(where, "the video stream has no frames; expected at least one decodable frame")
    finally:
        container.close()


def frame_rate(source: str | IO[bytes], where: str) -> float:
    """The constant frame rate of the video stream in frames per second."""
    fps = probe(source, where).fps
    if fps <= 0:
        raise fail(where, "the video stream has no frame rate; expected a constant-rate video")
    return fps
