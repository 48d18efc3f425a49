"""Stretches without a face, on every path, for the Kalman and the extended Kalman filter models.

Videos (25 fps) hold a stretch without a face of 0, 10 s, 60 s and 10 min between observed frames, and one video has
no face at all. Each model is trained on them (training path: the dev CCC is a measured number), then scores them in
one process (batched scoring into the predictions table), in chunks (streaming) and on an in-process Ray (Ray Data
scoring). Everywhere: every prediction in [-1, 1], every variance finite and below a bound that a longer gap does not
raise, no NaN; and the frames before a gap are what the same video cut before the gap gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from affect_core.artifact import ModelBundle, load_bundle
from affect_core.config import ModelConfig, RunConfig, TrainConfig
from affect_core.data.dataset import ingest, iter_videos, read_corpus
from affect_core.data.records import Corpus, Video
from affect_core.experiment import plan_seed_tasks, run_seed
from affect_core.scoring import read_predictions, score_videos
from affect_core.streaming import iter_chunks, stream_predict
from affect_core.synth import write_corpus

FPS = 25.0
BEFORE, AFTER = 150, 100  # observed frames before and after the stretch without a face
GAPS_S = {"dev_1": 0.0, "dev_2": 10.0, "dev_3": 60.0, "dev_4": 600.0}  # dev_5: no face at all
WINDOW = 10  # the alignment's half-width D: a frame's output reaches D frames each way
VARIANCE_BOUND = 100.0  # far above a mean-reverting state's stationary variance; a diverging filter passes it at once


def gap_video(video_id: str, split: str, gap_frames: int | None, rng: np.random.Generator) -> Video:
    """A video of 4 features following a smooth latent, with ``gap_frames`` frames without a face after BEFORE
    observed ones (None: no face at all)."""
    frames = BEFORE + (gap_frames or 0) + AFTER
    latent = np.convolve(rng.normal(size=frames + 60), np.hanning(41), mode="same")[30:-30]
    latent = np.tanh(latent / (np.abs(latent).max() + 1e-9) * 1.5)
    features = np.stack([latent, latent**2, np.sin(latent), -latent], 1) + rng.normal(scale=0.2, size=(frames, 4))
    features = features.astype(np.float32)
    if gap_frames is None:
        features[:] = np.nan
    else:
        features[BEFORE : BEFORE + gap_frames] = np.nan
    labels = np.clip(latent, -1, 1).astype(np.float32)
    return Video(
        video_id=video_id,
        split=split,
        features=features,
        time_s=np.arange(frames) / FPS,
        fps=FPS,
        arousal=labels,
        valence=labels.copy(),
    )


def gap_frames(video_id: str) -> int | None:
    return None if video_id not in GAPS_S else int(GAPS_S[video_id] * FPS)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    rng = np.random.default_rng(7)
    videos = [gap_video(f"train_{i}", "train", g, rng) for i, g in enumerate([0, 250], 1)]
    videos += [gap_video(vid, "dev", gap_frames(vid), rng) for vid in [*GAPS_S, "dev_5"]]
    corpus = Corpus(videos=videos, feature_names=[f"f{j}" for j in range(4)], fps=FPS, feature_set="features")
    root = tmp_path_factory.mktemp("gaps")
    write_corpus(corpus, root / "src", "parquet")
    url = str(root / "ds")
    ingest(str(root / "src"), url, layout="parquet", progress=False)
    return url


@pytest.fixture(scope="module", params=["lstm-kf", "lstm-ekf"])
def trained(request: pytest.FixtureRequest, dataset: str, tmp_path_factory: pytest.TempPathFactory):
    """(bundle URL, bundle, training outcome) of a tiny model trained for 3 epochs on the gap videos."""
    config = RunConfig(
        model=ModelConfig(model=request.param, align="adaptive", window=WINDOW, hidden_sizes=(8, 8), lstm_size=8),
        train=TrainConfig(max_epochs=3, patience=10, window_frames=None),
    )
    torch.manual_seed(0)
    task = plan_seed_tasks(config, "arousal", [0])[0]
    run = str(tmp_path_factory.mktemp(f"run-{request.param}"))
    epochs: list = []
    outcome = run_seed(task, read_corpus(dataset), run, on_epoch=epochs.append)
    return outcome.bundle_url, load_bundle(outcome.bundle_url), (outcome, epochs)


def check_tracks(video_id: str, levels: np.ndarray, variances: np.ndarray, bundle: ModelBundle, features) -> None:
    """Bounded, finite, and the frames before the gap equal to the video cut there."""
    assert np.isfinite(levels).all() and np.isfinite(variances).all(), video_id
    assert np.abs(levels).max() <= 1.0, video_id
    assert variances.min() >= 0 and variances.max() < VARIANCE_BOUND, (video_id, variances.max())
    if gap_frames(video_id):
        cut_levels, cut_variances = bundle.predict(features[:BEFORE])["arousal"]
        keep = BEFORE - WINDOW
        np.testing.assert_allclose(levels[:keep], cut_levels[:keep], atol=1e-5, err_msg=video_id)
        np.testing.assert_allclose(variances[:keep], cut_variances[:keep], atol=1e-5, rtol=1e-5, err_msg=video_id)


def check_table(tables: dict[str, pa.Table], bundle: ModelBundle, dataset: str) -> None:
    videos = {v.video_id: v for v in iter_videos(dataset)}
    assert sorted(tables) == sorted(videos)
    peak = {}
    for video_id, table in tables.items():
        table = table.sort_by("frame")
        levels, variances = (table.column(c).to_numpy(zero_copy_only=False) for c in ("arousal", "arousal_var"))
        assert len(levels) == videos[video_id].num_frames
        check_tracks(video_id, levels, variances, bundle, videos[video_id].features)
        peak[video_id] = variances.max()
    # Bounded whatever the gap: ten minutes without a face leave the variance where one minute left it.
    assert peak["dev_4"] <= peak["dev_3"] * 1.01 + 1e-6, peak


def test_training_through_gaps_gives_a_measured_dev_ccc_and_bounded_predictions(trained):
    _, bundle, (outcome, history) = trained
    assert len(history) == 3 and all(np.isfinite(r.dev_ccc) and r.dev_ccc != 0.0 for r in history), history
    assert all(np.isfinite(r.train_loss) for r in history)
    assert np.isfinite(outcome.dev_ccc) and outcome.dev_ccc != 0.0
    for row in outcome.rows:
        assert all(np.isfinite(v) for k, v in row.items() if k in ("ccc", "rmse", "pcc")), row


def test_batched_scoring_through_gaps(trained, dataset, tmp_path):
    _, bundle, _ = trained
    out = str(tmp_path / "preds")
    videos = iter_videos(dataset)
    score_videos(bundle, videos, out, feature_names=bundle.feature_names, progress=False)
    check_table(dict(read_predictions(out).items()), bundle, dataset)


def test_streaming_through_gaps(trained, dataset):
    _, bundle, _ = trained
    model = bundle.models[0]
    for video in iter_videos(dataset):
        parts = list(stream_predict(model.model, model.transform, iter_chunks(video.features, 997)))
        levels, variances = (np.concatenate([p[i][:, 0] for p in parts]) for i in (0, 1))
        if model.calibration is not None:
            variances = model.calibration["arousal"].apply(variances)
        assert len(levels) == video.num_frames
        check_tracks(video.video_id, levels, variances, bundle, video.features)
        whole = bundle.predict(video.features)["arousal"][0]
        np.testing.assert_allclose(levels, whole, atol=1e-5)


@pytest.fixture(scope="module")
def ray_started() -> None:
    """An in-process Ray for the module (stopped when it ends: conftest's no_in_process_ray_left_behind)."""
    from tuning.cluster import ensure_ray

    ensure_ray(num_cpus=2)


@pytest.mark.slow  # Ray's start and an actor pool per model: about 30 s on two busy cores
def test_ray_scoring_through_gaps(trained, dataset, ray_started, tmp_path: Path):
    from tuning.score import score_dataset

    bundle_url, bundle, _ = trained
    out = str(tmp_path / "ray-preds")
    score_dataset(dataset, bundle_url, out, actors=1, min_actors=1, device="cpu")
    check_table(dict(read_predictions(out).items()), bundle, dataset)
