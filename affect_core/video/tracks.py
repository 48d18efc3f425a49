"""Several people: every face of a video tracked across frames, one track per person.

Faces are detected on every ``detect_every``-th frame and the last (the key frames, as for the single face), every
face of a key frame (``FaceDetector.detect_all``). Each face continues the open track it matches best: pairs are taken
greedily by intersection over union, and a pair whose boxes overlap less than GATE_IOU still matches when their centres
lie within GATE_CENTRE of the track's box side and their sizes differ by less than a factor of 2 (a head moving fast
between key frames). A face matching no track starts a new one; a track unseen for FORGET_KEY_FRAMES key frames ends
(a face found after that is a new track). Between two key frames a track's box moves linearly, as the single-face
tracker's does; a frame between a key frame where the track is seen and one where it is not has no face for it.

Tracks seen on fewer than MIN_KEY_FRAMES key frames (a passing false detection) are dropped unless nothing else is
left. Track 0 is the principal face (seen on the most key frames, then the largest); the others follow by their first
key frame, then from left to right.

Only the boxes are kept: (tracks, frames, 4) float32, 16 bytes per frame and track; the frames themselves are not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from affect_core.video.decode import DecodedFrame
from affect_core.video.detect import FORGET_KEY_FRAMES, Box, iou

GATE_IOU = 0.2
GATE_CENTRE = 0.75
MIN_KEY_FRAMES = 2


@dataclass
class FaceTracks:
    """Every face track of one video. time_s: (N,) the decoded frames' timestamps; boxes: (K, N, 4) float32 top, left,
    height, width per track and decoded frame (NaN: the track has no face there), track 0 the principal face."""

    time_s: np.ndarray
    boxes: np.ndarray

    @property
    def count(self) -> int:
        return int(self.boxes.shape[0])

    def centre_x(self) -> np.ndarray:
        """(K,) each track's mean horizontal box centre over the frames where it is seen (NaN: never seen)."""
        centre = self.boxes[:, :, 1] + self.boxes[:, :, 3] / 2
        seen = np.isfinite(centre)
        total = np.where(seen, centre, 0.0).sum(axis=1)
        return np.where(seen.any(axis=1), total / np.maximum(seen.sum(axis=1), 1), np.nan)


def _centre(box: Box) -> tuple[float, float]:
    return box.top + box.height / 2, box.left + box.width / 2


def matches(track: Box, face: Box) -> float:
    """How well ``face`` continues a track last seen at ``track``: its IoU, or a small positive score for a face
    outside the overlap gate but within the centre gate; 0 when it does not continue the track."""
    overlap = iou(track, face)
    if overlap >= GATE_IOU:
        return overlap
    side = (track.height + track.width) / 2
    (ty, tx), (fy, fx) = _centre(track), _centre(face)
    ratio = (face.height * face.width) / (track.height * track.width)
    if np.hypot(ty - fy, tx - fx) <= GATE_CENTRE * side and 0.5 <= ratio <= 2.0:
        return 1e-3 + overlap
    return 0.0


def associate(open_tracks: dict[int, Box], faces: list[Box]) -> dict[int, int]:
    """{face index: track id} for the faces that continue an open track (greedy, best match first, one face per
    track and one track per face)."""
    pairs = sorted(
        ((matches(box, face), tid, n) for tid, box in open_tracks.items() for n, face in enumerate(faces)),
        key=lambda p: (-p[0], p[1], p[2]),
    )
    taken: dict[int, int] = {}
    used: set[int] = set()
    for score, tid, n in pairs:
        if score <= 0:
            break
        if n in taken or tid in used:
            continue
        taken[n] = tid
        used.add(tid)
    return taken


def track_people(frames: Iterable[DecodedFrame], detector: object, *, detect_every: int = 5) -> FaceTracks:
    """Track every face of ``frames`` (``detector.detect_all(gray) -> list[Box]``) on every ``detect_every``-th frame
    and the last; returns the tracks' boxes on every decoded frame (module docstring)."""
    if detect_every < 1:
        raise ValueError("detect_every must be at least 1")
    times: list[float] = []
    keys: list[int] = []  # key frames' indices
    seen: dict[int, dict[int, Box]] = {}  # track id -> {key frame position: box}
    last: dict[int, tuple[int, Box]] = {}  # open track id -> (key position last seen, box)
    last_gray: np.ndarray | None = None
    last_index = -1

    def detect(index: int, gray: np.ndarray) -> None:
        position = len(keys)
        keys.append(index)
        faces = list(detector.detect_all(gray))  # type: ignore[attr-defined]
        for tid in [t for t, (p, _) in last.items() if position - p > FORGET_KEY_FRAMES]:
            del last[tid]
        taken = associate({t: b for t, (_, b) in last.items()}, faces)
        for n, face in enumerate(faces):
            tid = taken.get(n)
            if tid is None:
                tid = len(seen)
                seen[tid] = {}
            seen[tid][position] = face
            last[tid] = (position, face)

    for frame in frames:
        times.append(frame.time_s)
        last_index = frame.index
        if frame.index % detect_every == 0:
            detect(frame.index, frame.gray)
            last_gray = None
        else:
            last_gray = frame.gray
    if last_gray is not None:
        detect(last_index, last_gray)
    count = len(times)
    offset = last_index + 1 - count  # the first decoded frame's index (0 unless a window was decoded)
    kept = [t for t in seen if len(seen[t]) >= MIN_KEY_FRAMES] or sorted(seen, key=lambda t: -len(seen[t]))[:1]
    boxes = np.full((len(kept), count, 4), np.nan, np.float32)
    for row, tid in enumerate(kept):
        at = seen[tid]
        for position, box in at.items():
            boxes[row, keys[position] - offset] = (box.top, box.left, box.height, box.width)
            following = at.get(position + 1)
            if following is None or position + 1 >= len(keys):
                continue
            a, b = keys[position], keys[position + 1]
            for index in range(a + 1, b):
                lerped = box.lerp(following, (index - a) / (b - a))
                boxes[row, index - offset] = (lerped.top, lerped.left, lerped.height, lerped.width)
    order = _order(boxes)
    return FaceTracks(np.asarray(times, np.float64), boxes[order] if len(order) else boxes)


def _order(boxes: np.ndarray) -> list[int]:
    """Track order: the principal (most frames with a face, then the largest mean area) first, then by first frame
    seen, then from left to right."""
    if not len(boxes):
        return []
    present = np.isfinite(boxes[:, :, 0])
    area = np.where(present, boxes[:, :, 2] * boxes[:, :, 3], 0.0).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    principal = max(range(len(boxes)), key=lambda k: (int(present[k].sum()), float(area[k]), -k))
    first = [int(np.argmax(p)) if p.any() else len(p) for p in present]
    left = [float(np.nanmean(b[:, 1])) if np.isfinite(b[:, 1]).any() else 0.0 for b in boxes]
    rest = sorted((k for k in range(len(boxes)) if k != principal), key=lambda k: (first[k], left[k]))
    return [principal, *rest]
