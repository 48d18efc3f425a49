"""The work behind the flows' tasks: the Ray drivers of ``tuning`` where they exist, else the single-process
library functions of ``affect_core`` (the same outputs, one process).

``tuning`` is looked up at call time (``tuning.tune.run_tune``, ``tuning.train_seeds``, ``tuning.score``), so
the flows run unchanged whether or not the Ray layer is installed. ``AFFECT_FLOWS_BACKEND=local`` forces the
single-process path (useful to debug a flow without Ray).

Everything here takes explicit storage options (an S3 endpoint at most) and URLs; keys stay in the environment.
"""

from __future__ import annotations

import importlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from affect_core.config import RunConfig
from affect_core.errors import AffectError
from affect_core.storage import exists, read_bytes, redact, resolve, write_bytes_atomic

BACKEND_ENV = "AFFECT_FLOWS_BACKEND"
BEST_CONFIG = "best_config.yaml"
TRIALS = "trials.parquet"

# Fallback search space (used only when tuning.tune is unavailable): a few of the model's real knobs.
FALLBACK_SPACE: dict[str, tuple[Any, ...]] = {
    "train.lr": (1e-3, 3e-3, 1e-2),
    "train.lr_align": (0.02, 0.05, 0.1),
    "train.lambda1": (0.1, 0.25, 0.5),
    "model.lstm_size": (16, 32),
}


def storage_options_for(url: str | None, s3_endpoint: str | None) -> dict[str, Any] | None:
    """fsspec storage options for ``url``: the S3 endpoint when the URL is s3:// and one is given (keys come from
    the environment, never from parameters)."""
    if url and s3_endpoint and str(url).startswith(("s3://", "s3a://")):
        return {"endpoint_url": s3_endpoint}
    return None


def tuning_function(module: str, *names: str) -> Callable[..., Any] | None:
    """The first of ``tuning.<module>.<name>`` that exists, or None when the Ray layer does not provide it.

    Only a missing module counts as "not provided"; a module that exists but fails to import raises.
    """
    if os.environ.get(BACKEND_ENV, "").lower() == "local":
        return None
    try:
        loaded = importlib.import_module(f"tuning.{module}")
    except ModuleNotFoundError as exc:
        if exc.name in (f"tuning.{module}", "tuning", "ray"):
            return None
        raise
    for name in names:
        function = getattr(loaded, name, None)
        if callable(function):
            return function
    return None


def backend_name(module: str, *names: str) -> str:
    """Which path serves the function: "ray" when ``tuning`` provides it, else "local"."""
    return "ray" if tuning_function(module, *names) is not None else "local"


# ----------------------------------------------------------------------------------------------- tuning
@dataclass
class TuneOutcome:
    """Where a search left its results (URLs redacted) and its best dev CCC."""

    out_url: str
    best_config_url: str
    trials_url: str
    best_dev_ccc: float
    trials: int
    backend: str
    reused: bool = False


