"""`affect info`, `affect export`, `affect migrate`, `affect vacuum`: looking inside and looking after dataset and
predictions tables.

affect_core is imported inside the commands, so importing this module (and `affect --help`) stays instant.
"""

from __future__ import annotations

from typing import Annotated

import typer

S3_ENDPOINT_HELP = (
    "S3 endpoint URL (default: $AFFECT_S3_ENDPOINT, then $AWS_ENDPOINT_URL_S3); keys come from the environment."
)
VERSION_HELP = "Table version to read (default: the latest); URL@VERSION does the same."


def _options(url: str, s3_endpoint: str | None) -> dict | None:
    return {"endpoint_url": s3_endpoint} if s3_endpoint and url.startswith(("s3://", "s3a://")) else None


def info(
    url: Annotated[str, typer.Argument(help="Dataset or predictions table URL (URL@VERSION pins a version).")],
    version: Annotated[str | None, typer.Option(help=VERSION_HELP)] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (keys: version, videos, files, bytes, ...).")
    ] = False,
    s3_endpoint: Annotated[str | None, typer.Option(help=S3_ENDPOINT_HELP)] = None,
) -> None:
    """Versions, videos per split, frames, frames without a face, feature sets, files and bytes of a table; for
    predictions scored from a folder of videos, the videos that could not be read."""

    from affect_core.data import keys
    from affect_core.data.dataset import table_summary

    summary = table_summary(url, version=version, storage_options=_options(url, s3_endpoint))
    if summary["kind"] == "predictions":  # the videos of a folder that scoring could not read (affect score)
        from affect_core.storage import resolve
        from affect_core.video.score import read_failures

        summary["failed"] = read_failures(resolve(url.rsplit("@", 1)[0], _options(url, s3_endpoint)))
    counts_faces = summary["kind"] != "predictions" or summary["metadata"].get(keys.FACE_COUNTS) == "1"
    if as_json:
        _print_json(summary)
        return
    per_split: dict[str, list[int]] = {}
    for video in summary["videos"]:
        counts = per_split.setdefault(video["split"], [0, 0, 0])
        counts[0] += 1
        counts[1] += video["frames"]
        counts[2] += video["frames_without_face"] or 0
    typer.echo(f"{summary['url']}: {summary['kind']} version {summary['version']} (versions {summary['versions']})")
    typer.echo(f"files {summary['files']}, {summary['bytes'] / 1e6:.2f} MB")
    if summary["feature_sets"]:
        sets = ", ".join(f"{name} ({dim})" for name, dim in summary["feature_sets"].items())
        fps = "unknown" if summary["fps"] is None else f"{summary['fps']:g}"
        typer.echo(f"feature sets: {sets}; fps {fps}")
    for key in (keys.MODEL_ID, keys.DATASET_URL, keys.DATASET_VERSION):
        if key in summary["metadata"]:
            typer.echo(f"{key.split('.', 1)[1]}: {summary['metadata'][key]}")
    for split, (videos, frames, missing) in per_split.items():
        faces = f", {missing} without a face" if counts_faces else ""
        typer.echo(f"{split}: {videos} video(s), {frames} frame(s){faces}")
    for failure in summary.get("failed", []):
        typer.echo(f"failed: {failure['problem']}")


def _print_json(summary: dict) -> None:
    """The summary as one strict JSON object (no NaN), its videos written as they come (one a line, last): memory
    stays flat whatever the table holds."""
    import json
    import sys

    out = sys.stdout
    out.write("{\n")
    for key, value in summary.items():
        if key != "videos":
            out.write(f" {json.dumps(key)}: {json.dumps(value, allow_nan=False)},\n")
    out.write(' "videos": [')
    separator = "\n  "
    for video in summary["videos"]:
        out.write(separator + json.dumps(video, allow_nan=False))
        separator = ",\n  "
    out.write("\n ]\n}\n")
    out.flush()


def export(
    url: Annotated[str, typer.Argument(help="Dataset or predictions table URL (URL@VERSION pins a version).")],
    dest: Annotated[str | None, typer.Argument(help="One file: DEST.parquet or DEST.csv.")] = None,
    per_video: Annotated[
        str | None, typer.Option("--per-video", help="Directory to write one CSV per video (<video_id>.csv) into.")
    ] = None,
    version: Annotated[str | None, typer.Option(help=VERSION_HELP)] = None,
    s3_endpoint: Annotated[str | None, typer.Option(help=S3_ENDPOINT_HELP)] = None,
) -> None:
    """Write a table version as one Parquet or CSV file, or one CSV per video (in CSV a column per feature, named by
    the dataset's feature names)."""
    from affect_core.data.export import export_table

    written = export_table(url, dest, per_video=per_video, version=version, storage_options=_options(url, s3_endpoint))
    typer.echo(f"exported {written.videos} video(s), {written.rows} row(s) -> {written.where}")


def migrate(
    source: Annotated[str, typer.Argument(help="Dataset in the earlier per-video layout (_manifests/, versions/).")],
    dest: Annotated[str | None, typer.Argument(help="Table to write (default: convert in place).")] = None,
    keep_old: Annotated[bool, typer.Option(help="In place: keep the earlier layout's files.")] = False,
    s3_endpoint: Annotated[str | None, typer.Option(help=S3_ENDPOINT_HELP)] = None,
) -> None:
    """Convert the latest version of a dataset in the earlier layout into a table (version 0)."""
    from affect_core.data.dataset import migrate as migrate_dataset

    result = migrate_dataset(source, dest, storage_options=_options(source, s3_endpoint), keep_old=keep_old)
    typer.echo(
        f"migrated {result.videos} video(s), {result.rows} row(s) into {result.files_written} file(s): "
        f"{result.dataset_url} version {result.version}"
    )


def vacuum(
    url: Annotated[str, typer.Argument(help="Dataset or predictions table URL.")],
    retain_hours: Annotated[
        float, typer.Option(min=0, help="Keep what versions of the last this many hours need (default 7 days).")
    ] = 168.0,
    dry_run: Annotated[bool, typer.Option(help="List what would be deleted, delete nothing.")] = False,
    s3_endpoint: Annotated[str | None, typer.Option(help=S3_ENDPOINT_HELP)] = None,
) -> None:
    """Delete files that no version within the retention needs (old versions become unreadable)."""
    from affect_core import storage
    from affect_core.data import delta

    loc = storage.resolve(url, _options(url, s3_endpoint))
    removed = delta.vacuum(loc, retention_hours=retain_hours, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {len(removed)} file(s) of {loc.display()} older than {retain_hours:g} h and unreferenced")
