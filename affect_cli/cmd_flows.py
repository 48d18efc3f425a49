"""``affect report``, ``affect pipeline``, ``affect serve`` and ``affect demo``: the Prefect side of the CLI.

Prefect, matplotlib and the flows are imported inside the commands, so ``affect --help`` stays instant.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

S3_ENDPOINT_HELP = "S3 endpoint URL for s3:// URLs (default: $AFFECT_S3_ENDPOINT); keys come from the environment."


def report(
    run_url: Annotated[str, typer.Argument(help="Training run (results.parquet, model/) written by train/pipeline.")],
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset with the gold standard, for the dev-video curves.")
    ] = None,
    predictions: Annotated[
        str | None,
        typer.Option(
            "--predictions",
            help="Predictions URL (default RUN_URL/predictions if it exists, else the "
            "run's model predicts the plotted videos).",
        ),
    ] = None,
    tuning: Annotated[
        str | None, typer.Option("--tuning", help="Tuning run with trials.parquet (default RUN_URL/tuning).")
    ] = None,
    out: Annotated[str | None, typer.Option("--out", help="Where to write (default RUN_URL/report).")] = None,
    video: Annotated[
        list[str] | None, typer.Option("--video", help="Dev video id to plot (repeatable; default the first ones).")
    ] = None,
    videos: Annotated[int, typer.Option(min=0, help="How many dev videos to plot when --video is not given.")] = 2,
    s3_endpoint: Annotated[str | None, typer.Option(help=S3_ENDPOINT_HELP)] = None,
) -> None:
    """Write summary.md and PNG plots (dev curves with uncertainty, learned lag, ablation, tuning) of a run."""
    from affect_core.report import write_report
    from flows.backend import storage_options_for

    result = write_report(
        run_url,
        dataset_url=dataset,
        predictions_url=predictions,
        tuning_url=tuning,
        out_url=out,
        video_ids=video or None,
        videos=videos,
        storage_options=storage_options_for(run_url, s3_endpoint),
    )
    typer.echo(f"report: {result.summary_url}")
    for name, url in result.plots.items():
        typer.echo(f"  {name}: {url}")


def pipeline(
    source: Annotated[str, typer.Argument(help="Input corpus (local directory or fsspec URL).")],
    dataset_url: Annotated[str, typer.Argument(help="Dataset to ingest into (path or fsspec URL).")],
    out: Annotated[str, typer.Option("--out", help="Run URL: tuning/, results, model/, predictions/, report/.")],
    layout: Annotated[str, typer.Option(help="Input layout: avec2016, csv or parquet.")] = "avec2016",
    feature_set: Annotated[str | None, typer.Option(help="Feature set(s) to train on, e.g. appearance.")] = None,
    dimension: Annotated[str, typer.Option(help="arousal | valence | both | joint.")] = "both",
    model: Annotated[str | None, typer.Option(help="baseline | lstm-kf | lstm-ekf (default lstm-kf).")] = "lstm-kf",
    align: Annotated[str | None, typer.Option(help="none | manual | adaptive (default adaptive).")] = "adaptive",
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per model for the final training.")] = 2,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs of the final training.")] = 3,
    trials: Annotated[int, typer.Option(min=0, help="Search trials (0: no search, train the defaults).")] = 2,
    max_concurrent: Annotated[int, typer.Option(min=1, help="Trials running at once.")] = 1,
    tune_epochs: Annotated[int | None, typer.Option(min=1, help="Maximum epochs per trial (default --epochs).")] = None,
    window_frames: Annotated[
        int | None, typer.Option(help="Truncated BPTT windows of this many frames (0 = whole sequences).")
    ] = None,
    report_videos: Annotated[int, typer.Option(min=0, help="Dev videos to plot in the report.")] = 2,
    s3_endpoint: Annotated[str | None, typer.Option(help=S3_ENDPOINT_HELP)] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run the pipeline flow: ingest -> tune -> train over seeds -> score -> report (resumes when re-run)."""
    from flows.workflows import pipeline_flow

    started = time.perf_counter()
    result = pipeline_flow(
        source,
        dataset_url,
        out,
        layout=layout,
        feature_set=feature_set,
        dimension=dimension,
        model=model,
        align=align,
        seeds=seeds,
        epochs=epochs,
        num_samples=trials,
        max_concurrent=max_concurrent,
        tune_epochs=tune_epochs,
        window_frames=window_frames,
        report_videos=report_videos,
        s3_endpoint=s3_endpoint,
        progress=progress,
    )
    _print_outcome(result, time.perf_counter() - started)


