"""Ray Tune search (Optuna + ASHA) on the Ray that `affect tune` starts in its process, and the search space / outputs
without Ray. The search through RAY_ADDRESS on a two-node cluster runs in the pipeline on the local stack
(tests/test_infra.py) and as a Ray job (tests/test_ray_job_submission.py)."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from affect_core.config import RunConfig
from affect_core.storage import resolve
from tests.test_ray_train import affect, assert_embedded_ray_on_loopback_only, make_dataset, run_watching_sockets
from tuning.tune import HIDDEN_SIZES, apply_params, search_space, write_outputs


@pytest.mark.slow
def test_small_search_stops_trials_early_and_its_best_config_trains(tmp_path):
    """Six trials, two at once, up to three epochs: ASHA stops at least one early, the outputs name the best trial
    and its config trains. Without RAY_ADDRESS the search starts Ray in its process: every socket that Ray (GCS,
    raylet, agents, workers) listens on while the search runs is on 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    dataset = make_dataset(tmp_path / "corpus", str(tmp_path / "dataset"))
    out = tmp_path / "tune"
    search = ["tune", dataset, "--out", str(out), "--num-samples", "6", "--max-concurrent", "2", "--epochs", "3"]
    returncode, output, seen = run_watching_sockets([*search, "--no-progress"], env)
    assert returncode == 0, output[-3000:]
    assert_embedded_ray_on_loopback_only(seen)
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 6
    assert (trials["status"] != "error").all()
    assert (trials["status"] == "stopped").sum() >= 1, trials[["trial_id", "status", "epochs"]]
    assert (trials["epochs"] <= 3).all() and (trials["epochs"] == 3).any()
    assert {"train.lr", "model.lstm_size", "model.window", "features.pooling_window"} <= set(trials.columns)
    assert (out / "tuning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = RunConfig.from_text((out / "best_config.yaml").read_text())
    best_row = trials.loc[trials["best_dev_ccc"].idxmax()]
    assert best.train.lr == pytest.approx(best_row["train.lr"])
    assert best.model.model == best_row["model.model"]
    trained = affect(
        [
            "train",
            dataset,
            "--out",
            str(tmp_path / "run"),
            "--config",
            str(out / "best_config.yaml"),
            "--dimension",
            "arousal",
            "--epochs",
            "1",
            "--no-ray",
            "--no-progress",
        ],
        {},
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "model" / "bundle.json").exists()


def test_trial_parameters_map_onto_the_run_config():
    params = {
        "model": {
            "model": "lstm-kf",
            "hidden_sizes": HIDDEN_SIZES[2],
            "lstm_size": 8,
            "window": 25,
            "sigma2_init": 10.0,
        },
        "features": {"pca_share": 0.9, "pooling_window": 50},
        "train": {"lr": 0.002, "lr_align": 0.01, "lambda1": 0.1, "lambda2": 0.3},
    }
    config = apply_params(RunConfig(), params)
    assert config.model.hidden_sizes == (64, 32)
    assert (config.model.window, config.features.pooling_window, config.train.lambda2) == (25, 50, 0.3)
    assert RunConfig.from_text(config.to_yaml()) == config


def test_outputs_name_the_best_trial(tmp_path):
    rows = [
        {
            "trial_id": "a",
            "status": "finished",
            "best_dev_ccc": 0.2,
            "last_dev_ccc": 0.2,
            "epochs": 3,
            "train.lr": 0.001,
            "model.model": "lstm-kf",
            "model.lstm_size": 8,
        },
        {
            "trial_id": "b",
            "status": "stopped",
            "best_dev_ccc": 0.5,
            "last_dev_ccc": 0.4,
            "epochs": 1,
            "train.lr": 0.005,
            "model.model": "lstm-ekf",
            "model.lstm_size": 32,
        },
    ]
    outcome = write_outputs(rows, resolve(str(tmp_path)), RunConfig())
    assert (outcome.best_trial, outcome.stopped_early) == ("b", 1)
    best = RunConfig.from_text((tmp_path / "best_config.yaml").read_text())
    assert (best.train.lr, best.model.model, best.model.lstm_size) == (0.005, "lstm-ekf", 32)
    assert len(pd.read_parquet(tmp_path / "trials.parquet")) == 2


def test_a_search_told_a_model_searches_that_model_only():
    assert search_space("lstm-kf")["model"]["model"].categories == ["lstm-kf"]
    assert sorted(search_space()["model"]["model"].categories) == ["lstm-ekf", "lstm-kf"]


def test_the_tuning_table_names_the_model_of_every_trial(tmp_path):
    import pyarrow.parquet as pq

    from affect_core.report import tuning_markdown

    rows = [
        {"trial_id": "a", "status": "finished", "best_dev_ccc": 0.2, "last_dev_ccc": 0.2, "epochs": 3,
         "train.lr": 0.001, "model.model": "lstm-ekf"},
        {"trial_id": "b", "status": "finished", "best_dev_ccc": 0.5, "last_dev_ccc": 0.4, "epochs": 3,
         "train.lr": 0.005},  # a trial whose configuration left the model to the base config
    ]  # fmt: skip
    base = RunConfig()
    base.model.model = "lstm-kf"
    write_outputs(rows, resolve(str(tmp_path)), base)
    trials = pq.read_table(tmp_path / "trials.parquet")
    assert trials.column("model.model").to_pylist() == ["lstm-ekf", "lstm-kf"]
    table = [line for line in tuning_markdown(trials).splitlines() if line.startswith("| ")]
    assert "model.model" in table[0]
    assert ["lstm-kf" in table[1], "lstm-ekf" in table[2]] == [True, True]  # best first
