"""The learning check every input layout's tests share: a generated corpus with a planted lag, written in the
layout and ingested, is learned through the public entry point (``experiment.train_run``): LSTM-KF-AA finds the
lag and beats the baseline's dev CCC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from affect_core.artifact import load_bundle
from affect_core.config import ModelConfig, RunConfig, TrainConfig
from affect_core.data.dataset import ingest, read_corpus
from affect_core.experiment import read_results, train_run
from affect_core.synth import SynthConfig

LAG_S = 2.0
EPOCHS = 30


def learning_config(fps: float, **changes: object) -> SynthConfig:
    """A small corpus that is learnable in a few seconds: labels lag the features by LAG_S seconds."""
    settings: dict[str, object] = dict(
        videos_per_split=4,
        frames=int(60 * fps),
        fps=fps,
        appearance_dim=20,
        geometric_dim=30,
        seed=1,
        lag_s=LAG_S,
        feature_noise=0.5,
    )
    settings.update(changes)
    return SynthConfig(**settings)  # type: ignore[arg-type]


def train_and_check(source: Path, layout: str, tmp_path: Path, *, lag_frames: float, tolerance: float = 3.0, **read):
    """Ingest ``source`` (``layout``), train LSTM-KF-AA and the baseline on arousal, and check the lag and the
    CCC. Returns the trained bundle's arousal model for further checks."""
    torch.set_num_threads(1)
    dataset = str(tmp_path / "dataset")
    ingest(str(source), dataset, layout=layout, progress=False, **read)
    corpus = read_corpus(dataset)
    runs = {}
    for model, align in (("lstm-kf", "adaptive"), ("baseline", "none")):
        config = RunConfig(
            model=ModelConfig(model=model, align=align, q_init=0.1, r_init=1e-3),
            train=TrainConfig(
                max_epochs=EPOCHS, window_frames=250, batch_size=4, patience=EPOCHS, lr=3e-3, lr_align=0.05
            ),
        )
        run = str(tmp_path / f"run-{model}")
        train_run(corpus, run, config, dimension="arousal", seeds=1, progress=False)
        runs[model] = read_results(run).to_pandas()
    kf, baseline = runs["lstm-kf"], runs["baseline"]
    dev_kf = kf[kf.split == "dev"].iloc[0]
    dev_base = baseline[baseline.split == "dev"].iloc[0]
    assert abs(dev_kf.mu_frames - lag_frames) <= tolerance, (dev_kf.mu_frames, lag_frames)
    assert dev_kf.ccc > dev_base.ccc + 0.05, (dev_kf.ccc, dev_base.ccc)
    assert np.isfinite(dev_kf.ccc)
    return load_bundle(str(tmp_path / "run-lstm-kf" / "model")).models[0]
