"""Export a dataset or predictions table version to the forms other tools take: one Parquet file, one CSV file, or one
CSV per video. Rows stream one video at a time (bounded memory); in CSV the ``features`` lists become one column per
feature, named by the dataset's feature names, and a missing value (NaN: a frame without a face, an unknown label) is an
empty cell, as CSV readers expect (a ``nan`` cell makes polars read the column as strings)."""

from __future__ import annotations

import json
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from affect_core import storage
from affect_core.data import delta, keys
from affect_core.errors import AffectError


@dataclass
class ExportResult:
    videos: int
    rows: int
    where: str


def flat_table(table: pa.Table, feature_names: list[str]) -> pa.Table:
    """``table`` with its ``features`` list column (T lists of d) replaced by d float32 columns."""
    if "features" not in table.column_names:
        return table
    from affect_core.data.dataset.convert import feature_matrix

    matrix = feature_matrix(table, "export")
    names = feature_names if len(feature_names) == matrix.shape[1] else [f"f{i}" for i in range(matrix.shape[1])]
    position = table.column_names.index("features")
    out = table.remove_column(position)
    for offset, name in enumerate(names):
        out = out.add_column(position + offset, name, pa.array(np.ascontiguousarray(matrix[:, offset])))
    return out


def csv_table(table: pa.Table, feature_names: list[str]) -> pa.Table:
    """``table`` as a CSV file holds it: :func:`flat_table`, with NaN in a floating-point column made null (which the
    CSV writer writes as an empty cell)."""
    out = flat_table(table, feature_names)
    for position, field in enumerate(out.schema):
        if pa.types.is_floating(field.type):
            column = out.column(position)
            missing = pc.is_nan(column)
            if pc.any(missing).as_py():
                out = out.set_column(position, field, pc.if_else(missing, pa.scalar(None, field.type), column))
    return out


def export_table(
    url: str | storage.Location | delta.VersionedLocation,
    dest: storage.Where | None,
    *,
    per_video: storage.Where | None = None,
    version: str | int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ExportResult:
    """Write the table at ``url`` (pinned ``version``, or ``URL@VERSION``) to ``dest`` (.parquet or .csv) and/or
    one CSV per video under ``per_video``. Files appear whole (written under a temporary name, then moved). Each URL
    is resolved here, once, with ``storage_options`` (a Location given instead was resolved before)."""
    from affect_core.data.dataset import dataset_info, iter_table_rows

    if dest is None and per_video is None:
        raise AffectError("export: give DEST (.parquet or .csv) or --per-video DIR")
    kind = None
    target = storage.resolve(dest, storage_options) if dest is not None else None
    if target is not None:
        kind = posixpath.splitext(target.path)[1].lower()
        if kind not in (".parquet", ".csv"):
            raise AffectError(
                f"{target.display()}: unknown export format {kind or '(none)'}; expected .parquet or .csv"
            )
    source = delta.resolve_versioned(url, storage_options)
    info = dataset_info(source, version=version)
    names = list(info.feature_names)
    folder = storage.resolve(per_video, storage_options) if per_video is not None else None
    if folder is not None:
        folder.fs.makedirs(folder.path, exist_ok=True)
    writer: Any = None
    handle: Any = None
    temporary = None
    videos = rows = 0
    try:
        if target is not None:
            temporary = storage.join(
                posixpath.dirname(target.path), f".{posixpath.basename(target.path)}.{uuid.uuid4().hex}"
            )
            if target.is_local:
                target.fs.makedirs(posixpath.dirname(target.path), exist_ok=True)
            handle = target.fs.open(temporary, "wb")
        for video_id, table in iter_table_rows(delta.VersionedLocation(source.loc), version=info.version):
            videos += 1
            rows += table.num_rows
            table = table.replace_schema_metadata(None)
            if handle is not None:
                out = table if kind == ".parquet" else csv_table(table, names)
                if writer is None:
                    if kind == ".parquet":
                        metadata = {keys.FEATURE_NAMES: json.dumps(names), keys.VERSION: str(info.version)}
                        writer = pq.ParquetWriter(handle, out.schema.with_metadata(metadata), compression="zstd")
                    else:
                        writer = pacsv.CSVWriter(handle, out.schema)
                writer.write_table(out.cast(writer.schema) if kind == ".parquet" else out)
            if folder is not None:
                from affect_core.data.readers import check_video_id

                check_video_id(video_id, folder.display())
                with folder.fs.open(storage.join(folder.path, f"{video_id}.csv"), "wb") as one:
                    pacsv.write_csv(csv_table(table, names), one)
        if handle is not None:
            if writer is not None:
                writer.close()
            handle.close()
            handle = None
            target.fs.mv(temporary, target.path)
            temporary = None
    finally:
        if handle is not None:
            handle.close()
        if temporary is not None and target is not None:
            storage.remove_tree(target.fs, temporary)
    where = " and ".join(x.display() for x in (target, folder) if x is not None)
    return ExportResult(videos, rows, where)
