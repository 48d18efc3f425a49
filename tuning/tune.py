"""Hyperparameter search with Ray Tune: Optuna proposes, ASHA stops weak trials on dev CCC per epoch.

Every trial is a Ray Train driver (as in :mod:`tuning.train_seeds`): a one-worker Ray Train run that
trains the trial's configuration with :func:`affect_core.experiment.run_seed` and reports each epoch's dev CCC
through ``ray.train.report``; ``TuneReportCallback`` passes the reports on to Tune, where ASHA decides.

Layout of OUT_URL:

    best_config.yaml      the best trial's configuration; ``affect train --config`` takes it (written last: a
                          search with this file is finished)
    trials.parquet        one row per trial (the schema ``affect_core.report`` reads): trial_id, status
                          (finished | stopped | error), best_dev_ccc, last_dev_ccc, epochs, and one column per
                          searched parameter named ``section.name`` (``train.lr``, ``model.lstm_size``, ...)
    tuning.png            dev CCC against the main hyperparameters
    trials/<trial_id>/    each trial's model bundle, result rows and training checkpoint
    _ray/tune/            Ray Tune's experiment state (``resume=True`` continues from it)
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from affect_core.config import RunConfig
from affect_core.errors import AffectError
from affect_core.experiment import SeedTask
from affect_core.report import TRIAL_SCORE, TRIALS_FILE
from affect_core.storage import Location, Where, exists, join, read_bytes, redact, resolve, write_bytes_atomic
from tuning.cluster import (
    driver_resources,
    ensure_ray,
    ray_storage,
    release_stopped_trials,
    shareable_storage_options,
)
from tuning.trainer import TrainerSettings, worker_resources, worker_run

logger = logging.getLogger(__name__)

EXPERIMENT_NAME = "tune"
METRIC = "dev_ccc"
BEST_CONFIG = "best_config.yaml"
MODEL_COLUMN = "model.model"
TUNE_DIMENSIONS = ("arousal", "valence", "joint")
# Feed-forward front-end sizes, as strings because Optuna's categorical values must be plain scalars.
HIDDEN_SIZES = ("29,16", "32,16", "64,32", "16")
PLOTTED = (
    ("train.lr", True),
    ("train.lr_align", True),
    ("model.lstm_size", False),
    ("model.window", False),
    ("model.sigma2_init", True),
    ("features.pooling_window", False),
    ("train.lambda1", False),
    ("model.model", False),
)


SEARCHED_MODELS = ("lstm-kf", "lstm-ekf")


def search_space(model: str | None = None) -> dict[str, dict[str, Any]]:
    """The search space over the model's real hyperparameters, by RunConfig section (paper section III). model: the
    one model to search (its trials then all train it, as the training that follows will); None: SEARCHED_MODELS."""
    from ray import tune

    return {
        "model": {
            "model": tune.choice([model] if model else list(SEARCHED_MODELS)),
            "hidden_sizes": tune.choice(list(HIDDEN_SIZES)),
            "lstm_size": tune.choice([8, 16, 32]),
            "window": tune.choice([25, 50, 100]),
            "sigma2_init": tune.loguniform(4.0, 400.0),
        },
        "features": {
            "pca_share": tune.choice([0.0, 0.9, 0.99]),
            "pooling_window": tune.choice([0, 50, 100, 150]),
        },
        "train": {
            "lr": tune.loguniform(3e-4, 1e-2),
            "lr_align": tune.loguniform(1e-3, 0.2),
            "lambda1": tune.uniform(0.0, 0.5),
            "lambda2": tune.uniform(0.0, 0.5),
        },
    }


def apply_params(base: RunConfig, params: Mapping[str, Any]) -> RunConfig:
    """``base`` with a trial's parameters (nested by section, as :func:`search_space`) put in."""
    data = base.to_dict()
    for section, values in params.items():
        if section not in data or not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            if key == "hidden_sizes" and isinstance(value, str):
                value = [int(v) for v in value.split(",") if v]
            data[section][key] = value
    return RunConfig.from_dict(data, where="trial parameters")