def tune_done(out_url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a finished search already sits at ``out_url`` (its best config was written last)."""
    out = resolve(out_url, storage_options)
    return exists(out.fs, out.join(BEST_CONFIG).path)


def run_search(
    dataset_url: str,
    out_url: str,
    *,
    base_config: RunConfig,
    num_samples: int,
    max_concurrent: int,
    max_epochs: int,
    dimension: str,
    resume: bool,
    feature_set: str | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> TuneOutcome:
    """A hyperparameter search: ``tuning.tune.run_tune`` (Ray Tune, ASHA + Optuna) when available, else a small
    sequential random search (:func:`sequential_search`) with the same outputs: best_config.yaml and
    trials.parquet under ``out_url``."""
    out = resolve(out_url, storage_options)
    if resume and tune_done(out_url, storage_options):
        return _tune_outcome(out_url, storage_options, backend="reused", reused=True)
    run_tune = tuning_function("tune", "run_tune")
    if run_tune is not None:
        run_tune(
            dataset_url,
            out_url,
            num_samples=num_samples,
            max_concurrent=max_concurrent,
            max_epochs=max_epochs,
            dimension=dimension,
            resume=resume,
            base_config=base_config,
            feature_set=feature_set,
            storage_options=storage_options,
            progress=progress,
        )
        return _tune_outcome(out.url, storage_options, backend="ray")
    from affect_core.data.dataset import read_corpus

    corpus = read_corpus(dataset_url, feature_set=feature_set, storage_options=storage_options)
    return sequential_search(
        corpus,
        out_url,
        base_config=base_config,
        num_samples=num_samples,
        max_epochs=max_epochs,
        dimension=dimension,
        storage_options=storage_options,
        progress=progress,
    )


def sequential_search(
    corpus: Any,
    out_url: str,
    *,
    base_config: RunConfig,
    num_samples: int,
    max_epochs: int,
    dimension: str,
    storage_options: dict[str, Any] | None = None,
    progress: bool = False,
    seed: int = 0,
) -> TuneOutcome:
    """Random search over :data:`FALLBACK_SPACE` in this process, one trial after the other (seed 0 each).

    Trials are ordinary seed runs under ``out_url/trials/<k>``, so an interrupted search resumes where it
    stopped. Writes trials.parquet, then best_config.yaml last.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from affect_core.experiment import plan_seed_tasks, run_seed

    if num_samples < 1:
        raise AffectError(f"tune: num_samples must be >= 1, got {num_samples}")
    out = resolve(out_url, storage_options)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    configs: list[RunConfig] = []
    for trial in tqdm(range(num_samples), desc="trials", disable=not progress):
        config = RunConfig.from_dict(base_config.to_dict())
        choice = {key: values[int(rng.integers(len(values)))] for key, values in FALLBACK_SPACE.items()}
        for key, value in choice.items():
            section, name = key.split(".")
            setattr(getattr(config, section), name, value)
        config.train.max_epochs = int(max_epochs)
        scores = [
            run_seed(
                task, corpus, out.join("trials", f"{trial:03d}").url, resume=True, storage_options=storage_options
            ).dev_ccc
            for task in plan_seed_tasks(config, dimension, [0])
        ]
        finite = [s for s in scores if np.isfinite(s)]
        rows.append(
            {
                "trial_id": trial,
                "dev_ccc": float(np.mean(finite)) if finite else float("nan"),
                "model": config.model.model,
                "align": config.model.align,
                **{key.split(".")[1]: float(value) for key, value in choice.items()},
            }
        )
        configs.append(config)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    write_bytes_atomic(out.fs, out.join(TRIALS).path, buffer.getvalue())
    scores = np.array([r["dev_ccc"] for r in rows])
    best = int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0
    write_bytes_atomic(out.fs, out.join(BEST_CONFIG).path, configs[best].to_yaml().encode())
    return _tune_outcome(out.url, storage_options, backend="local")


def _tune_outcome(
    out_url: str, storage_options: dict[str, Any] | None, *, backend: str, reused: bool = False
) -> TuneOutcome:
    import pyarrow.parquet as pq

    from affect_core.report import score_column

    out = resolve(out_url, storage_options)
    if not exists(out.fs, out.join(BEST_CONFIG).path):
        raise AffectError(f"{out.display()}: the search wrote no {BEST_CONFIG}")
    best, count = float("nan"), 0
    if exists(out.fs, out.join(TRIALS).path):
        trials = pq.read_table(io.BytesIO(read_bytes(out.fs, out.join(TRIALS).path)))
        count = trials.num_rows
        column = score_column(trials)
        if column is not None and count:
            values = np.asarray(trials.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)
            best = float(np.nanmax(values)) if np.isfinite(values).any() else float("nan")
    return TuneOutcome(out.display(), out.display(BEST_CONFIG), out.display(TRIALS), best, count, backend, reused)


# --------------------------------------------------------------------------------------------- training
def train_seeds_on_ray() -> Callable[..., Any] | None:
    """The Ray multi-seed driver of ``tuning.train_seeds`` when it exists."""
    return tuning_function("train_seeds", "train_seeds", "run_seeds", "train_run")


# ---------------------------------------------------------------------------------------------- scoring
def score_on_ray() -> Callable[..., Any] | None:
    """The Ray Data scorer of ``tuning.score`` when it exists."""
    return tuning_function("score", "score_dataset", "score_ray", "run_score")


def describe(url: str) -> str:
    """A URL safe for logs and artifacts."""
    return redact(url)
