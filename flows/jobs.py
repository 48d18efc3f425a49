"""The jobs of the product, each described once: ingest, tune, train, score, evaluate, report and the pipeline.

A job is a dataclass holding every option of the job; its fields carry their help text (and, for the command line,
whether they are an argument, a flag's spelling and a lower bound). ``affect_cli.job_options`` turns a job class into
a typer command and :mod:`flows.workflows` takes the job as a flow parameter, so an option added here reaches the
CLI, the flows and the deployments' parameters by itself. :func:`run` runs a job: each ``run_<job>`` says what the
job calls in the single-process library (``affect_core``) and in Ray (``tuning``) and what one unit of its Ray work
asks for; :mod:`flows.runner` decides where it runs (this process, a Ray driver here, or a Ray job at a job server).

This module imports neither ray nor prefect nor torch at import time (``affect --help`` stays instant); the layer a
job needs is imported when it runs.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from affect_core.errors import AffectError
from flows.runner import Placement, RayAsk, parse_gpus, placement, run_job

S3_ENDPOINT_HELP = "S3 endpoint URL for s3:// URLs (default: $AFFECT_S3_ENDPOINT); keys come from the environment."
GPUS_HELP = (
    "A number (fractions share a GPU), or auto:FRACTION: that fraction where the cluster has or can add GPU nodes, "
    "none where it cannot."
)


def option(default: Any = None, help: str = "", **cli: Any) -> Any:
    """A job field with its help text. cli: ``argument`` (positional on the command line), ``flag`` (the option's
    spelling, e.g. "--model" or "--ray/--no-ray"), ``min``, ``required`` (the command line must give it; the
    dataclass default "" lets a pipeline fill it in), ``parse`` (turns the command line's text into the value),
    ``ray_switch`` (the field that puts the job on Ray: :func:`flows.runner.placement`), ``url`` (the field names a
    storage location: a relative local path given on the command line is made absolute)."""
    metadata = {"help": help, **cli}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def required(help: str, **cli: Any) -> Any:
    """A URL every run of the job needs (checked by :func:`run`)."""
    return option("", help, required=True, url=True, **cli)


def sub_job(kind: type, prefix: str, help: str = "") -> Any:
    """A job inside the pipeline; on the command line its options are spelled ``--<prefix><name>``."""
    return field(default_factory=kind, metadata={"help": help, "prefix": prefix})


# ------------------------------------------------------------------------------------------------------- jobs
@dataclass
class IngestJob:
    """Validate SOURCE, then write it to DATASET_URL as a new dataset version (no-op if unchanged)."""

    source: str = required("Input corpus: a local directory or fsspec URL (s3://...).", argument=True)
    dataset_url: str = required("Dataset to write: a local path, s3://bucket/prefix, memory://... .", argument=True)
    layout: str = option("avec2016", "Input layout: avec2016, csv, parquet, openface, muse, video or affwild2.")
    feature_set: str | None = option(
        None, "Feature set(s) to keep, e.g. appearance, or appearance+geometric (early fusion); default: every set."
    )
    fps: float | None = option(
        None,
        "Frame rate of files that number frames and have no frameTime column; where files have frameTime, a given "
        "rate must agree with it.",
    )
    min_face_confidence: float = option(
        0.5, "openface: rows with a lower confidence (py-feat: FaceScore) are frames without a face.", min=0.0
    )
    file_mb: float = option(256.0, "Target size of the dataset's data files in MB (each holds many videos).", min=0.001)
    parallel: bool | None = option(
        None,
        "Read and validate the videos in parallel with Ray tasks (default: when RAY_ADDRESS is set).",
        flag="--parallel/--no-parallel",
        ray_switch=True,
    )
    s3_endpoint: str | None = option(None, S3_ENDPOINT_HELP)
    progress: bool = option(True, "Show a progress bar over videos.")


@dataclass
class TuneJob:
    """Search hyperparameters on Ray Tune (Optuna proposes, ASHA stops weak trials); write the best configuration
    for `affect train --config`. Ray runs in this process unless RAY_ADDRESS names a cluster."""

    dataset_url: str = required("Dataset written by `affect ingest` (path or fsspec URL).", argument=True)
    out: str = required("Run URL: best_config.yaml, trials.parquet, tuning.png, trials/ go here.", flag="--out")
    num_samples: int = option(20, "Number of trials (the pipeline skips the search when 0).", min=0)
    max_concurrent: int = option(2, "Trials running at once.", min=1)
    epochs: int = option(20, "Most epochs per trial (ASHA stops weak trials sooner).", min=1)
    dimension: str = option("arousal", "arousal | valence | joint.")
    model: str | None = option(
        None, "Search only this model: baseline | lstm-kf | lstm-ekf (default: lstm-kf and lstm-ekf)."
    )
    config: str | None = option(None, "YAML/JSON base config; the search varies its values.", url=True)
    feature_set: str | None = option(None, "Feature set name(s), comma-joined for fusion.")
    grace_period: int = option(1, "ASHA: epochs before a trial may be stopped.", min=1)
    seed: int = option(0, "Seed of the Optuna sampler.")
    cpus_per_trial: float = option(1.0, "Ray: CPUs of each trial's worker.", min=0.01)
    gpus_per_trial: float | str = option(0.0, "Ray: GPUs of each trial's worker. " + GPUS_HELP, parse=parse_gpus)
    device: str = option("auto", "auto | cpu | cuda: where each trial trains (auto: its GPU when it has one).")
    max_failures: int = option(2, "Ray: retries of a failed trial.", min=0)
    resource_timeout: float = option(
        600.0,
        "Ray: seconds to wait for a node that can hold one trial's worker (an autoscaler adds it) before failing.",
        min=0.0,
    )
    resume: bool = option(False, "Continue an interrupted search stored in --out (a finished one is read back).")
    s3_endpoint: str | None = option(None, S3_ENDPOINT_HELP)
    progress: bool = option(True, "Show Tune's progress table.")


@dataclass
class TrainJob:
    """Train models on a dataset over seeds and write results, a paper-style summary and the model bundle."""

    dataset_url: str = required("Dataset written by `affect ingest` (path or fsspec URL).", argument=True)
    out: str = required("Run URL: results.parquet, summary.md, model/ go here.", flag="--out")
    dimension: str = option("both", "arousal | valence | both (two models) | joint (one model).")
    model: str | None = option(None, "baseline | lstm-kf | lstm-ekf (default: config or lstm-ekf).")
    align: str | None = option(None, "none | manual | adaptive (default: config or adaptive).")
    seeds: int = option(1, "Number of seeds (0..N-1) per model.", min=1)
    epochs: int | None = option(None, "Maximum epochs (early stopping on dev CCC).", min=1)
    feature_set: str | None = option(None, "Feature set name(s), comma-joined for fusion.")
    config: str | None = option(None, "YAML/JSON run config (e.g. the best config of `affect tune`).", url=True)
    window_frames: int | None = option(None, "Truncated BPTT windows of this many frames (0 = whole sequences).")
    targets: str | None = option(
        None,
        "gold | raters: train on the gold standard (default), or on each rater's own trace with one learned lag per "
        "rater (needs per-rater traces, e.g. AVEC2016's ratings_individual; --align adaptive).",
    )
    observation_noise: str | None = option(
        None,
        "fixed | learned: the filter's observation noise R, one learned value for every frame (default), or "
        "learned per frame by the front-end (R_t = diag(softplus(r + u_t)), the frame's own noise).",
    )
    resume: bool = option(False, "Continue an interrupted run from its checkpoints.")
    ray: bool | None = option(
        None,
        "Train the seeds in parallel on Ray (default: when RAY_ADDRESS is set).",
        flag="--ray/--no-ray",
        ray_switch=True,
    )
    cpus_per_seed: float = option(1.0, "Ray: CPUs per seed's worker.", min=0.01)
    gpus_per_seed: float | str = option(0.0, "Ray: GPUs per seed's worker. " + GPUS_HELP, parse=parse_gpus)
    max_failures: int = option(3, "Ray: retries of a failed seed worker.", min=0)
    resource_timeout: float = option(
        600.0,
        "Ray: seconds to wait for a node that can hold one seed's worker (an autoscaler adds it) before failing.",
        min=0.0,
    )
    seeds_per_worker: int = option(
        1,
        "Seeds of a model trained together in one process (Ray: one worker group): one batched front-end for all "
        "of them, each seed's result as if trained alone; 1 = one seed at a time.",
        min=1,
    )
    workers: int = option(
        1,
        "Ray: data-parallel workers per seed group, each holding its part of the videos (gradients summed: the "
        "model one worker would train). 1 = one worker.",
        min=1,
    )
    device: str = option("auto", "auto | cpu | cuda: where the models train (auto: a GPU when present).")
    s3_endpoint: str | None = option(None, S3_ENDPOINT_HELP)
    progress: bool = option(True, "Show progress bars.")


@dataclass
class ScoreJob:
    """Write per-frame arousal and valence (with the filter's variance) for every video, labelled or not."""

    data_url: str = required("Dataset or bare Parquet features URL to score.", argument=True)
    model_url: str = required("Model bundle URL (RUN_URL/model) or a model alias (affect promote).", flag="--model")
    out: str = required("Predictions URL (one Parquet file per video).", flag="--out")
    split: list[str] | None = option(None, "Only these splits (repeatable); default all.")
    ray: bool | None = option(
        None,
        "Score on Ray Data with an actor pool (default: when RAY_ADDRESS is set).",
        flag="--ray/--no-ray",
        ray_switch=True,
    )
    actors: int = option(4, "Ray: most scoring actors at once (at most one per video).", min=1)
    min_actors: int = option(1, "Ray: scoring actors kept however little work is queued.", min=1)
    cpus_per_actor: float = option(1.0, "Ray: CPUs per scoring actor.", min=0.01)
    gpus_per_actor: float | str = option(0.0, "Ray: GPUs per scoring actor. " + GPUS_HELP, parse=parse_gpus)
    resource_timeout: float = option(
        600.0,
        "Ray: seconds to wait for a node that can hold one scoring actor (an autoscaler adds it) before failing.",
        min=0.0,
    )
    version: str | None = option(None, "Dataset version to score (default: the latest; or DATA_URL@VERSION).")
    replace: bool = option(
        True,
        "Replace predictions of another model or dataset version at --out in one commit (--no-replace: refuse).",
        flag="--replace/--no-replace",
    )
    file_mb: float = option(256.0, "Target size of the predictions' data files in MB.", min=0.001)
    batch_videos: int = option(
        256,
        "Most videos in one model pass (at most 131,072 frames with the padding to the longest); the job commits "
        "after a batch, so fewer commit sooner and hold less memory.",
        min=1,
    )
    device: str = option("auto", "auto | cpu | cuda: where the model runs (auto: a GPU when present).")
    s3_endpoint: str | None = option(None, S3_ENDPOINT_HELP)
    progress: bool = option(True, "Show a progress bar.")
    faces: str = option(
        "principal",
        "A folder of videos: principal (the principal face of each video) or all (one track per person, face_id).",
    )


@dataclass
class EvaluateJob:
    """CCC, RMSE and Pearson CC per split and dimension, per sequence then averaged (AVEC protocol)."""

    predictions_url: str = required("Predictions URL written by `affect score`.", argument=True)
    dataset_url: str = required("Dataset with the gold-standard labels.", argument=True)
    out: str | None = option(None, "Where to write the metrics JSON (default PRED_URL/_evaluation.json).", url=True)
    s3_endpoint: str | None = option(None, S3_ENDPOINT_HELP)


@dataclass
class ReportJob:
    """Write summary.md and PNG plots (dev curves with uncertainty, learned lag, ablation, tuning) of a run."""

    run_url: str = required("Training run (results.parquet, model/) written by train/pipeline.", argument=True)
    dataset: str | None = option(None, "Dataset with the gold standard, for the dev-video curves.", url=True)
    predictions: str | None = option(
        None,
        "Predictions URL (default RUN_URL/predictions if it exists, else the run's model predicts the videos).",
        url=True,
    )
    tuning: str | None = option(None, "Tuning run with trials.parquet (default RUN_URL/tuning).", url=True)
    out: str | None = option(None, "Where to write (default RUN_URL/report).", url=True)
    video: list[str] | None = option(None, "Dev video id to plot (repeatable; default the first ones).")
    videos: int = option(2, "How many dev videos to plot when --video is not given.", min=0)
    s3_endpoint: str | None = option(None, S3_ENDPOINT_HELP)


@dataclass
class PromoteJob:
    """Make ALIAS_URL name the model bundle MODEL_URL (atomically; every earlier promotion is kept), or with --rollback
    (`affect promote --rollback ALIAS_URL`) name the model promoted before the current one. `affect score --model
    ALIAS_URL` and the scoring flows then use the model the alias names."""

    model_url: str = required("Model bundle to promote (RUN_URL/model); with --rollback, the alias.", argument=True)
    alias_url: str | None = option(
        None, "The alias (a URL of its own, e.g. s3://bucket/models/current).", argument=True, url=True
    )
    rollback: bool = option(False, "Name the model promoted before the current one instead.")
    s3_endpoint: str | None = option(None, S3_ENDPOINT_HELP)


@dataclass
class PipelineJob:
    """ingest -> tune -> train over seeds -> score -> evaluate -> report, all under OUT; resumes when run again.

    The URLs, feature set, S3 endpoint and progress of the pipeline are given once and passed to every step: a
    step's own value for them must be left out. A '{version}' in OUT becomes the ingested dataset version, so a
    scheduled pipeline makes one run per version of its input."""

    source: str = required("Input corpus (local directory or fsspec URL).", argument=True)
    dataset_url: str = required("Dataset to ingest into (path or fsspec URL).", argument=True)
    out: str = required("Run URL: tuning/, results, model/, predictions/, report/.", flag="--out")
    feature_set: str | None = option(None, "Feature set(s) to ingest and train on, e.g. appearance.")
    s3_endpoint: str | None = option(None, S3_ENDPOINT_HELP)
    progress: bool = option(True, "Show progress bars.")
    report_videos: int = option(2, "Dev videos to plot in the report.", min=0)
    promote_to: str | None = option(None, "Model alias to point at the run's model when the run is done.", url=True)
    ingest: IngestJob = sub_job(IngestJob, "", "The ingest step (--layout, --fps).")
    tune: TuneJob = sub_job(TuneJob, "tune-", "The search (--tune-num-samples 0: no search).")
    train: TrainJob = sub_job(TrainJob, "", "The training over seeds (--seeds, --epochs, --model, ...).")
    score: ScoreJob = sub_job(ScoreJob, "score-", "The scoring of every video (--score-actors, ...).")


# Fields of the pipeline's steps that the pipeline sets (from its own fields): not options of the pipeline.
PIPELINE_WIRING = (
    "source",
    "dataset_url",
    "data_url",
    "model_url",
    "out",
    "feature_set",
    "s3_endpoint",
    "progress",
    "resume",
)


# ------------------------------------------------------------------------------------------ building jobs
def job_fields(kind: type) -> list[tuple[dataclasses.Field, Any]]:
    """``(field, resolved type)`` of a job class, in order."""
    hints = typing.get_type_hints(kind)
    return [(f, hints[f.name]) for f in dataclasses.fields(kind)]


def is_job(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def check_parameters(kind: type, values: Any, label: str, *, step: bool = False) -> None:
    """Check a mapping of a job's parameters (as a schedules file gives them): known names only, required URLs
    given, sub-jobs as mappings of their own fields. A pipeline's ``step`` gets no field the pipeline sets
    (:data:`PIPELINE_WIRING`). Raises AffectError naming ``label`` and the names at fault."""
    if not isinstance(values, dict):
        raise AffectError(f"{label}: expected a mapping of {kind.__name__} parameters")
    fields = {f.name: (f, hint) for f, hint in job_fields(kind)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise AffectError(f"{label}: unknown parameter(s) {unknown} of {kind.__name__}; known: {', '.join(fields)}")
    if step:
        wired = sorted(set(values) & set(PIPELINE_WIRING))
        if wired:
            raise AffectError(f"{label}: {wired} are set by the pipeline; give them as the pipeline's parameters")
    for name, value in values.items():
        if is_job(fields[name][1]):
            check_parameters(fields[name][1], value, f"{label}.{name}", step=True)
    missing = [n for n, (f, _) in fields.items() if f.metadata.get("required") and not values.get(n)]
    if missing and not step:
        raise AffectError(f"{label}: missing required parameter(s) {missing} of {kind.__name__}")


def check_required(job: Any) -> None:
    """Every required URL of ``job`` is given (a pipeline fills its steps' URLs before running them)."""
    missing = [f.name for f, _ in job_fields(type(job)) if f.metadata.get("required") and not getattr(job, f.name)]
    if missing:
        raise AffectError(f"{type(job).__name__}: missing {', '.join(missing)}")


def wire(step: Any, **values: Any) -> Any:
    """A pipeline's step with the fields the pipeline sets; a value the step was given for one of them (other than
    its default) is an AffectError, never silently replaced."""
    defaults = {f.name: f.default for f in dataclasses.fields(step)}
    for name, value in values.items():
        given = getattr(step, name)
        if given not in ("", None, defaults[name]) and given != value:
            raise AffectError(
                f"pipeline: {type(step).__name__}.{name} is set by the pipeline ({name} of the pipeline); "
                "leave it out of the step's parameters"
            )
    return dataclasses.replace(step, **values)


def storage_options_for(url: str | None, s3_endpoint: str | None) -> dict[str, Any] | None:
    """fsspec storage options for ``url``: the S3 endpoint when the URL is s3:// and one is given (keys come from
    the environment, never from parameters)."""
    if url and s3_endpoint and str(url).startswith(("s3://", "s3a://")):
        return {"endpoint_url": s3_endpoint}
    return None


def located(url: str, s3_endpoint: str | None) -> Any:
    """``url`` resolved once, with the job's S3 endpoint: the ``affect_core.storage.Location`` a ``run_*`` hands
    the library (which resolves nothing it is handed again)."""
    from affect_core.storage import resolve

    return resolve(url, storage_options_for(url, s3_endpoint))


def located_table(url: str, s3_endpoint: str | None) -> Any:
    """A dataset or predictions ``URL[@VERSION]`` parsed and resolved once, with the job's S3 endpoint (an
    ``affect_core.data.delta.VersionedLocation``)."""
    from affect_core.data.delta import resolve_versioned

    return resolve_versioned(url, storage_options_for(url, s3_endpoint))


# ---------------------------------------------------------------------------------------------- running
def run(job: Any) -> Any:
    """Run any job (its ``run_<job>`` function)."""
    runners = {
        IngestJob: run_ingest,
        TuneJob: run_tune,
        TrainJob: run_train,
        ScoreJob: run_score,
        EvaluateJob: run_evaluate,
        ReportJob: run_report,
        PromoteJob: run_promote,
    }
    return runners[type(job)](job)


def run_ingest(job: IngestJob) -> Any:
    """Run an ingest, its videos read by Ray tasks when :func:`flows.runner.placement` puts it on Ray; returns the
    library's IngestResult. Ray starts (or is joined) only when there is a video to read."""
    check_required(job)
    options = {
        "layout": job.layout,
        "feature_set": job.feature_set,
        "storage_options": storage_options_for(job.dataset_url, job.s3_endpoint),
        "source_storage_options": storage_options_for(job.source, job.s3_endpoint),
        "fps": job.fps,
        "target_file_bytes": int(job.file_mb * 2**20),
        "min_face_confidence": job.min_face_confidence,
    }
    return run_job(
        job,
        local=lambda: _ingest(job, options, parallel=False),
        on_ray=lambda _gpus: _ingest(job, options, parallel=True),
    )


def _ingest(job: IngestJob, options: dict[str, Any], *, parallel: bool) -> Any:
    from affect_core.data.dataset import ingest

    if job.layout in ("video", "affwild2"):  # read through the one entrance: Ray tasks extract the videos when parallel
        import affect_core.video.affwild2  # noqa: F401 - provides (registers) the affwild2 layout
        import affect_core.video.layout  # noqa: F401 - provides (registers) the video layout
        from tuning.video_extract import video_mapper

        return ingest(job.source, job.dataset_url, progress=job.progress, mapper=video_mapper(parallel), **options)
    if parallel:
        from tuning.ingest import ingest as ingest_on_ray

        return ingest_on_ray(job.source, job.dataset_url, **options)
    return ingest(job.source, job.dataset_url, progress=job.progress, **options)


def run_tune(job: TuneJob) -> Any:
    """Run (or resume, or read back) a Ray Tune search; returns ``tuning.tune.TuneOutcome``."""
    check_required(job)
    if job.num_samples < 1:
        raise AffectError(f"tune: num_samples must be >= 1, got {job.num_samples}")
    options = storage_options_for(job.out, job.s3_endpoint)

    def on_ray(gpus: float) -> Any:
        from affect_core.config import load_run_config
        from tuning.tune import run_tune as tune

        return tune(
            job.dataset_url,
            job.out,
            num_samples=job.num_samples,
            max_concurrent=job.max_concurrent,
            max_epochs=job.epochs,
            dimension=job.dimension,
            resume=job.resume,
            base_config=load_run_config(job.config, storage_options=storage_options_for(job.config, job.s3_endpoint)),
            feature_set=job.feature_set,
            grace_period=job.grace_period,
            seed=job.seed,
            cpus_per_trial=job.cpus_per_trial,
            gpus_per_trial=gpus,
            max_failures=job.max_failures,
            storage_options=options,
            progress=job.progress,
            device=job.device,
            model=job.model,
        )

    ask = RayAsk(
        job.cpus_per_trial,
        job.gpus_per_trial,
        what="one trial's worker (--cpus-per-trial, --gpus-per-trial)",
        timeout_s=job.resource_timeout,
    )
    return run_job(job, on_ray=on_ray, ask=ask, storage_options=options)


def run_train(job: TrainJob) -> dict[str, str]:
    """Train every seed, on Ray or in this process (:func:`flows.runner.placement`); returns the URLs of
    results.parquet, summary.md and the model bundle. A model of a dataset made from videos carries the dataset's
    video transform."""
    check_required(job)
    dataset = located_table(job.dataset_url, job.s3_endpoint)
    outputs = _trained(job, dataset)
    if "model" in outputs:
        from affect_core.video.stored import attach_to_bundle

        attach_to_bundle(dataset, located(outputs["model"], job.s3_endpoint))
    return outputs


def _trained(job: TrainJob, dataset: Any) -> dict[str, str]:
    """The seeds trained: on Ray from the job's URLs (each trial resolves them on its side), here from ``dataset``
    (resolved by :func:`run_train`) and the run's location."""
    from affect_core.config import load_run_config

    options = storage_options_for(job.out, job.s3_endpoint)
    config = load_run_config(
        job.config,
        storage_options=storage_options_for(job.config, job.s3_endpoint),
        model=job.model,
        align=job.align,
        epochs=job.epochs,
        window_frames=job.window_frames,
        targets=job.targets,
        observation_noise=job.observation_noise,
    )

    def on_ray(gpus: float) -> dict[str, str]:
        from tuning.train_seeds import SeedResources, train_seeds

        return train_seeds(
            job.dataset_url,
            job.out,
            config,
            dimension=job.dimension,
            seeds=job.seeds,
            feature_set=job.feature_set,
            resume=job.resume,
            resources=SeedResources(cpus=job.cpus_per_seed, gpus=gpus),
            max_failures=job.max_failures,
            storage_options=options,
            progress=job.progress,
            seeds_per_worker=job.seeds_per_worker,
            workers=job.workers,
            device=job.device,
        )

    def local() -> dict[str, str]:
        if job.workers > 1:
            raise AffectError("train: --workers > 1 trains data-parallel on Ray; add --ray (or set RAY_ADDRESS)")
        from affect_core.data.dataset import read_corpus
        from affect_core.experiment import train_run

        run = located(job.out, job.s3_endpoint)
        corpus = read_corpus(dataset, feature_set=job.feature_set)
        return train_run(
            corpus,
            run,
            config,
            dimension=job.dimension,
            seeds=job.seeds,
            resume=job.resume,
            progress=job.progress,
            seeds_per_worker=job.seeds_per_worker,
            device=job.device,
        )

    ask = RayAsk(
        job.cpus_per_seed,
        job.gpus_per_seed,
        what="one seed's worker (--cpus-per-seed, --gpus-per-seed)",
        timeout_s=job.resource_timeout,
    )
    return run_job(job, local=local, on_ray=on_ray, ask=ask, storage_options=options)


def run_score(job: ScoreJob) -> Any:
    """Score every video (or ``split``), on Ray Data or in this process (:func:`flows.runner.placement`); returns
    the ``affect_core.scoring.ScoreResult``. ``model_url`` may be a model alias (``affect promote``). A folder of
    videos is described with the bundle's video transform (by Ray tasks on Ray), then scored here.

    Each of the job's URLs is resolved once here; on Ray the driver gets the URLs instead (:mod:`tuning.score`)."""
    from affect_core.alias import read_alias
    from affect_core.video.score import is_video_root

    check_required(job)
    options = storage_options_for(job.out, job.s3_endpoint)
    given = located(job.model_url, job.s3_endpoint)
    alias = read_alias(given)
    model = located(alias.model, job.s3_endpoint) if alias is not None else given
    data, out = located_table(job.data_url, job.s3_endpoint), located(job.out, job.s3_endpoint)

    def video_root(parallel: bool) -> Any:
        from affect_core.video.score import score_video_root
        from tuning.video_extract import video_mapper

        return score_video_root(
            data.loc,
            model,
            out,
            splits=job.split or None,
            storage_options=storage_options_for(job.data_url, job.s3_endpoint),
            mapper=video_mapper(parallel),
            device=job.device,
            progress=job.progress,
            target_file_bytes=int(job.file_mb * 2**20),
            batch_videos=job.batch_videos,
            faces=job.faces,
        )

    def on_ray(gpus: float) -> Any:
        from tuning.score import score_dataset

        return score_dataset(
            data,
            model,
            out,
            splits=job.split or None,
            actors=job.actors,
            min_actors=job.min_actors,
            cpus_per_actor=job.cpus_per_actor,
            gpus_per_actor=gpus,
            storage_options=options,
            progress=job.progress,
            version=job.version,
            replace=job.replace,
            target_file_bytes=int(job.file_mb * 2**20),
            batch_videos=job.batch_videos,
            device=job.device,
        )

    def local() -> Any:
        from affect_core.scoring import score_dataset

        return score_dataset(
            data,
            model,
            out,
            splits=job.split or None,
            progress=job.progress,
            version=job.version,
            replace=job.replace,
            target_file_bytes=int(job.file_mb * 2**20),
            device=job.device,
            batch_videos=job.batch_videos,
        )

    here = placement(job) is not Placement.RAY_JOB
    # One look at the folder where it is needed (on object storage every listing is a request; a job submitted to
    # the job server reads its data there, not here).
    videos = (here or job.faces != "principal") and is_video_root(data.loc)
    if here and videos:
        return run_job(job, local=lambda: video_root(False), on_ray=lambda _gpus: video_root(True))
    if job.faces != "principal" and not videos:  # a dataset's rows are one face a frame already
        raise AffectError(f"--faces {job.faces}: only for a folder of videos (VIDEO_ROOT/videos/), not a dataset")
    ask = RayAsk(
        job.cpus_per_actor,
        job.gpus_per_actor,
        what="one scoring actor (--cpus-per-actor, --gpus-per-actor)",
        timeout_s=job.resource_timeout,
    )
    return run_job(job, local=local, on_ray=on_ray, ask=ask, storage_options=options)


def run_evaluate(job: EvaluateJob) -> dict[str, Any]:
    """Evaluate predictions against the gold standard; writes the metrics JSON and returns them.

    The labels are read at the dataset version the predictions were made from, when the dataset URL names the table
    they were scored from without a version of its own (``URL@VERSION`` picks another)."""
    import json

    from affect_core.data.dataset import iter_videos
    from affect_core.scoring import evaluate_predictions, read_predictions, scored_version
    from affect_core.storage import write_bytes_atomic

    check_required(job)
    scored = located_table(job.predictions_url, job.s3_endpoint)
    dataset = located_table(job.dataset_url, job.s3_endpoint)
    predictions = read_predictions(scored)
    videos = iter_videos(dataset, video_ids=predictions.video_ids(), version=scored_version(predictions, dataset))
    result = evaluate_predictions(predictions, videos)
    target = located(job.out, job.s3_endpoint) if job.out else scored.loc.join("_evaluation.json")
    write_bytes_atomic(target.fs, target.path, json.dumps(result, indent=2).encode())
    return result


def run_report(job: ReportJob) -> Any:
    """Write a run's report; returns the library's ReportResult. Each of the job's URLs is resolved once here."""
    from affect_core.report import write_report

    check_required(job)
    s3 = job.s3_endpoint
    return write_report(
        located(job.run_url, s3),
        dataset_url=located_table(job.dataset, s3) if job.dataset else None,
        predictions_url=located_table(job.predictions, s3) if job.predictions else None,
        tuning_url=located(job.tuning, s3) if job.tuning else None,
        out_url=located(job.out, s3) if job.out else None,
        video_ids=job.video or None,
        videos=job.videos,
    )


def run_promote(job: PromoteJob) -> Any:
    """Promote a model to an alias, or roll the alias back; returns ``affect_core.alias.AliasState``."""
    from affect_core.alias import promote, rollback

    check_required(job)
    if job.rollback:
        if job.alias_url:
            raise AffectError("promote --rollback takes the alias only: affect promote --rollback ALIAS_URL")
        return rollback(located(job.model_url, job.s3_endpoint))
    if not job.alias_url:
        raise AffectError("promote: give MODEL_URL and ALIAS_URL (or --rollback ALIAS_URL)")
    return promote(located(job.model_url, job.s3_endpoint), located(job.alias_url, job.s3_endpoint))