@dataclass
class TuneOutcome:
    """What a search produced: the URLs of its outputs and the best trial."""

    out_url: str
    best_config_url: str
    trials_url: str
    plot_url: str
    best_trial: str
    best_dev_ccc: float
    best_params: dict[str, Any]
    trials: int
    stopped_early: int
    errored: int
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_tune(
    dataset_url: str,
    out_url: str,
    *,
    num_samples: int = 20,
    max_concurrent: int = 2,
    max_epochs: int = 20,
    dimension: str = "arousal",
    resume: bool = False,
    base_config: RunConfig | None = None,
    feature_set: str | None = None,
    grace_period: int = 1,
    reduction_factor: int = 2,
    seed: int = 0,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    max_failures: int = 2,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    device: str = "auto",
    model: str | None = None,
) -> TuneOutcome:
    """Run (or, with ``resume``, continue) a search of ``num_samples`` trials, at most ``max_concurrent`` at once,
    each for at most ``max_epochs`` epochs; write best_config.yaml, trials.parquet and tuning.png in ``out_url``.

    Each trial's worker asks for ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs, whatever the cluster holds
    now (an autoscaler adds the nodes). With ``resume``, a finished search (its best_config.yaml exists) is read
    back from its outputs without starting Ray. device: where each trial trains ("auto": its GPU when it was given
    one, "cpu", "cuda" or any torch device, by :func:`tuning.trainer.worker_device`). model: search only this model
    (None: every model of SEARCHED_MODELS); every trial's row names the model it trained.
    """
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    if dimension not in TUNE_DIMENSIONS:
        raise AffectError(f"tune: dimension must be one of {', '.join(TUNE_DIMENSIONS)}; got {dimension!r}")
    if str(device).startswith("cuda") and not gpus_per_trial:
        raise AffectError("--device cuda on Ray needs GPUs for the trials: give --gpus-per-trial")
    out = resolve(out_url, storage_options)
    if resume and exists(out.fs, out.join(BEST_CONFIG).path):
        return read_outcome(out)
    base = copy.deepcopy(base_config) if base_config is not None else RunConfig()
    base.train.max_epochs = max_epochs
    base.train.patience = max_epochs  # ASHA decides when a trial stops, not the per-trial early stopping
    cluster = ensure_ray(storage_options=storage_options)
    storage_path, storage_fs = ray_storage(join(out_url, "_ray"), storage_options)
    settings = {
        "dataset_url": dataset_url,
        "out_url": out_url,
        "feature_set": feature_set,
        "dimension": dimension,
        "base": base.to_dict(),
        "storage_options": shareable_storage_options(storage_options),
        "device": device,
        "trainer": TrainerSettings(
            resources_per_worker=worker_resources(cpus_per_trial, gpus_per_trial),
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            max_failures=max_failures,
        ),
    }
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(tune_trial, settings=settings), driver_resources(cluster)
    )
    experiment_path = join(storage_path, EXPERIMENT_NAME)
    restorable = ray.tune.Tuner.can_restore(experiment_path, storage_filesystem=storage_fs)
    if resume and restorable:
        tuner = ray.tune.Tuner.restore(
            experiment_path,
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=storage_fs,
        )
    else:
        if restorable:
            raise AffectError(
                f"{redact(out_url)}: already holds a search; continue it with --resume or choose another --out"
            )
        searcher = ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=max_concurrent)
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_epochs,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
        )
        tuner = ray.tune.Tuner(
            trainable,
            param_space=search_space(model),
            tune_config=ray.tune.TuneConfig(
                metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler, num_samples=num_samples
            ),
            run_config=ray.tune.RunConfig(
                name=EXPERIMENT_NAME,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                failure_config=ray.tune.FailureConfig(max_failures=max_failures),
                callbacks=[release_stopped_trials()],
                verbose=1 if progress else 0,
            ),
        )
    grid = tuner.fit()
    rows = trial_rows(grid, max_epochs=max_epochs)
    return write_outputs(rows, out, base)


