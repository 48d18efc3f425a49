"""Prefect tasks: each one calls one library function (``affect_core``) or one Ray driver (``tuning``).

Retries: tasks that touch storage or a cluster retry up to :data:`flows.retry.RETRIES` times with exponential
backoff, but only for transient faults (:func:`flows.retry.retry_on_transient`); bad input fails at once.
Retrying is safe because every step is idempotent on its outputs: an ingest of unchanged input is a no-op, a
seed resumes from its checkpoint (a finished seed is not trained again), scoring skips finished videos.

Caching: ``NO_CACHE`` throughout. Whether a step is done is decided by its outputs in storage (dataset
manifests, a seed's rows.json, prediction files), not by Prefect's result store: that survives a lost Prefect
database, a different machine and a cleaned ``~/.prefect``, and never reports done for outputs that were
deleted.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from affect_core import scoring
from affect_core.config import RunConfig, load_run_config
from affect_core.storage import redact, resolve, write_bytes_atomic
from flows import backend
from flows.retry import RETRIES, RETRY_DELAYS, RETRY_JITTER, retry_on_transient

PIPELINE_RECORD = "pipeline.json"
RETRYING = {
    "retries": RETRIES,
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_jitter_factor": RETRY_JITTER,
    "retry_condition_fn": retry_on_transient,
    "cache_policy": NO_CACHE,
}


@task(name="ingest", **RETRYING)
def ingest_task(
    source: str,
    dataset_url: str,
    *,
    layout: str,
    feature_set: str | None = None,
    fps: float | None = None,
    s3_endpoint: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Validate the source corpus and write a new dataset version; a no-op when the content hash is unchanged."""
    if layout == "video":  # videos: the fitted video transform is stored beside the dataset too
        from affect_core.video.layout import ingest_videos as ingest
    else:
        from affect_core.data.dataset import ingest

    result = ingest(
        source,
        dataset_url,
        layout=layout,
        feature_set=feature_set,
        storage_options=backend.storage_options_for(dataset_url, s3_endpoint),
        source_storage_options=backend.storage_options_for(source, s3_endpoint),
        progress=progress,
        fps=fps,
    )
    get_run_logger().info(redact(result.summary()))
    return dataclasses.asdict(result)


@task(name="check-run", **RETRYING)
def check_run_task(run_url: str, key: dict[str, Any], *, s3_endpoint: str | None = None) -> bool:
    """Record what a pipeline run is made of (``RUN_URL/pipeline.json``: dataset content hash and the parameters
    that shape its outputs) and refuse to resume a run made of something else, whose finished seeds and
    predictions would otherwise be reused. Returns True when an earlier attempt of the same run is resumed."""
    from affect_core.errors import AffectError
    from affect_core.storage import exists, read_bytes

    run = resolve(run_url, backend.storage_options_for(run_url, s3_endpoint))
    record = run.join(PIPELINE_RECORD)
    wanted = json.loads(json.dumps(key, sort_keys=True))
    if exists(run.fs, record.path):
        previous = json.loads(read_bytes(run.fs, record.path))
        if previous != wanted:
            changed = sorted(k for k in set(previous) | set(wanted) if previous.get(k) != wanted.get(k))
            raise AffectError(
                f"{run.display()}: holds a pipeline run of other input or parameters ({', '.join(changed)} "
                "differ); choose a new --out (a '{version}' in it becomes the dataset version) or delete the old run"
            )
        return True
    write_bytes_atomic(run.fs, record.path, json.dumps(wanted, indent=2, sort_keys=True).encode())
    return False


@task(name="tune", **RETRYING)
def tune_task(
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
    s3_endpoint: str | None = None,
    progress: bool = False,
) -> backend.TuneOutcome:
    """A hyperparameter search writing best_config.yaml and trials.parquet (reused when already finished)."""
    outcome = backend.run_search(
        dataset_url,
        out_url,
        base_config=base_config,
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        max_epochs=max_epochs,
        dimension=dimension,
        resume=resume,
        feature_set=feature_set,
        storage_options=backend.storage_options_for(out_url, s3_endpoint),
        progress=progress,
    )
    get_run_logger().info(
        "search at %s (%s): %d trial(s), best dev CCC %.4f%s",
        outcome.out_url,
        outcome.backend,
        outcome.trials,
        outcome.best_dev_ccc,
        " (reused)" if outcome.reused else "",
    )
    return outcome


@task(name="load-config", **RETRYING)
def load_config_task(
    config_url: str | None,
    *,
    model: str | None = None,
    align: str | None = None,
    epochs: int | None = None,
    window_frames: int | None = None,
    s3_endpoint: str | None = None,
) -> RunConfig:
    """The run configuration: the file's (e.g. a search's best config) with the given flags on top."""
    return load_run_config(
        config_url,
        storage_options=backend.storage_options_for(config_url, s3_endpoint),
        model=model,
        align=align,
        epochs=epochs,
        window_frames=window_frames,
    )


