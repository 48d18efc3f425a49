"""A dataset's rows as :class:`~affect_core.data.records.Video` records: one video's rows (:func:`to_video`) or a
whole row group's videos at once (:func:`row_group_videos`), with the chosen feature columns."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from affect_core.data import delta
from affect_core.data.dataset.format import RESERVED_COLUMNS, schema_rating_names
from affect_core.data.records import AFFECT_DIMENSIONS, Video
from affect_core.errors import AffectError


def to_video(table: pa.Table, ranges: list[tuple[int, int]], fps: float | None, where: str) -> Video:
    """One video's rows (any order) as a Video with the selected feature columns."""
    if table.num_rows > 1:
        order = pc.sort_indices(
            table, sort_keys=[("frame" if "frame" in table.column_names else "time_s", "ascending")]
        )
        table = table.take(order)
    video_ids = table.column("video_id").unique()
    if len(video_ids) != 1:
        raise AffectError(f"{where}: rows of {len(video_ids)} videos where one was expected")
    video_id = str(video_ids[0].as_py())
    split = str(table.column("split")[0].as_py()) if "split" in table.column_names else "test"
    features = feature_matrix(table, where)
    if ranges != [(0, features.shape[1])]:
        features = np.concatenate([features[:, a:b] for a, b in ranges], axis=1)
    time_s = table.column("time_s").to_numpy().astype(np.float64)
    if fps is None:
        fps = float(round(1.0 / float(np.median(np.diff(time_s))), 6)) if time_s.size > 1 else float("nan")
    labels: dict[str, np.ndarray | None] = {}
    for dimension in AFFECT_DIMENSIONS:
        if dimension in table.column_names and table.column(dimension).null_count < table.num_rows:
            labels[dimension] = table.column(dimension).cast(pa.float32()).to_numpy().astype(np.float32)
        else:
            labels[dimension] = None
    video = Video(video_id, split, np.ascontiguousarray(features, dtype=np.float32), time_s, fps, **labels)
    rated = _rating_matrix(table)
    if rated is not None:
        video.ratings = _video_ratings(*rated)
    return video


def _rating_matrix(table: pa.Table) -> tuple[list[str], np.ndarray] | None:
    """(rater track names, (rows, tracks) float32 ratings) of a table with per-rater ratings, else None."""
    names = schema_rating_names(table.schema)
    if names is None:
        return None
    matrix = table.column("ratings").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return names, matrix.astype(np.float32).reshape(-1, len(names))


def _video_ratings(names: list[str], matrix: np.ndarray) -> dict[str, np.ndarray] | None:
    """One video's rows of a rating matrix as {track: (T,)}, leaving out tracks with no rating at all."""
    ratings = {name: matrix[:, j].copy() for j, name in enumerate(names) if not np.isnan(matrix[:, j]).all()}
    return ratings or None


def row_group_videos(
    table: pa.Table,
    picks: list[tuple[delta.VideoEntry, int, int]],
    ranges: list[tuple[int, int]],
    fps: float | None,
    where: str,
) -> Iterator[Video]:
    """The videos of one row group of a dataset table (``picks``: (entry, first row, rows) of each), converted
    column by column for the whole row group at once; each video's arrays are views of its rows (its per-rater
    ratings, copies). A video whose frames are not in order (not a file written here) goes through
    :func:`to_video`."""
    if fps is None:
        for _, start, length in picks:
            yield to_video(table.slice(start, length), ranges, fps, where)
        return
    frame = table.column("frame").to_numpy() if "frame" in table.column_names else table.column("time_s").to_numpy()
    backwards = np.flatnonzero(np.diff(frame) <= 0) + 1  # rows where the order breaks: only at a video's start
    features = feature_matrix(table, where)
    if ranges != [(0, features.shape[1])]:
        features = np.concatenate([features[:, a:b] for a, b in ranges], axis=1)
    features = np.array(features, dtype=np.float32, order="C")  # one writable copy for the row group
    time_s = table.column("time_s").to_numpy().astype(np.float64)
    labels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for dimension in AFFECT_DIMENSIONS:
        if dimension in table.column_names and table.column(dimension).null_count < table.num_rows:
            column = table.column(dimension)
            values = column.cast(pa.float32()).to_numpy(zero_copy_only=False).astype(np.float32)
            labels[dimension] = (values, column.is_valid().to_numpy(zero_copy_only=False))
    rated = _rating_matrix(table)
    for entry, start, length in picks:
        stop = start + length
        if ((backwards > start) & (backwards < stop)).any():
            yield to_video(table.slice(start, length), ranges, fps, where)
            continue
        dims = {d: (v[start:stop] if valid[start:stop].any() else None) for d, (v, valid) in labels.items()}
        dims = {d: dims.get(d) for d in AFFECT_DIMENSIONS}
        video = Video(entry.video_id, entry.split, features[start:stop], time_s[start:stop], fps, **dims)
        if rated is not None:
            video.ratings = _video_ratings(rated[0], rated[1][start:stop])
        yield video


def feature_matrix(table: pa.Table, where: str) -> np.ndarray:
    """The (rows, features) float32 matrix of a table's ``features`` lists (or, in a table without them, of its
    numeric columns besides the dataset's own)."""
    if "features" in table.column_names:
        column = table.column("features").combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            dim = column.type.list_size
            values = column.flatten().to_numpy(zero_copy_only=False)
            return values.astype(np.float32, copy=False).reshape(-1, dim)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            if len(column) and column.null_count == 0 and (lengths == lengths[0]).all():
                values = column.flatten().to_numpy(zero_copy_only=False)
                return values.astype(np.float32, copy=False).reshape(len(column), int(lengths[0]))
            raise AffectError(f"{where}: 'features' lists differ in length; expected one feature count per frame")
        rows = column.to_pylist()
        return np.asarray(rows, dtype=np.float32)
    names = [n for n in table.column_names if n not in RESERVED_COLUMNS]
    numeric = [
        n
        for n in names
        if pa.types.is_floating(table.schema.field(n).type) or pa.types.is_integer(table.schema.field(n).type)
    ]
    if not numeric:
        raise AffectError(f"{where}: no 'features' column and no numeric feature columns; expected the dataset schema")
    return np.column_stack([table.column(n).cast(pa.float32()).to_numpy() for n in numeric]).astype(np.float32)