def tune_trial(config: dict[str, Any], *, settings: dict[str, Any]) -> None:
    """Tune trial = Ray Train driver: train this trial's configuration in a one-worker Ray Train run whose
    epoch reports reach Tune through ``TuneReportCallback``."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    run_config = apply_params(RunConfig.from_dict(settings["base"]), config)
    loop_config = {
        "config": run_config.to_dict(),
        "trial_id": trial_id,
        **{k: settings[k] for k in ("dataset_url", "out_url", "feature_set", "dimension", "storage_options", "device")},
    }
    trainer = worker_run(
        tune_worker,
        loop_config,
        name=f"trial-{trial_id}",
        settings=settings["trainer"],
        callbacks=[TuneReportCallback()],
    )
    trainer.fit()


def tune_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker of one trial: train with :func:`affect_core.experiment.run_seed` into
    ``OUT_URL/trials/<trial_id>``, reporting every epoch (with a small Ray checkpoint, so that a restarted
    worker resumes from the trial's training checkpoint)."""
    import json

    import ray.train
    import torch

    from affect_core.data.dataset import read_corpus
    from affect_core.experiment import run_seed
    from affect_core.runtime import flush_denormals, retain_freed_memory
    from tuning.cluster import current_node, worker_placement_group
    from tuning.trainer import worker_device

    retain_freed_memory()
    flush_denormals()
    torch.set_num_threads(1)
    device = str(worker_device(loop_config["device"]))  # before any data is read: a bad --device fails at once
    group = worker_placement_group()
    options = loop_config["storage_options"] or None
    config = RunConfig.from_dict(loop_config["config"], where=f"trial {loop_config['trial_id']}")
    task = SeedTask(loop_config["dimension"], config.train.seed, config)
    corpus = read_corpus(loop_config["dataset_url"], feature_set=loop_config["feature_set"], storage_options=options)

    def report(record: Any) -> None:
        metrics = {
            METRIC: _finite(record.dev_ccc),
            "epoch": record.epoch,
            "train_loss": _finite(record.train_loss),
            **group,
        }
        with tempfile.TemporaryDirectory() as directory:
            with open(os.path.join(directory, "progress.json"), "w") as handle:
                json.dump(metrics, handle)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    run_seed(
        task,
        corpus,
        join(loop_config["out_url"], "trials", loop_config["trial_id"]),
        resume=ray.train.get_checkpoint() is not None,
        on_epoch=report,
        storage_options=options,
        node=current_node(),
        device=device,
    )


def _finite(value: float) -> float:
    """Tune's schedulers compare numbers; a trial without a usable dev CCC ranks last instead of raising."""
    return float(value) if math.isfinite(value) else -1.0


def trial_rows(grid: Any, *, max_epochs: int) -> list[dict[str, Any]]:
    """One row per trial of a Tune ``ResultGrid``: parameters (``section.name``), best dev CCC, epochs, status."""
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        config = dict(result.config or {})
        scores = history[METRIC].tolist() if history is not None and METRIC in history else []
        epochs = int(history["epoch"].max()) if scores and "epoch" in history else 0
        row: dict[str, Any] = {
            "trial_id": (result.metrics or {}).get("trial_id") or os.path.basename(result.path or ""),
            "status": "error" if result.error is not None else ("stopped" if epochs < max_epochs else "finished"),
            TRIAL_SCORE: max(scores) if scores else float("nan"),
            "last_dev_ccc": scores[-1] if scores else float("nan"),
            "epochs": epochs,
        }
        for section, values in config.items():
            if isinstance(values, Mapping):
                for key, value in values.items():
                    row[f"{section}.{key}"] = value
        rows.append(row)
    return rows


