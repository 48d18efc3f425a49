"""Face detection and tracking: dlib's HOG face detector (compiled into the dlib wheel, no model file) every few
frames, boxes interpolated between detections.

dlib's detector is five HOG filters in one: a frontal face, faces turned left and right, and frontal faces tilted
left and right, so a head turned or tilted by up to about 30 degrees is still found. Its window is 80 x 80 pixels,
so the frame is resized to ``80 / min_face_share`` rows (bilinear) and a face of ``min_face_share`` of the frame
height fills the window; smaller detections are dropped. That resize sets the cost (a 640x360 frame: about 20 ms
per key frame on one core).

Of several detections the face is the one that continues the last face found (overlapping it, at least half its
area), else the largest (the person in front of the camera) if it is at least half that area; otherwise the face is
taken as hidden. So a smaller detection in the background, or a part of a face behind a hand, neither takes over nor
makes the box jump. The last face is forgotten after FORGET_KEY_FRAMES key frames without one.

Between two key frames (every ``detect_every`` frames, and always the last frame) the box moves linearly from one
detection to the next; a frame between a key frame with a face and one without has no face, so no-face stretches are
never bridged. The tracker holds at most ``detect_every`` frames while it waits for the next key frame.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from affect_core.video.config import VideoConfig
from affect_core.video.decode import DecodedFrame

WINDOW = 80  # dlib's HOG detector window, in pixels of the image it scans
FORGET_KEY_FRAMES = 10


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
def _hog() -> object:
    import dlib

    return dlib.get_frontal_face_detector()


def shrink(gray: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) -> (H // factor, W // factor) float32 block means in [0, 1]."""
    h, w = (gray.shape[0] // factor) * factor, (gray.shape[1] // factor) * factor
    blocks = gray[:h, :w].reshape(h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float32) / np.float32(255.0)


class _FacePicker:
    """Picks the face among a frame's detections (``detect_all``, in subclasses)."""

    def __call__(self, gray: np.ndarray, previous: Box | None = None) -> Box | None:
        """gray: (H, W) uint8 -> the face's Box in the frame's pixel coordinates, or None; ``previous``: the face's box
        at the last key frame, which a detection overlapping it continues."""
        found = self.detect_all(gray)
        if not found:
            return None
        largest = max(found, key=lambda b: (b.height * b.width, -b.top, -b.left))
        if previous is None:
            return largest
        size = 0.5 * previous.height * previous.width
        near = [b for b in found if iou(b, previous) > 0.2 and b.height * b.width >= size]
        if near:
            return max(near, key=lambda b: (iou(b, previous), b.height))
        # The face jumped, or it is hidden (a hand, a turn) and what is left is a part of it or the background.
        return largest if largest.height * largest.width >= size else None

    def detect_all(self, gray: np.ndarray) -> list[Box]:
        raise NotImplementedError


class FaceDetector(_FacePicker):
    """The face of a grey frame (the largest, or the one continuing the last face found), or None.

    min_face_share: the smallest face searched for, as a share of the frame height (it sets the size of the image
    scanned, and so the cost). threshold: dlib's score a detection must pass (0: dlib's default; lower finds more
    faces and more false ones).
    """

    def __init__(self, *, min_face_share: float = 0.2, threshold: float = 0.0) -> None:
        if not 0 < min_face_share <= 1:
            raise ValueError("min_face_share must lie in (0, 1]")
        self.min_face_share = min_face_share
        self.threshold = threshold

    def detect_all(self, gray: np.ndarray) -> list[Box]:
        """gray: (H, W) uint8 -> every detection's Box in the frame's pixel coordinates."""
        import dlib

        height, width = gray.shape
        rows = int(math.ceil(WINDOW / self.min_face_share))
        scale = height / rows
        cols = max(1, int(round(width / scale)))
        if cols < WINDOW:
            return []
        factor = height // rows
        if factor >= 2:  # a large frame is block-averaged first: the bilinear resize alone would alias
            gray = (shrink(gray, factor) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)
        image = dlib.resize_image(np.ascontiguousarray(gray, dtype=np.uint8), rows, cols)
        rects, _, _ = _hog().run(image, 0, self.threshold)
        smallest = self.min_face_share * height
        boxes = []
        for r in rects:
            top, left = r.top() * scale, r.left() * scale
            box_h, box_w = (r.bottom() - r.top() + 1) * scale, (r.right() - r.left() + 1) * scale
            if min(box_h, box_w) >= 0.9 * smallest:
                boxes.append(Box(float(top), float(left), float(box_h), float(box_w)))
        return boxes


@functools.cache
def _cascade() -> object:
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


class LbpCascadeDetector(_FacePicker):
    """scikit-image's LBP frontal-face cascade on a copy of the frame shrunk to about 180 rows: the detector of
    feature version 1, kept to measure against (benchmarks/video_extract.py). It misses tilted and turned faces and
    takes some textures for faces."""

    def __init__(self, *, min_face_share: float = 0.2, scale_factor: float = 1.2, min_neighbours: int = 3) -> None:
        self.min_face_share = min_face_share
        self.scale_factor = scale_factor
        self.min_neighbours = min_neighbours

    def detect_all(self, gray: np.ndarray) -> list[Box]:
        factor = max(1, int(round(gray.shape[0] / 180)))
        small = shrink(gray, factor)
        side = min(small.shape)
        smallest = max(24, int(self.min_face_share * small.shape[0]))
        if smallest > side:
            return []
        found = _cascade().detect_multi_scale(
            small,
            scale_factor=self.scale_factor,
            step_ratio=1,
            min_size=(smallest, smallest),
            max_size=(side, side),
            min_neighbor_number=self.min_neighbours,
        )
        return [
            Box(float(d["r"] * factor), float(d["c"] * factor), float(d["height"] * factor), float(d["width"] * factor))
            for d in found
        ]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    rows = max(0.0, min(a.top + a.height, b.top + b.height) - max(a.top, b.top))
    cols = max(0.0, min(a.left + a.width, b.left + b.width) - max(a.left, b.left))
    inter = rows * cols
    return inter / (a.height * a.width + b.height * b.width - inter)


def track_faces(
    frames: Iterable[DecodedFrame], detector: _FacePicker, *, detect_every: int = 5
) -> Iterator[tuple[DecodedFrame, Box | None]]:
    """Pair every frame with its face box (None: no face), detecting on every ``detect_every``-th frame and the last.

    Frames come out in order, at most ``detect_every`` frames after they went in.
    """
    if detect_every < 1:
        raise ValueError("detect_every must be at least 1")
    pending: list[DecodedFrame] = []
    last_key: tuple[DecodedFrame, Box | None] | None = None
    last_face: Box | None = None
    misses = 0

    def detect(gray: np.ndarray) -> Box | None:
        nonlocal last_face, misses
        box = detector(gray, last_face)
        misses = 0 if box is not None else misses + 1
        if box is not None or misses > FORGET_KEY_FRAMES:
            last_face = box
        return box

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
            yield from flush(frame, detect(frame.gray))
            latest = None
        else:
            pending.append(frame)
    if latest is not None:
        pending.pop()  # the last frame is a key frame
        yield from flush(latest, detect(latest.gray))


def detector_for(config: VideoConfig) -> FaceDetector | LbpCascadeDetector:
    """The face detector a video config names (``config.face_detector``), searching faces of ``min_face_share``."""
    if config.face_detector == "lbp-cascade":
        return LbpCascadeDetector(min_face_share=config.min_face_share)
    return FaceDetector(min_face_share=config.min_face_share)