@task(name="read-corpus", **RETRYING)
def read_corpus_task(dataset_url: str, *, feature_set: str | None = None, s3_endpoint: str | None = None) -> Any:
    """The latest dataset version in memory (train, dev and test splits)."""
    from affect_core.data.dataset import read_corpus

    return read_corpus(
        dataset_url, feature_set=feature_set, storage_options=backend.storage_options_for(dataset_url, s3_endpoint)
    )


@task(name="train-seed", task_run_name="train-{seed_task.key}", **RETRYING)
def train_seed_task(
    seed_task: Any, corpus: Any, run_url: str, *, s3_endpoint: str | None = None, progress: bool = False
) -> Any:
    """Train one model with one seed in this process; a finished seed is read back, not trained again."""
    from affect_core.experiment import run_seed

    outcome = run_seed(
        seed_task,
        corpus,
        run_url,
        resume=True,
        progress=progress,
        storage_options=backend.storage_options_for(run_url, s3_endpoint),
    )
    get_run_logger().info("%s: dev CCC %.4f", seed_task.key, outcome.dev_ccc)
    return outcome


@task(name="finish-run", **RETRYING)
def finish_run_task(outcomes: list[Any], run_url: str, *, fps: float, s3_endpoint: str | None = None) -> dict[str, str]:
    """results.parquet, summary.md and the best-seed model bundle of a run."""
    from affect_core.experiment import finish_run

    return finish_run(outcomes, run_url, fps=fps, storage_options=backend.storage_options_for(run_url, s3_endpoint))


@task(name="train-seeds-on-ray", **RETRYING)
def train_on_ray_task(
    dataset_url: str,
    run_url: str,
    config: RunConfig,
    *,
    dimension: str,
    seeds: int,
    feature_set: str | None = None,
    s3_endpoint: str | None = None,
    progress: bool = False,
) -> dict[str, str]:
    """All seeds in parallel on Ray (``tuning.train_seeds``), resuming finished seeds and checkpoints."""
    driver = backend.train_seeds_on_ray()
    assert driver is not None, "train_on_ray_task needs tuning.train_seeds"
    return driver(
        dataset_url,
        run_url,
        config,
        dimension=dimension,
        seeds=seeds,
        feature_set=feature_set,
        resume=True,
        storage_options=backend.storage_options_for(run_url, s3_endpoint),
        progress=progress,
    )


@task(name="score", **RETRYING)
def score_task(
    data_url: str,
    model_url: str,
    out_url: str,
    *,
    splits: list[str] | None = None,
    s3_endpoint: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-frame predictions of every video (Ray Data when ``tuning.score`` exists); finished videos skipped."""
    options = backend.storage_options_for(out_url, s3_endpoint)
    scorer = backend.score_on_ray()
    if scorer is not None:
        result = scorer(data_url, model_url, out_url, splits=splits, storage_options=options, progress=progress)
    else:
        result = scoring.score_dataset(
            data_url, model_url, out_url, splits=splits, storage_options=options, progress=progress
        )
    summary = result if isinstance(result, dict) else dataclasses.asdict(result)
    summary.setdefault("url", redact(out_url))
    for name in ("videos", "frames", "skipped"):
        summary.setdefault(name, 0)
    summary.setdefault("seconds", 0.0)
    get_run_logger().info(
        "scored %s video(s), %s frame(s), %s already done -> %s",
        summary["videos"],
        summary["frames"],
        summary["skipped"],
        redact(summary["url"]),
    )
    return summary


@task(name="evaluate", **RETRYING)
def evaluate_task(predictions_url: str, dataset_url: str, *, s3_endpoint: str | None = None) -> str | None:
    """CCC / RMSE / PCC of the predictions per split and dimension (AVEC protocol), written next to them as
    ``_evaluation.json``; None when no scored video has labels."""
    from affect_core.data.dataset import iter_videos
    from affect_core.errors import AffectError
    from affect_core.scoring import evaluate_predictions, evaluation_markdown, read_predictions

    pred_options = backend.storage_options_for(predictions_url, s3_endpoint)
    predictions = read_predictions(predictions_url, pred_options)
    videos = iter_videos(
        dataset_url,
        video_ids=sorted(predictions),
        storage_options=backend.storage_options_for(dataset_url, s3_endpoint),
    )
    try:
        result = evaluate_predictions(predictions, videos)
    except AffectError as exc:
        if "no labelled video" in str(exc):
            return None
        raise
    target = resolve(predictions_url, pred_options).join("_evaluation.json")
    write_bytes_atomic(target.fs, target.path, json.dumps(result, indent=2).encode())
    return evaluation_markdown(result)


@task(name="report", **RETRYING)
def report_task(
    run_url: str,
    *,
    dataset_url: str | None = None,
    predictions_url: str | None = None,
    tuning_url: str | None = None,
    videos: int = 2,
    s3_endpoint: str | None = None,
) -> Any:
    """summary.md and the PNG plots of a run under ``RUN_URL/report``."""
    from affect_core.report import write_report

    result = write_report(
        run_url,
        dataset_url=dataset_url,
        predictions_url=predictions_url,
        tuning_url=tuning_url,
        videos=videos,
        storage_options=backend.storage_options_for(run_url, s3_endpoint),
    )
    get_run_logger().info("report: %s (%d plot(s))", result.summary_url, len(result.plots))
    return result
