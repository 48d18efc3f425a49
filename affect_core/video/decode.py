"""Decoding: the frames of one video file as grey-level images with their timestamps, streamed (PyAV, FFmpeg).

Frames are decoded one at a time and handed on; nothing holds the whole video. A video must have a video stream and at
least one frame with a presentation timestamp; its frame rate may be anything, constant or variable (phones): each
frame keeps its timestamp, and the model's time grid is laid over them later (:mod:`affect_core.video.timegrid`).
Rotation metadata is applied. Anything else is an AffectError naming the file.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, Any

import numpy as np

from affect_core.errors import fail

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")
# Frames a decoder may hand over out of presentation order, put back in order (B-frames reorder within a few frames).
REORDER_FRAMES = 8


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


def decode_frames(
    source: str | IO[bytes], where: str, *, threads: int = 0, seek_s: float | None = None
) -> Iterator[DecodedFrame]:
    """Stream the frames of ``source`` (a path or a binary file object) in presentation order, upright.

    Any frame rate, constant or variable: each frame keeps its presentation timestamp. Frames a decoder hands over a
    little out of order are put back in timestamp order (REORDER_FRAMES at most); a frame without a timestamp, or one
    whose timestamp is not after the frame shown before it, is refused. Rotation metadata (a phone's display matrix)
    is applied: the frames come out as a player shows them. Yields DecodedFrame with gray (H, W) uint8. Raises
    AffectError (message naming ``where``) for an unreadable file, a file without a video stream or a stream without
    frames. threads: FFmpeg decoding threads (0: FFmpeg's choice). seek_s: start decoding at the key frame at or
    before this presentation time (seconds) instead of the first frame; the frames' ``index`` then counts from there.
    """
    import av

    container = _open(source, where)
    try:
        stream = _video_stream(container, where)
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        if seek_s is not None and seek_s > 0:
            container.seek(int(seek_s / stream.time_base), stream=stream, backward=True, any_frame=False)
        pending: list[tuple[float, int, Any]] = []  # (time_s, arrival, frame): a min-heap on time
        shown: float | None = None
        index = arrival = 0

        def show() -> DecodedFrame:
            nonlocal shown, index
            time_s, _, frame = heapq.heappop(pending)
            if shown is not None and time_s <= shown:
                what = "repeats" if time_s == shown else "goes back before"
                raise fail(
                    where,
                    f"frame {index} at {time_s:.6f} s {what} the timestamp {shown:.6f} s of the frame shown before "
                    "it; expected increasing presentation timestamps",
                )
            shown = time_s
            out = DecodedFrame(index, round(time_s, 9), upright(frame.to_ndarray(format="gray"), frame.rotation))
            index += 1
            return out

        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    raise fail(where, f"frame {arrival} has no timestamp; expected timestamped frames")
                heapq.heappush(pending, (float(frame.pts * frame.time_base), arrival, frame))
                arrival += 1
                if len(pending) > REORDER_FRAMES:
                    yield show()
            while pending:
                yield show()
        except av.FFmpegError as exc:
            problem = f"decoding failed at frame {arrival} ({type(exc).__name__}); expected a readable video"
            raise fail(where, problem) from None
        if index == 0:
            raise fail(where, "the video stream has no frames; expected at least one decodable frame")
    finally:
        container.close()


def upright(gray: np.ndarray, rotation: float) -> np.ndarray:
    """``gray`` (H, W) turned as a player shows it: ``rotation`` is the display matrix's counter-clockwise angle in
    degrees (FFmpeg's convention; a portrait phone video stored landscape says 90 or -90), a multiple of 90."""
    turns = round(float(rotation or 0.0) / 90.0) % 4
    return np.ascontiguousarray(np.rot90(gray, turns)) if turns else gray


def check_readable(source: str | IO[bytes], where: str) -> StreamInfo:
    """Refuse, before any extraction, a file that is no video: it must open, hold a video stream and decode a first
    frame. Returns what the container says about the stream."""
    info = probe(source, where)
    if hasattr(source, "seek"):
        source.seek(0)
    frames = decode_frames(source, where)
    try:
        next(frames)
    except StopIteration:  # pragma: no cover - decode_frames raises for a stream without frames
        raise fail(where, "the video stream has no frames; expected at least one decodable frame") from None
    finally:
        frames.close()
    return info


def frame_rate(source: str | IO[bytes], where: str) -> float:
    """The frame rate the container declares for the video stream (frames per second; 0 when it declares none). It
    is a label only: frames are placed by their timestamps."""
    return probe(source, where).fps
