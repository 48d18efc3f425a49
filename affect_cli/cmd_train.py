"""``affect train``, ``affect score`` and ``affect evaluate`` (single process)."""

from __future__ import annotations

from typing import Annotated

import typer


def train(
    dataset_url: Annotated[str, typer.Argument(help="Dataset written by `affect ingest` (path or fsspec URL).")],
    out: Annotated[str, typer.Option("--out", help="Run URL: results.parquet, summary.md, model/ go here.")],
    dimension: Annotated[str, typer.Option(help="arousal | valence | both (two models) | joint (one model).")] = "both",
    model: Annotated[
        str | None, typer.Option(help="baseline | lstm-kf | lstm-ekf (default: config or lstm-ekf).")
    ] = None,
    align: Annotated[str | None, typer.Option(help="none | manual | adaptive (default: config or adaptive).")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Number of seeds (0..N-1) per model.")] = 1,
    epochs: Annotated[int | None, typer.Option(min=1, help="Maximum epochs (early stopping on dev CCC).")] = None,
    feature_set: Annotated[str | None, typer.Option(help="Feature set name(s), comma-joined for fusion.")] = None,
    config: Annotated[
        str | None, typer.Option(help="YAML/JSON run config (e.g. the best config of `affect tune`).")
    ] = None,
    window_frames: Annotated[
        int | None, typer.Option(help="Truncated BPTT windows of this many frames (0 = whole sequences).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its checkpoints.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    ray: Annotated[
        bool | None,
        typer.Option("--ray/--no-ray", help="Train the seeds in parallel on Ray (default: when RAY_ADDRESS is set)."),
    ] = None,
    cpus_per_seed: Annotated[float, typer.Option(min=0.01, help="Ray: CPUs per seed's worker.")] = 1.0,
    gpus_per_seed: Annotated[
        float | None, typer.Option(min=0.0, help="Ray: GPUs per seed (default 0.25 when the cluster has GPUs).")
    ] = None,
    max_failures: Annotated[int, typer.Option(min=0, help="Ray: retries of a failed seed worker.")] = 3,
    seeds_per_worker: Annotated[
        int,
        typer.Option(
            min=1,
            help="Seeds of a model trained together as one stack in one process (Ray: one worker), on CPU; "
            "1 = one seed at a time.",
        ),
    ] = 1,
) -> None:
    """Train models on a dataset over seeds and write results, a paper-style summary and the model bundle."""
    import os

    from affect_core.config import load_run_config

    run_config = load_run_config(config, model=model, align=align, epochs=epochs, window_frames=window_frames)
    if ray if ray is not None else bool(os.environ.get("RAY_ADDRESS")):
        from tuning.train_seeds import SeedResources, train_seeds

        outputs = train_seeds(
            dataset_url,
            out,
            run_config,
            dimension=dimension,
            seeds=seeds,
            feature_set=feature_set,
            resume=resume,
            resources=SeedResources(cpus=cpus_per_seed, gpus=gpus_per_seed),
            max_failures=max_failures,
            progress=progress,
            seeds_per_worker=seeds_per_worker,
        )
    else:
        from affect_core.data.dataset import read_corpus
        from affect_core.experiment import train_run

        corpus = read_corpus(dataset_url, splits=None, feature_set=feature_set)
        outputs = train_run(
            corpus,
            out,
            run_config,
            dimension=dimension,
            seeds=seeds,
            resume=resume,
            progress=progress,
            seeds_per_worker=seeds_per_worker,
        )
    from affect_core.video.transform import attach_to_bundle  # a model of video features carries their transform

    attach_to_bundle(dataset_url, outputs["model"])
    typer.echo(
        f"trained {dimension} {run_config.model.model}/{run_config.model.align} x {seeds} seed(s): "
        f"results {outputs['results']}, summary {outputs['summary']}, model {outputs['model']}"
    )


def score(
    data_url: Annotated[str, typer.Argument(help="Dataset or bare Parquet features URL to score.")],
    model_url: Annotated[str, typer.Option("--model", help="Model bundle URL (RUN_URL/model).")],
    out: Annotated[str, typer.Option("--out", help="Predictions URL (one Parquet file per video).")],
    split: Annotated[list[str] | None, typer.Option(help="Only these splits (repeatable); default all.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    ray: Annotated[
        bool | None,
        typer.Option(
            "--ray/--no-ray",
            help="Score on Ray Data with an actor pool (default: when RAY_ADDRESS is set or the data is large).",
        ),
    ] = None,
    actors: Annotated[int | None, typer.Option(min=1, help="Ray: largest actor pool (default: all CPUs).")] = None,
) -> None:
    """Write per-frame arousal and valence (with the filter's variance) for every video, labelled or not."""
    from affect_core.data.dataset import dataset_info
    from affect_core.video.score import is_video_root
    from tuning.score import want_ray

    if is_video_root(data_url):  # a folder of videos: extracted with the bundle's video transform, then scored
        from affect_core.video.score import score_video_root
        from tuning.video_extract import video_mapper

        result = score_video_root(
            data_url, model_url, out, splits=split or None, mapper=video_mapper(ray), progress=progress
        )
        typer.echo(
            f"scored {result.videos} video(s), {result.frames} frame(s) in {result.seconds:.1f} s -> {result.url}"
        )
        return

    info = dataset_info(data_url)
    frames = info.rows if not split else 0
    if want_ray(frames, ray):
        from tuning.score import score_dataset

        result = score_dataset(data_url, model_url, out, splits=split or None, actors=actors, progress=progress)
    else:
        from affect_core.scoring import score_dataset

        result = score_dataset(data_url, model_url, out, splits=split or None, progress=progress)
    typer.echo(
        f"scored {result.videos} video(s), {result.frames} frame(s) in {result.seconds:.1f} s "
        f"({result.frames_per_second:.0f} frames/s, {result.skipped} already done) -> {result.url}"
    )


def evaluate(
    pred_url: Annotated[str, typer.Argument(help="Predictions URL written by `affect score`.")],
    dataset_url: Annotated[str, typer.Argument(help="Dataset with the gold-standard labels.")],
    out: Annotated[
        str | None, typer.Option(help="Where to write the metrics JSON (default PRED_URL/_evaluation.json).")
    ] = None,
) -> None:
    """CCC, RMSE and Pearson CC per split and dimension, per sequence then averaged (AVEC protocol)."""
    import json

    from affect_core.data.dataset import iter_videos
    from affect_core.scoring import evaluate_predictions, evaluation_markdown, read_predictions
    from affect_core.storage import resolve, write_bytes_atomic

    predictions = read_predictions(pred_url)
    result = evaluate_predictions(predictions, iter_videos(dataset_url, video_ids=sorted(predictions)))
    typer.echo(evaluation_markdown(result), nl=False)
    target = resolve(out) if out else resolve(pred_url).join("_evaluation.json")
    write_bytes_atomic(target.fs, target.path, json.dumps(result, indent=2).encode())
