"""The Prefect flows: ingest, tune, train (multi-seed), score, and the pipeline that chains them with a report.

Flows are thin: each wires tasks of :mod:`flows.tasks` (which call ``affect_core`` or ``tuning``) and publishes
artifacts (:mod:`flows.artifacts`). Parameters are the CLI's. Storage is any fsspec URL; for s3:// URLs the
endpoint is a parameter and the keys come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), so
no secret is ever a flow parameter, a log line or an artifact.

Layout of the pipeline's RUN_URL (``out``)::

    tuning/          the search: best_config.yaml, trials.parquet (and the Ray layer's tuning.png)
    results.parquet, summary.md, model/, seeds/, checkpoints/     the multi-seed training run
    predictions/     per-frame predictions of every video, _evaluation.json
    report/          summary.md and PNG plots (affect report)

A pipeline that crashed resumes when run again with the same parameters: the ingest is a no-op (same content
hash), a finished search is reused, finished seeds are read back, scoring skips finished videos.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from affect_core.storage import join, redact
from flows import artifacts, backend
from flows.tasks import (
    check_run_task,
    evaluate_task,
    finish_run_task,
    ingest_task,
    load_config_task,
    read_corpus_task,
    report_task,
    score_task,
    train_on_ray_task,
    train_seed_task,
    tune_task,
)

FLOW_NAMES = {
    "ingest": "affect-ingest",
    "tune": "affect-tune",
    "train": "affect-train",
    "score": "affect-score",
    "pipeline": "affect-pipeline",
}


@flow(name=FLOW_NAMES["ingest"], description="Ingest a feature corpus into a versioned Parquet dataset.")
def ingest_flow(
    source: str,
    dataset_url: str,
    layout: str = "avec2016",
    feature_set: str | None = None,
    fps: float | None = None,
    s3_endpoint: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Validate SOURCE (layout avec2016 | csv | parquet) and write it to DATASET_URL as a new version; skipped
    (no-op) when the content hash equals the latest version's."""
    result = ingest_task(
        source,
        dataset_url,
        layout=layout,
        feature_set=feature_set,
        fps=fps,
        s3_endpoint=s3_endpoint,
        progress=progress,
    )
    artifacts.publish_markdown("affect-ingest", artifacts.ingest_markdown(result), "What the ingest did")
    return result


@flow(name=FLOW_NAMES["tune"], description="Hyperparameter search; writes the best config for training.")
def tune_flow(
    dataset_url: str,
    out: str,
    num_samples: int = 4,
    max_concurrent: int = 1,
    max_epochs: int = 3,
    dimension: str = "arousal",
    model: str | None = None,
    align: str | None = None,
    feature_set: str | None = None,
    resume: bool = True,
    s3_endpoint: str | None = None,
    progress: bool = False,
) -> backend.TuneOutcome:
    """Search the model's hyperparameters on DATASET_URL (dev CCC), writing best_config.yaml and trials.parquet
    under OUT. With ``resume`` a finished search at OUT is reused and an interrupted one continues."""
    base = load_config_task(None, model=model, align=align, s3_endpoint=s3_endpoint)
    outcome = tune_task(
        dataset_url,
        out,
        base_config=base,
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        max_epochs=max_epochs,
        dimension=dimension,
        resume=resume,
        feature_set=feature_set,
        s3_endpoint=s3_endpoint,
        progress=progress,
    )
    _publish_tuning(outcome, out, s3_endpoint)
    return outcome


