"""`affect ingest`: validate a corpus in an input layout and write it as a versioned Parquet dataset.

affect_core is imported inside the command, so importing this module (and `affect --help`) stays instant.
"""

from __future__ import annotations

from typing import Annotated

import typer


def ingest(
    source: Annotated[str, typer.Argument(help="Input corpus: a local directory or fsspec URL (s3://...).")],
    dataset_url: Annotated[
        str, typer.Argument(help="Dataset to write: a local path, s3://bucket/prefix, memory://... .")
    ],
    layout: Annotated[str, typer.Option(help="Input layout: avec2016, csv, parquet or video.")] = "avec2016",
    feature_set: Annotated[
        str | None,
        typer.Option(
            help="Feature set(s) to keep, e.g. appearance, or appearance+geometric (early fusion); default: every set."
        ),
    ] = None,
    s3_endpoint: Annotated[
        str | None,
        typer.Option(
            help="S3 endpoint URL (default: $AFFECT_S3_ENDPOINT, then $AWS_ENDPOINT_URL_S3); "
            "keys come from the environment."
        ),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option(
            help="Frame rate of files that number frames and have no frameTime column; where files have "
            "frameTime, a given rate must agree with it."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar over videos.")] = True,
) -> None:
    """Validate SOURCE, then write it to DATASET_URL as a new dataset version (no-op if unchanged)."""
    from affect_core.data.dataset import ingest as ingest_dataset
    from affect_core.errors import AffectError

    storage_options = {"endpoint_url": s3_endpoint} if s3_endpoint else None
    if layout == "video":  # extraction (Ray when RAY_ADDRESS is set) and the fitted transform stored with the dataset
        from functools import partial

        from affect_core.video.layout import ingest_videos
        from tuning.video_extract import video_mapper

        ingest_dataset = partial(ingest_videos, mapper=video_mapper())
    try:
        result = ingest_dataset(
            source,
            dataset_url,
            layout=layout,
            feature_set=feature_set,
            storage_options=storage_options if dataset_url.startswith(("s3://", "s3a://")) else None,
            source_storage_options=storage_options if source.startswith(("s3://", "s3a://")) else None,
            progress=progress,
            fps=fps,
        )
    except AffectError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(result.summary())