def write_outputs(rows: list[dict[str, Any]], out: Location, base: RunConfig) -> TuneOutcome:
    """Write trials.parquet, tuning.png and best_config.yaml (last: it marks the search finished) under ``out``
    from the trial rows; return the outcome."""
    import pandas as pd

    rows = [{MODEL_COLUMN: base.model.model, **row} for row in rows]  # every trial names its model
    best = _best_row(rows, out.display())
    frame = pd.DataFrame(rows)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes_atomic(out.fs, out.join(TRIALS_FILE).path, buffer.getvalue())
    write_bytes_atomic(out.fs, out.join("tuning.png").path, plot_trials(frame))
    best_config = apply_params(base, _params_of(best))
    best_config.train.patience = RunConfig().train.patience
    write_bytes_atomic(out.fs, out.join(BEST_CONFIG).path, best_config.to_yaml().encode())
    return _outcome(rows, out)


def read_outcome(out_url: Where, *, storage_options: Mapping[str, Any] | None = None) -> TuneOutcome:
    """The outcome of a finished search, read back from its trials.parquet (``out_url`` resolved here, or a
    Location resolved before)."""
    import pyarrow.parquet as pq

    out = resolve(out_url, storage_options)
    try:
        rows = pq.read_table(io.BytesIO(read_bytes(out.fs, out.join(TRIALS_FILE).path))).to_pylist()
    except FileNotFoundError:
        raise AffectError(f"{out.display(TRIALS_FILE)}: a finished search has its trials here; none found") from None
    return _outcome(rows, out)


def _best_row(rows: list[dict[str, Any]], where: str) -> dict[str, Any]:
    scored = [r for r in rows if r[TRIAL_SCORE] is not None and math.isfinite(r[TRIAL_SCORE])]
    if not scored:
        raise AffectError(f"{where}: no trial reported a dev CCC; see the Ray logs for the trials' errors")
    return max(scored, key=lambda r: r[TRIAL_SCORE])


def _params_of(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A trial row's parameters (``section.name`` columns), nested by section as :func:`search_space`."""
    params: dict[str, dict[str, Any]] = {}
    for name, value in row.items():
        if "." in name:
            section, key = name.split(".", 1)
            params.setdefault(section, {})[key] = value
    return params


def _outcome(rows: list[dict[str, Any]], out: Any) -> TuneOutcome:
    best = _best_row(rows, out.display())
    return TuneOutcome(
        out_url=out.display(),
        best_config_url=out.join(BEST_CONFIG).url,
        trials_url=out.join(TRIALS_FILE).url,
        plot_url=out.join("tuning.png").url,
        best_trial=str(best["trial_id"]),
        best_dev_ccc=float(best[TRIAL_SCORE]),
        best_params=_params_of(best),
        trials=len(rows),
        stopped_early=sum(r["status"] == "stopped" for r in rows),
        errored=sum(r["status"] == "error" for r in rows),
        rows=rows,
    )


def plot_trials(frame: Any) -> bytes:
    """PNG: each trial's best dev CCC against each main hyperparameter (log axes for rates and variances)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [(name, log) for name, log in PLOTTED if name in frame]
    cols = 4
    rows = max(1, math.ceil(len(columns) / cols))
    figure, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    stopped = frame["status"] != "finished"
    for ax, (name, log) in zip(axes.flat, columns, strict=False):
        values = frame[name]
        if values.dtype == object:
            categories = sorted(values.astype(str).unique())
            x = values.astype(str).map({c: i for i, c in enumerate(categories)})
            ax.set_xticks(range(len(categories)), categories)
        else:
            x = values
            if log:
                ax.set_xscale("log")
        ax.scatter(x[~stopped], frame[TRIAL_SCORE][~stopped], label="ran all epochs", color="tab:blue")
        ax.scatter(x[stopped], frame[TRIAL_SCORE][stopped], label="stopped early", color="tab:orange", marker="x")
        ax.set_xlabel(name)
        ax.set_ylabel("best dev CCC")
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    figure.suptitle(f"{len(frame)} trials: dev CCC against the main hyperparameters")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()
