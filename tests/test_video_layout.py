"""The video layout end to end in one process: videos -> dataset (features, labels, no-face rows, the transform stored
beside it) -> a model bundle carrying the transform -> scores for every decoded frame at its timestamp."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from affect_core.config import load_run_config
from affect_core.data.dataset import dataset_info, ingest, read_corpus
from affect_core.data.readers import read_source
from affect_core.errors import AffectError
from affect_core.experiment import train_run
from affect_core.scoring import read_predictions
from affect_core.synth.video import VideoSynthConfig, write_video_corpus
from affect_core.video.config import VideoConfig
from affect_core.video.decode import decode_frames
from affect_core.video.extract import extract_video
from affect_core.video.layout import read_video_source
from affect_core.video.score import score_video_root
from affect_core.video.stored import attach_to_bundle, load_dataset_transform
from affect_core.video.transform import load_bundle_transform

FAST = VideoConfig(face_size=32, wavelengths=(3.0, 6.0), orientations=2, blocks=2, pca_share=0.95)
CLIPS = VideoSynthConfig(videos_per_split=1, frames=40, width=320, height=180, no_face_share=0.25, test_labels=True)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("layout")
    write_video_corpus(CLIPS, base / "root")
    ingest(str(base / "root"), str(base / "dataset"), layout="video", video_config=FAST, progress=False)
    return base / "root", base / "dataset"


def test_dataset_holds_features_no_face_rows_and_labels(ingested: tuple[Path, Path]) -> None:
    root, dataset = ingested
    corpus = read_corpus(str(dataset), splits=None)
    transform = load_dataset_transform(str(dataset))
    assert transform.config == FAST and corpus.feature_names == transform.feature_names
    assert [v.video_id for v in corpus.videos] == ["train_1", "dev_1", "test_1"]
    assert dataset_info(str(dataset)).layout == "video"
    for video in corpus.videos:
        assert video.num_frames == CLIPS.frames and video.fps == pytest.approx(CLIPS.fps)
        # The features are exactly what extracting the clip with the stored transform gives (scoring does that).
        fresh = extract_video(str(root / "videos" / f"{video.video_id}.mp4"), video.video_id, transform)
        np.testing.assert_allclose(video.features, fresh.features, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(video.time_s, fresh.time_s)
        no_face = np.isnan(video.features).all(axis=1)
        assert no_face.any() and not no_face.all()
        assert np.isfinite(video.features[~no_face]).all()
        with open(root / "labels" / f"{video.video_id}.csv") as handle:
            rows = list(csv.DictReader(handle))
        np.testing.assert_allclose(video.arousal, [float(r["arousal"]) for r in rows], atol=1e-6)
        np.testing.assert_allclose(video.valence, [float(r["valence"]) for r in rows], atol=1e-6)


def test_no_face_rows_follow_the_generated_no_face_runs(ingested: tuple[Path, Path]) -> None:
    from affect_core.synth.generator import generate

    _, dataset = ingested
    truth = generate(CLIPS.latent_config()).corpus
    for video, generated in zip(read_corpus(str(dataset), splits=None).videos, truth.videos, strict=True):
        missing = np.isnan(video.features[:, 0])
        planted = np.isnan(generated.features[:, 0])
        assert missing[planted].all()  # a no-face stretch is never bridged
        # A run's edges are decided every detect_every frames: frames further from them are found.
        near_run = np.convolve(planted, np.ones(2 * FAST.detect_every + 1), mode="same") > 0
        assert (~missing[~near_run]).mean() >= 0.8


def test_reingest_is_unchanged_and_the_reader_dispatch_gives_the_same_corpus(ingested: tuple[Path, Path]) -> None:
    root, dataset = ingested
    again = ingest(str(root), str(dataset), layout="video", video_config=FAST, progress=False)
    assert again.unchanged
    transform = load_dataset_transform(str(dataset))
    direct = read_video_source(str(root), transform=transform)
    stored = read_corpus(str(dataset), splits=None)
    for a, b in zip(direct.videos, stored.videos, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
    # The input-layout dispatch reads the same videos (default settings: its own PCA, the same faces).
    dispatched = read_source(str(root), "video")
    assert dispatched.video_transform is not None and dispatched.feature_dim == dispatched.video_transform.output_dim
    for a, b in zip(dispatched.videos, stored.videos, strict=True):
        np.testing.assert_array_equal(np.isnan(a.features[:, 0]), np.isnan(b.features[:, 0]))


def test_scoring_videos_gives_one_prediction_per_decoded_frame(ingested: tuple[Path, Path], tmp_path: Path) -> None:
    root, dataset = ingested
    corpus = read_corpus(str(dataset), splits=None)
    config = load_run_config(None, model="baseline", align="none", epochs=1)
    outputs = train_run(corpus, str(tmp_path / "run"), config, dimension="arousal", seeds=1, progress=False)
    with pytest.raises(AffectError, match="video_transform.safetensors: file not found"):
        score_video_root(str(root), outputs["model"], str(tmp_path / "nope"), progress=False)
    assert attach_to_bundle(str(dataset), outputs["model"])
    assert load_bundle_transform(outputs["model"]).config == FAST
    result = score_video_root(str(root), outputs["model"], str(tmp_path / "pred"), progress=False)
    assert result.videos == 3 and result.frames == 3 * CLIPS.frames
    predictions = read_predictions(str(tmp_path / "pred"))
    for video_id in ("train_1", "dev_1", "test_1"):
        table = predictions[video_id]
        times = [f.time_s for f in decode_frames(str(root / "videos" / f"{video_id}.mp4"), video_id)]
        np.testing.assert_allclose(table.column("time_s").to_numpy(), times)
        assert np.isfinite(table.column("arousal").to_numpy()).all()


def test_labels_at_their_own_rate_are_placed_on_the_grid_by_time(ingested: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    root, dataset = ingested
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    # dev_1's labels at 10 Hz, shifted by 0.05 s: each grid step at 25 fps takes the interpolation of its neighbours.
    label_time = 0.05 + np.arange(15) / 10.0
    rows = ["frameTime,arousal,valence", *(f"{t:.3f},{np.sin(t):.6f},{np.cos(t):.6f}" for t in label_time)]
    (copy / "labels" / "dev_1.csv").write_text("\n".join(rows) + "\n")
    # test_1's labels number the decoded frames (a frame column); every other frame is labelled.
    frames = np.arange(0, CLIPS.frames, 2)
    rows = ["frame,arousal,valence", *(f"{f},{f / 100:.3f},{-f / 100:.3f}" for f in frames)]
    (copy / "labels" / "test_1.csv").write_text("\n".join(rows) + "\n")
    corpus = read_video_source(str(copy), transform=load_dataset_transform(str(dataset)))
    dev, test = corpus.videos[1], corpus.videos[2]
    assert dev.video_id == "dev_1" and test.video_id == "test_1"
    inside = (dev.time_s >= label_time[0]) & (dev.time_s <= label_time[-1])
    np.testing.assert_allclose(dev.arousal[inside], np.sin(dev.time_s[inside]), atol=0.01)
    # Within half a label step of the ends: the end labels; further: unlabelled.
    near = ~inside & (dev.time_s >= label_time[0] - 0.05 - 1e-9) & (dev.time_s <= label_time[-1] + 0.05 + 1e-9)
    ends = np.where(dev.time_s[near] < label_time[0], np.sin(label_time[0]), np.sin(label_time[-1]))
    np.testing.assert_allclose(dev.arousal[near], ends, atol=1e-5)
    assert np.isnan(dev.arousal[~inside & ~near]).all() and inside.sum() >= 30 and (~inside & ~near).any()
    # The decoded frames are the grid here (a 25 fps clip): frame f's label at frame f, halfway between interpolated.
    np.testing.assert_allclose(test.arousal[frames], frames / 100, atol=1e-6)
    np.testing.assert_allclose(test.arousal[1:-1:2], (frames[:-1] + 1) / 100, atol=1e-6)


def test_synth_cli_writes_the_video_layout(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from affect_cli.main import app

    out = tmp_path / "clips"
    result = CliRunner().invoke(
        app, ["synth", str(out), "--layout", "video", "--videos-per-split", "1", "--frames", "12", "--lag-s", "0.2"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["dev_1.mp4", "test_1.mp4", "train_1.mp4"]
    assert (out / "partition.csv").read_text().splitlines() == [
        "video_id,split",
        "train_1,train",
        "dev_1,dev",
        "test_1,test",
    ]
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["dev_1.csv", "train_1.csv"]
    frames = list(decode_frames(str(out / "videos" / "train_1.mp4"), "train_1"))
    assert len(frames) == 12 and frames[0].gray.shape == (360, 640)
    assert len((out / "labels" / "train_1.csv").read_text().splitlines()) == 13


def test_videos_on_an_fsspec_store_read_like_local_ones(ingested: tuple[Path, Path]) -> None:
    import fsspec

    root, dataset = ingested
    memory = fsspec.filesystem("memory")
    for path in root.rglob("*"):
        if path.is_file():
            memory.pipe(f"/clips/{path.relative_to(root)}", path.read_bytes())
    transform = load_dataset_transform(str(dataset))
    remote = read_video_source("memory://clips", transform=transform)
    for a, b in zip(remote.videos, read_corpus(str(dataset), splits=None).videos, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.arousal, b.arousal)


def test_cli_train_carries_the_transform_and_score_takes_a_video_folder(
    ingested: tuple[Path, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from affect_cli.main import app

    root, dataset = ingested
    runner = CliRunner()
    run = tmp_path / "run"
    trained = runner.invoke(
        app,
        [
            "train",
            str(dataset),
            "--out",
            str(run),
            "--model",
            "baseline",
            "--align",
            "none",
            "--epochs",
            "1",
            "--dimension",
            "arousal",
            "--no-progress",
            "--no-ray",
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert load_bundle_transform(str(run / "model")).config == FAST
    pred = tmp_path / "pred"
    scored = runner.invoke(
        app, ["score", str(root), "--model", str(run / "model"), "--out", str(pred), "--no-progress"]
    )
    assert scored.exit_code == 0, scored.output
    assert "scored 3 video(s), 120 frame(s)" in scored.output
    evaluated = runner.invoke(app, ["evaluate", str(pred), str(dataset)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "| dev | arousal | 1 |" in evaluated.output


def test_long_videos_in_segments_give_the_whole_videos_rows(ingested: tuple[Path, Path]) -> None:
    def segmenting_map(fn, jobs):
        segmenting_map.jobs = list(jobs)
        return map(fn, segmenting_map.jobs)

    segmenting_map.segment_frames = 10  # 40-frame clips: 4 segments each
    root, dataset = ingested
    transform = load_dataset_transform(str(dataset))
    segmented = read_video_source(str(root), transform=transform, mapper=segmenting_map)
    assert [(j.video_id, j.start, j.stop) for j in segmenting_map.jobs[:4]] == [
        ("train_1", 0, 10),
        ("train_1", 10, 20),
        ("train_1", 20, 30),
        ("train_1", 30, None),
    ]
    for a, b in zip(segmented.videos, read_corpus(str(dataset), splits=None).videos, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.time_s, b.time_s)


def test_the_transform_is_stored_before_the_commit_that_publishes_its_version(
    ingested: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ingest entrance for videos: the fitted transform is written (named from the version's content hash)
    before the commit, removed when the commit fails, and stored again by a re-ingest that reads no video."""
    from affect_core.data import delta
    from affect_core.data.dataset import list_versions
    from affect_core.video import layout
    from affect_core.video.stored import transform_file

    root, stored = ingested
    url = str(tmp_path / "dataset")
    real_commit = delta.commit
    at_commit: list[list[str]] = []

    def failing_commit(loc, schema, **kwargs):
        at_commit.append(sorted(p.name for p in (tmp_path / "dataset").glob("_video_transforms/*.safetensors")))
        raise OSError("the store went away")

    monkeypatch.setattr(delta, "commit", failing_commit)
    with pytest.raises(AffectError, match="nothing was published"):
        ingest(str(root), url, layout="video", video_config=FAST, progress=False)
    assert at_commit == [[transform_file(dataset_info(str(stored)).content_hash).split("/")[-1]]]
    assert not list((tmp_path / "dataset").glob("_video_transforms/*")), "the failed commit's transform was left"

    def checked_commit(loc, schema, **kwargs):
        at_commit.append(sorted(p.name for p in (tmp_path / "dataset").glob("_video_transforms/*.safetensors")))
        return real_commit(loc, schema, **kwargs)

    monkeypatch.setattr(delta, "commit", checked_commit)
    first = ingest(str(root), url, layout="video", video_config=FAST, progress=False)
    path = tmp_path / "dataset" / transform_file(first.content_hash)
    assert at_commit[-1] == [path.name] and list_versions(url) == ["0"]
    assert first.content_hash == dataset_info(str(stored)).content_hash
    # What `affect ingest` reports: the videos it wrote and their files (once "0 video(s) written in 0 file(s)").
    assert first.videos_written == first.videos > 0 and first.files_written >= 1
    assert_same_transform(load_dataset_transform(url), load_dataset_transform(str(stored)))

    def no_extraction(*args, **kwargs):
        raise AssertionError("a video was extracted")

    path.unlink()  # lost (as a crash between the commit and the transform could lose it before)
    monkeypatch.setattr(layout, "extract_job", no_extraction)
    again = ingest(str(root), url, layout="video", video_config=FAST, progress=False)
    assert again.unchanged and again.source_bytes == 0 and list_versions(url) == ["0"]
    assert_same_transform(load_dataset_transform(url), load_dataset_transform(str(stored)))
    monkeypatch.setattr(layout, "sample_job", no_extraction)
    assert ingest(str(root), url, layout="video", video_config=FAST, progress=False).unchanged


def assert_same_transform(a, b) -> None:
    assert a.config == b.config
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.components, b.components)


def test_the_video_layout_needs_its_provider_imported(tmp_path: Path) -> None:
    """affect_core.data never imports the video layout: it reads it through the table of provided layouts, which
    affect_core.video.layout fills when imported (a fresh process that did not import it gets a clear error)."""
    import subprocess
    import sys

    script = (
        "from affect_core.data.dataset import ingest\n"
        "from affect_core.errors import AffectError\n"
        "try:\n"
        f"    ingest({str(tmp_path)!r}, {str(tmp_path / 'ds')!r}, layout='video', progress=False)\n"
        "except AffectError as exc:\n"
        "    print(exc)\n"
        "import affect_core.video.layout\n"
        "from affect_core.data.layouts.provided import provided\n"
        "print(type(provided('video')).__name__)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert "provided by affect_core.video.layout" in run.stdout and run.stdout.rstrip().endswith("VideoLayout")