@flow(name=FLOW_NAMES["train"], description="Train a configuration over seeds; results, summary and model.")
def train_flow(
    dataset_url: str,
    out: str,
    dimension: str = "both",
    model: str | None = None,
    align: str | None = None,
    seeds: int = 2,
    epochs: int | None = None,
    feature_set: str | None = None,
    config: str | None = None,
    window_frames: int | None = None,
    s3_endpoint: str | None = None,
    progress: bool = False,
) -> dict[str, str]:
    """Train DIMENSION models (arousal | valence | both | joint) over SEEDS seeds, on Ray when the Ray layer is
    there (else one seed after the other), and write results.parquet, summary.md and model/ under OUT.
    Finished seeds are never trained again (a re-run resumes)."""
    run_config = load_config_task(
        config, model=model, align=align, epochs=epochs, window_frames=window_frames, s3_endpoint=s3_endpoint
    )
    outputs = _train(dataset_url, out, run_config, dimension, seeds, feature_set, s3_endpoint, progress)
    _publish_results(out, s3_endpoint)
    return outputs


@flow(name=FLOW_NAMES["score"], description="Per-frame arousal and valence with uncertainty for every video.")
def score_flow(
    data_url: str,
    model_url: str,
    out: str,
    splits: list[str] | None = None,
    s3_endpoint: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score every video of DATA_URL (or only SPLITS) with the bundle at MODEL_URL into OUT, then evaluate the
    labelled ones. Finished videos are skipped, so a re-run never duplicates rows."""
    result = score_task(data_url, model_url, out, splits=splits, s3_endpoint=s3_endpoint, progress=progress)
    evaluation = evaluate_task(out, data_url, s3_endpoint=s3_endpoint)
    artifacts.publish_markdown("affect-score", artifacts.score_markdown(result, evaluation), "Scoring job")
    result["evaluation"] = evaluation
    return result


@flow(name=FLOW_NAMES["pipeline"], description="ingest -> tune -> train over seeds -> score -> report.")
def pipeline_flow(
    source: str,
    dataset_url: str,
    out: str,
    layout: str = "avec2016",
    feature_set: str | None = None,
    dimension: str = "both",
    model: str | None = "lstm-kf",
    align: str | None = "adaptive",
    seeds: int = 2,
    epochs: int = 3,
    num_samples: int = 2,
    max_concurrent: int = 1,
    tune_epochs: int | None = None,
    window_frames: int | None = None,
    report_videos: int = 2,
    s3_endpoint: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The whole product on one corpus: ingest SOURCE into DATASET_URL, search hyperparameters (NUM_SAMPLES
    trials; 0 skips the search), train the best configuration over SEEDS seeds, score every video, evaluate and
    write the report, all under OUT. ``model``/``align`` given on top of the best configuration (None: the
    search's choice). Re-running after a crash resumes. A ``{version}`` in OUT becomes the ingested dataset
    version, so a scheduled pipeline makes one run per version of its input."""
    logger = get_run_logger()
    ingested = ingest_flow(
        source, dataset_url, layout=layout, feature_set=feature_set, s3_endpoint=s3_endpoint, progress=progress
    )
    out = out.replace("{version}", ingested["version"])
    key = {
        "content_hash": ingested["content_hash"],
        "feature_set": feature_set,
        "dimension": dimension,
        "model": model,
        "align": align,
        "epochs": epochs,
        "num_samples": num_samples,
        "tune_epochs": tune_epochs,
        "window_frames": window_frames,
    }
    if check_run_task(out, key, s3_endpoint=s3_endpoint):
        logger.info("resuming the run at %s: finished steps are not redone", redact(out))
    tuning_url = join(out, "tuning")
    config_url = None
    if num_samples > 0:
        outcome = tune_flow(
            dataset_url,
            tuning_url,
            num_samples=num_samples,
            max_concurrent=max_concurrent,
            max_epochs=tune_epochs or epochs,
            dimension="arousal" if dimension == "both" else dimension,
            model=model,
            align=align,
            feature_set=feature_set,
            resume=True,
            s3_endpoint=s3_endpoint,
            progress=progress,
        )
        config_url = join(out, "tuning", backend.BEST_CONFIG)
        logger.info("best configuration: %s (dev CCC %.4f)", outcome.best_config_url, outcome.best_dev_ccc)
    train_flow(
        dataset_url,
        out,
        dimension=dimension,
        model=model,
        align=align,
        seeds=seeds,
        epochs=epochs,
        feature_set=feature_set,
        config=config_url,
        window_frames=window_frames,
        s3_endpoint=s3_endpoint,
        progress=progress,
    )
    predictions_url = join(out, "predictions")
    scored = score_flow(dataset_url, join(out, "model"), predictions_url, s3_endpoint=s3_endpoint, progress=progress)
    report = report_task(
        out,
        dataset_url=dataset_url,
        predictions_url=predictions_url,
        tuning_url=tuning_url,
        videos=report_videos,
        s3_endpoint=s3_endpoint,
    )
    _publish_report(report)
    logger.info("report: %s; predictions: %s", report.summary_url, redact(predictions_url))
    return {
        "report": report.summary_url,
        "plots": report.plots,
        "predictions": redact(predictions_url),
        "results": redact(join(out, "results.parquet")),
        "model": redact(join(out, "model")),
        "evaluation": scored.get("evaluation"),
    }


# ------------------------------------------------------------------------------------------------- helpers
def _train(
    dataset_url: str,
    out: str,
    run_config: Any,
    dimension: str,
    seeds: int,
    feature_set: str | None,
    s3_endpoint: str | None,
    progress: bool,
) -> dict[str, str]:
    """Ray when ``tuning.train_seeds`` exists (one task), else one retrying task per seed."""
    from affect_core.experiment import plan_seed_tasks

    if backend.train_seeds_on_ray() is not None:
        return train_on_ray_task(
            dataset_url,
            out,
            run_config,
            dimension=dimension,
            seeds=seeds,
            feature_set=feature_set,
            s3_endpoint=s3_endpoint,
            progress=progress,
        )
    corpus = read_corpus_task(dataset_url, feature_set=feature_set, s3_endpoint=s3_endpoint)
    outcomes = [
        train_seed_task(seed_task, corpus, out, s3_endpoint=s3_endpoint, progress=progress)
        for seed_task in plan_seed_tasks(run_config, dimension, range(seeds))
    ]
    return finish_run_task(outcomes, out, fps=corpus.fps, s3_endpoint=s3_endpoint)


def _publish_results(run_url: str, s3_endpoint: str | None) -> str:
    """The run's paper-style tables (mean and std over seeds, learned lag) as a markdown artifact."""
    from affect_core.experiment import read_results, summary_markdown
    from affect_core.report import run_fps
    from affect_core.storage import resolve

    options = backend.storage_options_for(run_url, s3_endpoint)
    rows = read_results(run_url, options).to_pylist()
    fps = run_fps(resolve(run_url, options))
    markdown = summary_markdown(rows, fps=fps) + f"\nRun: `{redact(run_url)}`\n"
    artifacts.publish_markdown("affect-train-results", markdown, "Metrics over seeds and learned lag")
    artifacts.publish_link("affect-train-summary", join(run_url, "summary.md"), "summary.md of the run")
    return markdown


def _publish_tuning(outcome: backend.TuneOutcome, out: str, s3_endpoint: str | None) -> str:
    from affect_core.report import read_trials, tuning_markdown
    from affect_core.storage import resolve

    trials = read_trials(resolve(out, backend.storage_options_for(out, s3_endpoint)))
    markdown = artifacts.tune_markdown(outcome, tuning_markdown(trials) if trials is not None else "")
    artifacts.publish_markdown("affect-tune", markdown, "Hyperparameter search")
    artifacts.publish_link("affect-tune-best-config", join(out, backend.BEST_CONFIG), "best_config.yaml")
    return markdown


def _publish_report(report: Any) -> None:
    artifacts.publish_markdown("affect-report", report.summary, "Report summary (results, tuning, plots)")
    artifacts.publish_link("affect-report-summary", report.summary_url, "report summary.md")
    for name, url in report.plots.items():
        artifacts.publish_link(f"affect-report-{name}", url, f"{name}.png")
