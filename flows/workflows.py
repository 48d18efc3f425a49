"""The Prefect flows: ingest, tune, train (multi-seed), score, and the pipeline that chains them with a report.

Each flow takes its job of :mod:`flows.jobs` as its one parameter (``job``), the description the CLI command of the
same name is built from, so every option of a job can be set from a deployment. Flows are thin: each calls the
tasks of :mod:`flows.tasks` (``task(fn)`` of the jobs' run functions) and publishes artifacts
(:mod:`flows.artifacts`). Storage is any fsspec URL; for s3:// URLs the endpoint is a job field and the keys come
from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), so no secret is ever a flow parameter, a log line
or an artifact.

Training and tuning run with ``resume`` in the flows: a retried task or a re-run flow never redoes finished seeds or
a finished search. A ``{date}`` in an output URL (``out``) becomes the flow run's scheduled date (UTC, YYYY-MM-DD),
so a schedule writes a new dated run each time and a re-run of the same flow run resumes its own.

Layout of the pipeline's RUN_URL (``out``)::

    tuning/          the search: best_config.yaml, trials.parquet, tuning.png, trials/
    results.parquet, summary.md, model/, seeds/, checkpoints/     the multi-seed training run
    predictions/     per-frame predictions of every video, _evaluation.json
    report/          summary.md and PNG plots (affect report)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow, get_run_logger

from affect_core.errors import AffectError
from affect_core.storage import join, redact
from flows import artifacts
from flows.jobs import (
    PIPELINE_WIRING,
    EvaluateJob,
    IngestJob,
    PipelineJob,
    PromoteJob,
    ReportJob,
    ScoreJob,
    TrainJob,
    TuneJob,
    storage_options_for,
    wire,
)
from flows.tasks import (
    check_run_task,
    evaluate_task,
    ingest_task,
    promote_task,
    report_task,
    score_task,
    train_task,
    tune_task,
)

FLOW_NAMES = {
    "ingest": "affect-ingest",
    "tune": "affect-tune",
    "train": "affect-train",
    "score": "affect-score",
    "pipeline": "affect-pipeline",
}
# Job fields that change how a step runs but not what it writes: left out of a pipeline run's record.
RUN_NEUTRAL = (
    *PIPELINE_WIRING,
    "seeds",
    "ray",
    "cpus_per_seed",
    "gpus_per_seed",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_failures",
    "seeds_per_worker",
)


@flow(name=FLOW_NAMES["ingest"], description="Ingest a feature corpus into a versioned Parquet dataset.")
def ingest_flow(job: IngestJob) -> dict[str, Any]:
    """Validate the job's source and write it to its dataset as a new version; skipped (no-op) when the content
    hash equals the latest version's."""
    result = dataclasses.asdict(ingest_task(job))
    artifacts.publish_markdown("affect-ingest", artifacts.ingest_markdown(result), "What the ingest did")
    return result


@flow(name=FLOW_NAMES["tune"], description="Hyperparameter search on Ray Tune; writes the best config for training.")
def tune_flow(job: TuneJob) -> Any:
    """Search the model's hyperparameters (dev CCC), writing best_config.yaml and trials.parquet under the job's
    out. A finished search there is read back; an interrupted one continues."""
    job = dataclasses.replace(job, out=dated(job.out), resume=True)
    outcome = tune_task(job)
    _publish_tuning(outcome, job)
    return outcome


@flow(name=FLOW_NAMES["train"], description="Train a configuration over seeds; results, summary and model.")
def train_flow(job: TrainJob) -> dict[str, str]:
    """Train the job's models over its seeds (on Ray when the job asks for it or RAY_ADDRESS is set) and write
    results.parquet, summary.md and model/ under its out. Finished seeds are never trained again."""
    job = dataclasses.replace(job, out=dated(job.out), resume=True)
    outputs = train_task(job)
    _publish_results(job.out, job.s3_endpoint)
    return outputs


@flow(name=FLOW_NAMES["score"], description="Per-frame arousal and valence with uncertainty for every video.")
def score_flow(job: ScoreJob) -> dict[str, Any]:
    """Score every video of the job's data (or its splits) with its model (a bundle or an alias), then evaluate
    the labelled ones. Finished videos are skipped, so a re-run never duplicates rows."""
    job = dataclasses.replace(job, out=dated(job.out))
    result = dataclasses.asdict(score_task(job))
    result["url"] = redact(result["url"])
    evaluation = evaluate_task(
        EvaluateJob(predictions_url=job.out, dataset_url=job.data_url, s3_endpoint=job.s3_endpoint)
    )
    markdown = _evaluation_markdown(evaluation)
    artifacts.publish_markdown("affect-score", artifacts.score_markdown(result, markdown), "Scoring job")
    result["evaluation"] = markdown
    return result


