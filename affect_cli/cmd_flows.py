"""``affect report``, ``affect pipeline``, ``affect serve`` and ``affect demo``: the Prefect side of the CLI.

``report`` and ``pipeline`` are their jobs of :mod:`flows.jobs`. Prefect, matplotlib and the flows are imported
inside the commands, so ``affect --help`` stays instant.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from affect_cli.job_options import job_command
from flows.jobs import PipelineJob, ReportJob


def _report(job: ReportJob) -> None:
    from flows.jobs import run_report

    result = run_report(job)
    typer.echo(f"report: {result.summary_url}")
    for name, url in result.plots.items():
        typer.echo(f"  {name}: {url}")


def _pipeline(job: PipelineJob) -> None:
    from flows.workflows import pipeline_flow

    started = time.perf_counter()
    result = pipeline_flow(job)
    _print_outcome(result, time.perf_counter() - started)


report = job_command(ReportJob, _report)
pipeline = job_command(PipelineJob, _pipeline)


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
    video: Annotated[
        bool,
        typer.Option(
            "--video",
            help="Start from generated video clips of a real face (the video layout: faces found, LGBP-TOP "
            "features extracted) instead of feature files; use with --frames 250 or so.",
        ),
    ] = False,
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
        video=video,
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
