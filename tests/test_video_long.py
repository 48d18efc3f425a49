"""Long videos: scored piece by piece in memory flat in their length, with the rows of the one-pass path (the LSTM's
and the filter's state carried across pieces, LGBP-TOP's temporal context across cuts by overlap, the alignment a
streaming convolution); cut into segments extracted in parallel by Ray tasks, the same rows again; ``affect score``
takes that path for a video longer than the threshold."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from affect_core.config import load_run_config
from affect_core.data.dataset import ingest, read_corpus
from affect_core.experiment import train_run
from affect_core.scoring import read_predictions
from affect_core.synth.video import VideoSynthConfig, scene_frames, write_clip, write_video_corpus
from affect_core.video.config import VideoConfig
from affect_core.video.layout import VideoJob
from affect_core.video.score import score_video_root
from affect_core.video.segments import StreamingGrid, feature_pieces, predicted_pieces
from affect_core.video.stored import attach_to_bundle
from affect_core.video.timegrid import features_on_grid
from affect_core.video.transform import load_bundle_transform

FAST = VideoConfig(face_size=32, wavelengths=(3.0, 6.0), orientations=2, blocks=2, pca_share=0.95)
CLIPS = VideoSynthConfig(videos_per_split=1, frames=40, width=160, height=96, no_face_share=0.0)
COLUMNS = ("frame", "time_s", "arousal", "arousal_var", "face")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 25 fps LSTM-KF video model with a learned alignment (one epoch), its video transform in its bundle."""
    base = tmp_path_factory.mktemp("long")
    write_video_corpus(CLIPS, base / "root")
    ingest(str(base / "root"), str(base / "dataset"), layout="video", video_config=FAST, progress=False)
    config = load_run_config(None, model="lstm-kf", align="adaptive", epochs=1)
    outputs = train_run(
        read_corpus(str(base / "dataset"), splits=None),
        str(base / "run"),
        config,
        dimension="arousal",
        seeds=1,
        progress=False,
    )
    assert attach_to_bundle(str(base / "dataset"), outputs["model"])
    return Path(outputs["model"])


def long_clip(path: Path, seconds: float, *, fps: float = 25.0, width: int = 96, height: int = 64) -> Path:
    """A generated scene of ``seconds``, its face out of the picture for a stretch in the middle."""
    times = np.arange(round(seconds * fps)) / fps
    frames = scene_frames(times, width=width, height=height)
    middle = (times > seconds * 0.4) & (times < seconds * 0.5)
    for i in np.flatnonzero(middle):
        frames[i] = np.full_like(frames[i], 90)
    write_clip(path, frames, fps)
    return path