@flow(name=FLOW_NAMES["pipeline"], description="ingest -> tune -> train over seeds -> score -> report.")
def pipeline_flow(job: PipelineJob) -> dict[str, Any]:
    """The whole product on one corpus: ingest, search hyperparameters (skipped when ``tune.num_samples`` is 0),
    train the best configuration over seeds, score every video, evaluate and write the report, all under the
    job's out; then, with ``promote_to``, point that model alias at the run's model. Re-running after a crash
    resumes. The search runs on the training's dimension (``tune.dimension`` when the training is "both") and, when
    the training names a model, on that model only: the training trains the best trial's configuration, whose model
    is the model searched."""
    logger = get_run_logger()
    shared = {"s3_endpoint": job.s3_endpoint, "progress": job.progress}
    ingested = ingest_flow(
        wire(job.ingest, source=job.source, dataset_url=job.dataset_url, feature_set=job.feature_set, **shared)
    )
    out = dated(job.out).replace("{version}", ingested["version"])
    tuning_url = join(out, "tuning")
    tune = wire(
        job.tune, dataset_url=job.dataset_url, out=tuning_url, feature_set=job.feature_set, resume=True, **shared
    )
    if job.train.dimension != "both":
        tune = dataclasses.replace(tune, dimension=job.train.dimension)
    tune = dataclasses.replace(tune, model=searched_model(tune, job.train))
    train = wire(job.train, dataset_url=job.dataset_url, out=out, feature_set=job.feature_set, resume=True, **shared)
    key = {
        "content_hash": ingested["content_hash"],
        "feature_set": job.feature_set,
        "train": _run_key(train),
        "tune": _run_key(tune) if tune.num_samples > 0 else None,
    }
    if check_run_task(out, key, s3_endpoint=job.s3_endpoint):
        logger.info("resuming the run at %s: finished steps are not redone", redact(out))
    if tune.num_samples > 0:
        outcome = tune_flow(tune)
        train = dataclasses.replace(train, config=join(tuning_url, "best_config.yaml"))
        logger.info("best configuration: %s (dev CCC %.4f)", outcome.best_config_url, outcome.best_dev_ccc)
    train_flow(train)
    predictions_url = join(out, "predictions")
    scored = score_flow(
        wire(job.score, data_url=job.dataset_url, model_url=join(out, "model"), out=predictions_url, **shared)
    )
    report = report_task(
        ReportJob(
            run_url=out,
            dataset=job.dataset_url,
            predictions=predictions_url,
            tuning=tuning_url,
            videos=job.report_videos,
            s3_endpoint=job.s3_endpoint,
        )
    )
    _publish_report(report)
    logger.info("report: %s; predictions: %s", report.summary_url, redact(predictions_url))
    if job.promote_to:
        alias = promote_task(PromoteJob(join(out, "model"), job.promote_to, s3_endpoint=job.s3_endpoint))
        logger.info("%s now names %s", alias.alias_url, redact(alias.model))
    return {
        "report": report.summary_url,
        "plots": report.plots,
        "predictions": redact(predictions_url),
        "results": redact(join(out, "results.parquet")),
        "model": redact(join(out, "model")),
        "evaluation": scored.get("evaluation"),
    }


# ------------------------------------------------------------------------------------------------- helpers
def searched_model(tune: TuneJob, train: TrainJob) -> str | None:
    """The model the pipeline's search tries: the one the training is told to train (the training then trains what
    was tuned, the best trial's configuration with its model), else the search's own choice. The two told
    different models is an AffectError."""
    if train.model and tune.model and train.model != tune.model:
        raise AffectError(
            f"pipeline: the search is told model {tune.model!r} and the training {train.model!r}; the training "
            "trains the best configuration found, so give one model (or leave the search's out)"
        )
    return train.model or tune.model


def dated(url: str) -> str:
    """``url`` with ``{date}`` replaced by the flow run's scheduled date (today for a run started by hand)."""
    if "{date}" not in url:
        return url
    import datetime as dt

    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time or dt.datetime.now(dt.timezone.utc)
    return url.replace("{date}", when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d"))


def _run_key(step: Any) -> dict[str, Any]:
    """The fields of a step that shape its outputs (recorded by the pipeline to refuse resuming other work)."""
    return {k: v for k, v in dataclasses.asdict(step).items() if k not in RUN_NEUTRAL}


def _evaluation_markdown(evaluation: dict[str, Any] | None) -> str | None:
    from affect_core.scoring import evaluation_markdown

    return evaluation_markdown(evaluation) if evaluation is not None else None


def _publish_results(run_url: str, s3_endpoint: str | None) -> str:
    """The run's paper-style tables (mean and std over seeds, learned lag) as a markdown artifact."""
    from affect_core.experiment import read_results, summary_markdown
    from affect_core.report import run_fps
    from affect_core.storage import resolve

    options = storage_options_for(run_url, s3_endpoint)
    rows = read_results(run_url, options).to_pylist()
    fps = run_fps(resolve(run_url, options))
    markdown = summary_markdown(rows, fps=fps) + f"\nRun: `{redact(run_url)}`\n"
    artifacts.publish_markdown("affect-train-results", markdown, "Metrics over seeds and learned lag")
    artifacts.publish_link("affect-train-summary", join(run_url, "summary.md"), "summary.md of the run")
    return markdown


def _publish_tuning(outcome: Any, job: TuneJob) -> str:
    from affect_core.report import read_trials, tuning_markdown
    from affect_core.storage import resolve

    trials = read_trials(resolve(job.out, storage_options_for(job.out, job.s3_endpoint)))
    markdown = artifacts.tune_markdown(outcome, tuning_markdown(trials) if trials is not None else "")
    artifacts.publish_markdown("affect-tune", markdown, "Hyperparameter search")
    artifacts.publish_link("affect-tune-best-config", outcome.best_config_url, "best_config.yaml")
    return markdown


def _publish_report(report: Any) -> None:
    artifacts.publish_markdown("affect-report", report.summary, "Report summary (results, tuning, plots)")
    artifacts.publish_link("affect-report-summary", report.summary_url, "report summary.md")
    for name, url in report.plots.items():
        artifacts.publish_link(f"affect-report-{name}", url, f"{name}.png")
