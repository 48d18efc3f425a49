"""Per-rater lags (`affect train --targets raters`): one adaptive Gaussian alignment per rater, trained against each
rater's own trace; each planted lag recovered; summary.md lists every rater's lag; the gold standard stays the
default; what cannot work is refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from affect_cli.main import app
from affect_core.alignment import AdaptiveAlignment
from affect_core.config import ModelConfig, RunConfig, TrainConfig
from affect_core.errors import AffectError
from affect_core.features import fit_feature_transform
from affect_core.model import AffectModel
from affect_core.rater_alignment import RaterAlignments
from affect_core.synth import SynthConfig, write_corpus
from affect_core.synth.generator import generate
from affect_core.training import stack_videos, train_model

RATER_LAGS_S = (0.4, 1.6, 2.8)  # 10, 40 and 70 frames at 25 fps
runner = CliRunner()


def test_each_rater_window_is_the_one_rater_alignment_and_the_prediction_is_their_mean() -> None:
    torch.manual_seed(0)
    raters = RaterAlignments(("a", "b", "c"), window=30, mu_init=5.0, sigma2_init=9.0)
    with torch.no_grad():
        raters.mu_raw.copy_(torch.tensor([-0.2, 0.3, 0.8]))
        raters.sigma2_raw.copy_(torch.tensor([1.0, 3.0, 9.0]))
    z = torch.randn(2, 90, 3, dtype=torch.float64)
    per = raters(z, per_rater=True)
    assert per.shape == (2, 90, 9)
    for r in range(3):
        one = AdaptiveAlignment(window=30)
        with torch.no_grad():
            one.mu_raw.copy_(raters.mu_raw[r])
            one.sigma2_raw.copy_(raters.sigma2_raw[r])
        torch.testing.assert_close(per[..., 3 * r : 3 * r + 3], one(z))
    mean = (per[..., 0:3] + per[..., 3:6] + per[..., 6:9]) / 3
    torch.testing.assert_close(raters(z), mean)
    assert float(raters.kernel().sum()) == pytest.approx(1.0, abs=1e-6)


def test_labels_are_each_raters_trace_in_rater_then_dimension_order() -> None:
    corpus = generate(
        SynthConfig(videos_per_split=1, frames=80, appearance_dim=3, geometric_dim=2, raters=2, rater_lags_s=(0, 1))
    ).corpus
    video = corpus.split("train")[0]
    transform = fit_feature_transform([video.features], RunConfig().features)
    [(_, labels)] = stack_videos([video], transform, ("valence", "arousal"), 25.0, ("R1", "R2"))
    expected = [video.ratings[f"{dim}/{rater}"] for rater in ("R1", "R2") for dim in ("valence", "arousal")]
    np.testing.assert_array_equal(labels, np.stack(expected, axis=1))
    # the gold standard of a corpus with planted rater lags is the raters' mean (as RECOLA's)
    mean = (video.ratings["arousal/R1"] + video.ratings["arousal/R2"]) / 2
    np.testing.assert_allclose(video.arousal, mean, atol=1e-5)


def test_raters_without_traces_or_without_adaptive_alignment_are_refused() -> None:
    corpus = generate(SynthConfig(videos_per_split=1, frames=80, appearance_dim=3, geometric_dim=2)).corpus
    config = RunConfig(train=TrainConfig(max_epochs=1, targets="raters"))
    with pytest.raises(AffectError, match="--targets raters needs per-rater traces of arousal"):
        train_model(corpus.split("train"), corpus.split("dev"), config, progress=False)
    with pytest.raises(AffectError, match="expected align=adaptive"):
        ModelConfig(align="manual", raters=("R1",))
    with pytest.raises(AffectError, match="targets must be one of gold, raters"):
        TrainConfig(targets="rater")


def test_a_one_seed_model_of_a_stack_keeps_its_raters() -> None:
    config = ModelConfig(model="lstm-kf", input_dim=4, raters=("R1", "R2"), window=10)
    model = AffectModel(config, seeds=[0, 1])
    with torch.no_grad():
        model.alignments.mu_raw[1].copy_(torch.tensor([0.1, 0.5]))
    single = model.seed_model(1)
    lags = single.rater_lags()
    assert list(lags) == ["R1", "R2"]
    assert lags["R2"][0] == pytest.approx(10 * float(np.tanh(0.5)), abs=1e-5)
    # the Adam group with the alignment's own learning rate holds the raters' lags
    groups = model.parameter_groups(1e-3, 0.05)
    assert any(p is model.alignments.mu_raw for p in groups[-1]["params"]) and groups[-1]["lr"] == 0.05


@pytest.mark.slow
def test_planted_rater_lags_are_learned_through_the_cli(tmp_path: Path) -> None:
    """AVEC2016 release layout with three raters lagging by 10, 40 and 70 frames: `affect ingest`, then
    `affect train --targets raters`; each rater's lag is recovered within 5 frames and summary.md lists them."""
    torch.set_num_threads(1)
    source = SynthConfig(
        videos_per_split=4,
        frames=1500,
        appearance_dim=20,
        geometric_dim=30,
        seed=1,
        lag_s=1.6,
        feature_noise=0.5,
        raters=3,
        rater_lags_s=RATER_LAGS_S,
    )
    write_corpus(source, tmp_path / "release", "avec2016")
    dataset, run = tmp_path / "dataset", tmp_path / "run"
    ingested = runner.invoke(app, ["ingest", str(tmp_path / "release"), str(dataset), "--layout", "avec2016"])
    assert ingested.exit_code == 0, ingested.output
    (tmp_path / "config.yaml").write_text(
        "model: {q_init: 0.1, r_init: 0.001}\n"
        "train: {window_frames: 500, batch_size: 4, patience: 150, lr: 0.003, lr_align: 0.05}\n"
    )
    args = ["train", str(dataset), "--out", str(run), "--dimension", "arousal", "--model", "lstm-kf"]
    args += ["--align", "adaptive", "--targets", "raters", "--epochs", "150", "--config", str(tmp_path / "config.yaml")]
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, trained.output
    rows = pq.read_table(run / "results.parquet").to_pylist()
    lags = json.loads(next(r for r in rows if r["split"] == "dev")["rater_lags"])
    assert sorted(lags) == ["R1", "R2", "R3"]
    for rater, planted_s in zip(("R1", "R2", "R3"), RATER_LAGS_S, strict=True):
        assert abs(lags[rater][0] - planted_s * 25) <= 5, (rater, lags[rater], planted_s * 25)
    summary = (run / "summary.md").read_text()
    assert "## Learned lag per rater" in summary
    for rater in ("R1", "R2", "R3"):
        assert f"| LSTM-KF-AA | arousal | {rater} |" in summary
    # the bundle scores the gold standard: one prediction per frame, from the raters' mean window
    assert (run / "model").exists()
