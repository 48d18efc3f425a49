"""Reading a dataset version: :func:`iter_videos` and :class:`DatasetReader` stream its videos one row group at a
time; :func:`read_corpus` reads a version into memory; :func:`video_parts` cuts it into parts for a pool of workers;
:func:`iter_table_rows` streams any table's rows video by video. Any version can be read (``version=`` or
``URL@VERSION``) until ``affect vacuum`` removes it; a bare Parquet file or directory in the dataset schema (a
"features URL", no table) is read too."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from affect_core import storage
from affect_core.data import delta, keys
from affect_core.data.dataset.convert import feature_matrix, row_group_videos, to_video
from affect_core.data.dataset.format import corpus_metadata, selected_columns
from affect_core.data.dataset.info import bare_info, dataset_info
from affect_core.data.dataset.versions import Dataset, OpenedTable, open_table, open_versioned_table
from affect_core.data.records import Corpus, Video
from affect_core.errors import AffectError


class DatasetReader:
    """One dataset version opened once (its log, metadata and video index read once), then read video by video as
    often as asked: what a Ray actor or a training worker holds for a whole job. ``version`` (or ``URL@VERSION``)
    pins the version; the latest is resolved here otherwise."""

    def __init__(
        self,
        dataset_url: Dataset,
        *,
        version: str | int | None = None,
        feature_set: str | Sequence[str] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self._read(open_table(delta.resolve_versioned(dataset_url, storage_options), version), feature_set)

    @classmethod
    def opened(cls, opened: OpenedTable, feature_set: str | Sequence[str] | None = None) -> DatasetReader:
        """A reader of a table version opened before (its URL resolved and log read once)."""
        reader = cls.__new__(cls)
        reader._read(opened, feature_set)
        return reader

    def _read(self, opened: OpenedTable, feature_set: str | Sequence[str] | None) -> None:
        if opened.snapshot is None:
            raise AffectError(f"{opened.loc.display()}: not a dataset table (no _delta_log/)")
        self.location = opened.loc
        self.snapshot = opened.snapshot
        self.version = str(opened.snapshot.version)
        metadata = opened.metadata
        self.ranges, self.feature_names, _, _ = selected_columns(metadata, feature_set, opened.loc.display())
        self.fps = float(metadata.get(keys.FPS, ""))

    def entries(
        self,
        *,
        splits: Sequence[str] | None = None,
        video_ids: Sequence[str] | None = None,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[delta.VideoEntry]:
        """Index entries of the chosen videos in split and natural id order, streamed (``shard=(i, n)``: every n-th
        from i)."""
        entries = self.snapshot.entries(splits=splits, video_ids=video_ids)
        if shard is not None:
            index, count = shard
            if not 0 <= index < count:
                raise AffectError(f"{self.location.display()}: shard {index} of {count} does not exist")
            entries = itertools.islice(entries, index, None, count)
        return entries

    def videos(
        self,
        *,
        splits: Sequence[str] | None = None,
        video_ids: Sequence[str] | None = None,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[Video]:
        """The chosen videos, one at a time (one row group in memory)."""
        entries = self.entries(splits=splits, video_ids=video_ids, shard=shard)
        for table, picks in delta.iter_row_groups(self.location, entries):
            yield from row_group_videos(table, picks, self.ranges, self.fps, self.location.display(picks[0][0].path))


def iter_videos(
    dataset_url: Dataset,
    *,
    splits: Sequence[str] | None = None,
    feature_set: str | Sequence[str] | None = None,
    version: str | int | None = None,
    storage_options: dict[str, Any] | None = None,
    video_ids: Sequence[str] | None = None,
    shard: tuple[int, int] | None = None,
) -> Iterator[Video]:
    """Stream the videos of a dataset version one at a time (bounded memory: one row group), in split then natural
    id order. ``version`` (or ``URL@VERSION``) pins the version; ``shard=(i, n)`` keeps every n-th video from the
    i-th (the part of one of n training workers). A caller that reads many times opens a :class:`DatasetReader`.

    dataset_url may also be a bare Parquet file or directory in the dataset schema (a "features URL", no
    table); its rows must be grouped by video. Labels are None for a video without labels."""
    opened = open_table(delta.resolve_versioned(dataset_url, storage_options), version)
    if opened.snapshot is None:
        yield from _iter_bare(opened.loc, splits, feature_set, video_ids)
        return
    yield from DatasetReader.opened(opened, feature_set).videos(splits=splits, video_ids=video_ids, shard=shard)


def video_parts(
    dataset_url: Dataset,
    *,
    splits: Sequence[str] | None = None,
    version: str | int | None = None,
    storage_options: dict[str, Any] | None = None,
    parts: int | None = None,
) -> list[list[str]]:
    """The video ids of a dataset version cut into ``parts`` lists of about equal frames (default: one per data
    file), each in reading order: what a pool of workers (Ray Data tasks, training workers) takes one list each of,
    passing it to :func:`iter_videos` as ``video_ids`` with the same pinned ``version``."""
    opened = open_table(delta.resolve_versioned(dataset_url, storage_options), version)
    if opened.snapshot is None:
        info = bare_info(opened.loc)
        ids = [v for s, vs in info.videos.items() if splits is None or s in splits for v in vs]
        return [ids] if ids else []
    snap = opened.snapshot
    if parts is None:
        return [[e.video_id for e in f.entries(splits=splits)] for f in snap.files if f.video_count] or []
    total = sum(e.frames for e in snap.entries(splits=splits))
    out: list[list[str]] = [[] for _ in range(max(1, parts))]
    running = 0
    for entry in snap.entries(splits=splits):
        out[min(len(out) - 1, running * len(out) // max(1, total))].append(entry.video_id)
        running += entry.frames
    return [p for p in out if p]


def _iter_bare(
    loc: storage.Location,
    splits: Sequence[str] | None,
    feature_set: str | Sequence[str] | None,
    video_ids: Sequence[str] | None,
) -> Iterator[Video]:
    """Stream a bare Parquet file/directory, one video at a time, from contiguous runs of rows."""
    where = loc.display()
    try:
        dataset = pads.dataset(
            loc.path,
            filesystem=loc.arrow_filesystem(),
            format="parquet",
            partitioning="hive",
            exclude_invalid_files=False,
        )
        fragments = list(dataset.get_fragments())
    except (OSError, pa.ArrowException) as exc:
        raise AffectError(f"{where}: not a readable Parquet file or directory ({type(exc).__name__})") from None
    if not fragments:
        raise AffectError(f"{where}: no Parquet files; expected a dataset or features in the dataset schema")
    metadata = {k.decode(): v.decode() for k, v in (fragments[0].physical_schema.metadata or {}).items()}
    schema = dataset.schema
    if "video_id" not in schema.names or "time_s" not in schema.names:
        raise AffectError(f"{where}: missing column 'video_id' or 'time_s'; expected the dataset schema")
    if metadata.get(keys.FEATURE_NAMES):
        ranges, _, _, _ = selected_columns(metadata, feature_set, where)
    elif feature_set is not None:
        raise AffectError(f"{where}: no feature-set metadata; cannot select feature set {feature_set!r}")
    else:
        ranges = None
    fps = float(metadata[keys.FPS]) if metadata.get(keys.FPS) else None
    expression = None
    if splits is not None and "split" in schema.names:
        expression = pc.field("split").isin(list(splits))
    if video_ids is not None:
        condition = pc.field("video_id").isin(list(video_ids))
        expression = condition if expression is None else (expression & condition)
    pending: list[pa.Table] = []
    current: str | None = None
    done: set[str] = set()

    def flush() -> Iterator[Video]:
        if pending:
            table = pa.concat_tables(pending)
            dim = feature_matrix(table.slice(0, 1), where).shape[1]
            yield to_video(table, ranges or [(0, dim)], fps, where)
            pending.clear()

    for fragment in fragments:
        scanner = pads.Scanner.from_fragment(fragment, schema=schema, filter=expression, use_threads=False)
        for batch in scanner.to_batches():
            if batch.num_rows == 0:
                continue
            ids = batch.column("video_id").to_numpy(zero_copy_only=False).astype(str)
            bounds = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(ids)]
            for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
                video_id = ids[start]
                if video_id != current:
                    yield from flush()
                    if video_id in done:
                        raise AffectError(
                            f"{where}: rows of video {video_id!r} are not contiguous; expected rows grouped by video"
                        )
                    if current is not None:
                        done.add(current)
                    current = video_id
                pending.append(pa.Table.from_batches([batch.slice(start, stop - start)]))
    yield from flush()


def read_corpus(
    dataset_url: Dataset,
    *,
    splits: Sequence[str] | None = None,
    feature_set: str | Sequence[str] | None = None,
    version: str | int | None = None,
    storage_options: dict[str, Any] | None = None,
    video_ids: Sequence[str] | None = None,
) -> Corpus:
    """Read a dataset version (the latest by default) into memory; ``video_ids`` keeps only those videos.

    Frames are sorted; features are (T, d) float32 with NaN rows for frames without a face; labels are None
    for unlabelled videos. Raises AffectError for unknown versions, feature sets or splits."""
    dataset = delta.resolve_versioned(dataset_url, storage_options)
    info = dataset_info(dataset, version=version)
    if splits is not None:
        unknown = [s for s in splits if s not in info.videos]
        if unknown:
            raise AffectError(
                f"{info.url}: no split {unknown[0]!r} in version {info.version}; available: {', '.join(info.videos)}"
            )
    videos = list(
        iter_videos(
            delta.VersionedLocation(dataset.loc),
            splits=splits,
            feature_set=feature_set,
            version=info.version,
            video_ids=video_ids,
        )
    )
    _, names, label, sets = selected_columns(info.metadata, feature_set, info.url)
    metadata = dict(info.metadata)
    metadata["feature_sets"] = json.dumps(sets)
    metadata["version"] = info.version or ""
    metadata.update(corpus_metadata(info.metadata))
    if videos and not names:
        names = [f"f{i}" for i in range(videos[0].features.shape[1])]
    fps = info.fps if info.fps == info.fps else (videos[0].fps if videos else float("nan"))
    return Corpus(videos, names, fps, feature_set=label, source=info.source, metadata=metadata)


def iter_table_rows(
    url: Dataset,
    *,
    version: str | int | None = None,
    storage_options: dict[str, Any] | None = None,
    video_ids: Sequence[str] | None = None,
) -> Iterator[tuple[str, pa.Table]]:
    """(video id, its rows) of a dataset or predictions table version, one video at a time in split and natural id
    order (bounded memory): what ``affect export`` writes."""
    opened: OpenedTable = open_versioned_table(delta.resolve_versioned(url, storage_options), version)
    assert opened.snapshot is not None
    for entry, table in delta.iter_entry_tables(opened.loc, opened.snapshot.entries(video_ids=video_ids)):
        yield entry.video_id, table