def serve(
    config: Annotated[Path, typer.Option("--config", help="Schedules file (deployments, cron, parameters).")] = Path(
        "schedules.yaml"
    ),
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many flow runs at once.")] = None,
) -> None:
    """Serve the scheduled deployments of the config file against the Prefect server in PREFECT_API_URL."""
    from flows.deployments import serve_schedules

    serve_schedules(config, limit=limit)


def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes everything (local runs).")] = Path("demo-output"),
    s3: Annotated[bool, typer.Option("--s3", help="Store dataset and run on a local SeaweedFS S3 it starts.")] = False,
    videos_per_split: Annotated[int, typer.Option(min=1, help="Generated videos per split.")] = 3,
    frames: Annotated[int, typer.Option(min=200, help="Frames per generated video.")] = 1500,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per model in the final training.")] = 2,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs of the final training.")] = 20,
    trials: Annotated[int, typer.Option(min=0, help="Search trials (0: no search).")] = 2,
    tune_epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs per search trial.")] = 8,
    window_frames: Annotated[int, typer.Option(min=0, help="Truncated BPTT window (0 = whole sequences).")] = 500,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="The RECOLA-shaped run: 9 videos per split of 7501 frames, 10 seeds, 100 epochs, "
            "20 trials (hours on a laptop).",
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Generate a corpus and run the whole pipeline flow on it (ingest, tune, train, score, report)."""
    from flows.demo import DemoSettings, run_demo

    settings = DemoSettings(
        out=out,
        videos_per_split=videos_per_split,
        frames=frames,
        seeds=seeds,
        epochs=epochs,
        trials=trials,
        tune_epochs=tune_epochs,
        window_frames=window_frames,
        progress=progress,
    )
    if full:
        settings = settings.full_scale()
    started = time.perf_counter()
    if not s3:
        result = run_demo(settings, echo=typer.echo)
    else:
        result = _demo_on_s3(settings)
    _print_outcome(result, time.perf_counter() - started)


def _demo_on_s3(settings) -> dict:
    """The demo with dataset and run on a SeaweedFS S3 server started here (data under OUT/s3), then stopped."""
    import os

    from affect_services import SeaweedS3
    from flows.demo import run_demo

    bucket = "affect-demo"
    server = SeaweedS3(settings.out.absolute() / "s3")
    typer.echo(f"starting SeaweedFS S3 on 127.0.0.1 (data in {server.data_dir})")
    server.start()
    saved = {name: os.environ.get(name) for name in server.env()}
    try:
        server.create_bucket(bucket)
        os.environ.update(server.env())  # keys reach s3fs and Ray workers through the environment only
        typer.echo(f"S3 endpoint {server.endpoint_url}, bucket {bucket}")
        return run_demo(settings, root_url=f"s3://{bucket}/demo", s3_endpoint=server.endpoint_url, echo=typer.echo)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def _print_outcome(result: dict, seconds: float) -> None:
    typer.echo(f"\npipeline finished in {seconds:.0f} s")
    typer.echo(f"report:      {result['report']}")
    typer.echo(f"predictions: {result['predictions']}")
    typer.echo(f"results:     {result['results']}")
    typer.echo(f"model:       {result['model']}")
    for name, url in result.get("plots", {}).items():
        typer.echo(f"  plot {name}: {url}")
    if result.get("evaluation"):
        typer.echo("\n" + result["evaluation"].rstrip("\n"))