def gop_clip(path: Path, frames: int, gop: int, *, width: int = 96, height: int = 64) -> Path:
    """A generated scene of ``frames`` at 25 fps with a key frame every ``gop`` frames (so a seek skips decoding)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "16", "preset": "veryfast", "g": str(gop), "keyint_min": str(gop)}
        for gray in scene_frames(np.arange(frames) / 25.0, width=width, height=height):
            for packet in stream.encode(av.VideoFrame.from_ndarray(gray, format="gray").reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def one_pass(model: Path, root: Path, out: Path):
    score_video_root(str(root), str(model), str(out), progress=False, long_video_frames=None)
    return read_predictions(str(out))["clip"]


def assert_same_rows(got, expected) -> None:
    assert got.num_rows == expected.num_rows
    for column in COLUMNS:
        a, b = got.column(column).to_numpy(zero_copy_only=False), expected.column(column).to_numpy(zero_copy_only=False)
        if a.dtype == bool:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


def test_the_grid_placed_in_pieces_is_the_whole_videos_grid() -> None:
    rng = np.random.default_rng(0)
    times = np.cumsum(np.r_[0.013, np.where(rng.random(400) < 0.2, 0.05, 0.0333)])
    times[150:] += 0.4  # a hole
    rows = rng.normal(size=(times.shape[0], 3)).astype(np.float32)
    rows[rng.random(times.shape[0]) < 0.1] = np.nan
    grid, expected = features_on_grid(times, rows, 25.0)
    placer = StreamingGrid(25.0)
    parts = [placer.push(times[a : a + 37], rows[a : a + 37]) for a in range(0, times.shape[0], 37)]
    parts.append(placer.finish())
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), grid)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), expected, atol=1e-6)


def synthetic_pieces(frames: int, width: int, *, piece: int, seed: int = 0):
    """Feature pieces of a video of ``frames`` decoded frames at a variable rate (33 and 50 ms steps) with a 2 s hole
    and frames without a face, as the extractor hands them over: no decoding, so long videos are cheap."""
    from affect_core.video.extract import VideoFeatures

    rng = np.random.default_rng(seed)
    times = np.round(np.cumsum(np.r_[0.0, np.where(rng.random(frames - 1) < 0.2, 0.05, 0.0333)]), 6)
    times[frames // 2 :] += 2.0
    rows = rng.normal(size=(frames, width)).astype(np.float32)
    rows[rng.random(frames) < 0.1] = np.nan
    boxes = np.zeros((frames, 4), np.float32)
    whole = VideoFeatures(times, rows, boxes, 30.0)
    parts = (
        VideoFeatures(times[a : a + piece], rows[a : a + piece], boxes[a : a + piece], 30.0)
        for a in range(0, frames, piece)
    )
    return whole, parts


def test_pieces_through_grid_model_and_frames_equal_one_pass_in_bounded_memory(model: Path) -> None:
    from affect_core.artifact import load_bundle
    from affect_core.scoring.pipeline import predict_tracks
    from affect_core.scoring.predictions import _written
    from affect_core.video.score import grid_video

    bundle = load_bundle(str(model), device="cpu")
    width = len(bundle.feature_names)
    whole, parts = synthetic_pieces(700, width, piece=50)
    video = grid_video(VideoJob("v", "test", "v", "v"), whole, bundle.fps)
    times, face, expected = _written(video, predict_tracks(bundle, [video.features])[0])
    got = list(predicted_pieces(bundle, parts, bundle.fps, name="v"))
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), times)
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), face)
    for dim, (level, variance) in expected.items():
        np.testing.assert_allclose(np.concatenate([g[2][dim][0] for g in got]), level, atol=2e-5)
        np.testing.assert_allclose(np.concatenate([g[2][dim][1] for g in got]), variance, atol=2e-5, rtol=1e-5)

    # Memory: the peak of the Python allocations while 4x more frames stream through does not grow with them (the
    # one-pass path holds the whole video's features, frames x width float32, and their float64 copy on the grid).
    peaks = []
    for frames in (2_000, 8_000):
        _, parts = synthetic_pieces(frames, width, piece=200)
        tracemalloc.start()
        for _ in predicted_pieces(bundle, parts, bundle.fps, name="v"):
            pass
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.2 * peaks[0], peaks
    assert peaks[1] < 8_000 * width * 12, peaks


def test_affect_score_takes_a_long_clip_in_pieces_with_the_one_pass_rows(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "videos").mkdir(parents=True)
    long_clip(root / "videos" / "clip.mp4", 8.0)  # 200 frames, 20 without a face
    expected = one_pass(model, root, tmp_path / "whole")
    assert not expected.column("face").to_numpy(zero_copy_only=False).all()
    got = score_video_root(
        str(root), str(model), str(tmp_path / "pieces"), progress=False, long_video_frames=100, piece_frames=48
    )
    assert got.frames == expected.num_rows and got.videos == 1
    assert_same_rows(read_predictions(str(tmp_path / "pieces"))["clip"], expected)


def test_a_segment_is_decoded_from_the_key_frame_before_it_with_the_rows_of_the_whole_video(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import affect_core.video.decode as decode
    from affect_core.video.layout import extract_job
    from affect_core.video.segments import extract_segment

    path = str(gop_clip(tmp_path / "gop.mp4", 160, 25))
    transform = load_bundle_transform(str(model))
    whole = extract_job(VideoJob("v", "test", path, path), transform)
    decoded = []
    plain = decode.decode_frames

    def counted(*args, **kwargs):
        for frame in plain(*args, **kwargs):
            decoded.append(kwargs.get("seek_s"))
            yield frame

    monkeypatch.setattr(decode, "decode_frames", counted)
    part = extract_segment(VideoJob("v", "test", path, path, start=110, stop=140), transform)
    np.testing.assert_array_equal(part.time_s, whole.time_s[110:140])
    np.testing.assert_allclose(part.features, whole.features[110:140], atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(part.boxes, whole.boxes[110:140])
    # The window reaches back to frame 110 - context - detect_every; the key frame at 100 is where decoding began.
    sought = [s for s in decoded if s is not None]
    assert sought and len(sought) <= 160 - 100, len(sought)


def test_segments_extracted_by_ray_tasks_give_the_one_pass_rows(model: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from tuning.video_extract import ray_mapper

    root = tmp_path / "root"
    (root / "videos").mkdir(parents=True)
    long_clip(root / "videos" / "clip.mp4", 3.6)  # 90 frames: three segments of 30
    expected = one_pass(model, root, tmp_path / "whole")
    path = str(root / "videos" / "clip.mp4")
    job = VideoJob("clip", "test", path, path)
    transform = load_bundle_transform(str(model))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False)
    try:
        mapper = ray_mapper(segment_frames=30)
        pieces = list(feature_pieces(job, transform, mapper=mapper))
        assert [len(p.time_s) for p in pieces] == [30, 30, 30]
        got = score_video_root(
            str(root), str(model), str(tmp_path / "ray"), progress=False, mapper=mapper, long_video_frames=60
        )
    finally:
        ray.shutdown()
    assert got.frames == expected.num_rows
    assert_same_rows(read_predictions(str(tmp_path / "ray"))["clip"], expected)
