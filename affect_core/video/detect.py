"""Face detection and tracking: scikit-image's LBP frontal-face cascade (shipped in the wheel) every few frames, boxes
interpolated between detections.

The cascade runs on a copy of the frame shrunk to about DETECT_HEIGHT rows (block means), which is where its cost
is set. Of several detections the largest is the face (the person in front of the camera). Between two key frames
(every ``detect_every`` frames, and always the last frame) the box moves linearly from one detection to the next; a
frame between a key frame with a face and one without has no face, so no-face stretches are never bridged. The
tracker holds at most ``detect_every`` frames while it waits for the next key frame.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from affect_core.video.decode import DecodedFrame

DETECT_HEIGHT = 180


@dataclass(frozen=True)
class Box:
    """A face box in full-frame pixel coordinates: top row, left column, height, width (floats)."""

    top: float
    left: float
    height: float
    width: float

    def lerp(self, other: Box, weight: float) -> Box:
        """The box ``weight`` of the way from this one to ``other`` (0: this, 1: other)."""
        a = np.array([self.top, self.left, self.height, self.width])
        b = np.array([other.top, other.left, other.height, other.width])
        return Box(*(float(v) for v in a + weight * (b - a)))


@functools.cache
def _cascade() -> object:
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


def shrink(gray: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) -> (H // factor, W // factor) float32 block means in [0, 1]."""
    h, w = (gray.shape[0] // factor) * factor, (gray.shape[1] // factor) * factor
    blocks = gray[:h, :w].reshape(h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float32) / np.float32(255.0)


class FaceDetector:
    """The largest frontal face of a grey frame, or None.

    min_face_share: the smallest face searched for, as a share of the frame height (smaller faces are not searched,
    which also bounds the cascade's cost).
    """

    def __init__(self, *, min_face_share: float = 0.2, scale_factor: float = 1.2, min_neighbours: int = 3) -> None:
        self.min_face_share = min_face_share
        self.scale_factor = scale_factor
        self.min_neighbours = min_neighbours

    def __call__(self, gray: np.ndarray) -> Box | None:
        """gray: (H, W) uint8 -> the largest face's Box in the frame's pixel coordinates, or None."""
        factor = max(1, int(round(gray.shape[0] / DETECT_HEIGHT)))
        small = shrink(gray, factor)
        side = min(small.shape)
        smallest = max(24, int(self.min_face_share * small.shape[0]))
        if smallest > side:
            return None
        found = _cascade().detect_multi_scale(
            small,
            scale_factor=self.scale_factor,
            step_ratio=1,
            min_size=(smallest, smallest),
            max_size=(side, side),
            min_neighbor_number=self.min_neighbours,
        )
        if not found:
            return None
        best = max(found, key=lambda d: (d["width"] * d["height"], -d["r"], -d["c"]))
        return Box(
            float(best["r"] * factor),
            float(best["c"] * factor),
            float(best["height"] * factor),
            float(best["width"] * factor),
        )


def track_faces(
    frames: Iterable[DecodedFrame], detector: FaceDetector, *, detect_every: int = 5
) -> Iterator[tuple[DecodedFrame, Box | None]]:
    """Pair every frame with its face box (None: no face), detecting on every ``detect_every``-th frame and the last.

    Frames come out in order, at most ``detect_every`` frames after they went in.
    """
    if detect_every < 1:
        raise ValueError("detect_every must be at least 1")
    pending: list[DecodedFrame] = []
    last_key: tuple[DecodedFrame, Box | None] | None = None

    def flush(key: DecodedFrame, box: Box | None) -> Iterator[tuple[DecodedFrame, Box | None]]:
        nonlocal last_key
        if last_key is not None:
            start_frame, start_box = last_key
            span = key.index - start_frame.index
            for frame in pending:
                if start_box is None or box is None:
                    yield frame, None
                else:
                    yield frame, start_box.lerp(box, (frame.index - start_frame.index) / span)
        pending.clear()
        last_key = (key, box)
        yield key, box

    latest: DecodedFrame | None = None
    for frame in frames:
        latest = frame
        if frame.index % detect_every == 0:
            yield from flush(frame, detector(frame.gray))
            latest = None
        else:
            pending.append(frame)
    if latest is not None:
        pending.pop()  # the last frame is a key frame
        yield from flush(latest, detector(latest.gray))
