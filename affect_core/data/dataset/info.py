"""What ``affect info`` shows: :func:`dataset_info` (a version's metadata, videos per split, content hash, files and
bytes; or a bare Parquet features URL's) and :func:`table_summary` (any table's, its videos streamed)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from affect_core import storage
from affect_core.data import delta, keys
from affect_core.data.dataset.format import KIND, PREDICTIONS_KIND, metadata_feature_sets, metadata_fps
from affect_core.data.dataset.hashing import combined_hash
from affect_core.data.dataset.versions import Dataset, open_table, open_versioned_table
from affect_core.data.readers import video_sort_key
from affect_core.errors import AffectError


@dataclass
class DatasetInfo:
    """Metadata of one dataset version (or of a bare Parquet features URL, where ``version`` is None); made by
    :meth:`from_metadata`."""

    url: str
    version: str | None
    versions: list[str]
    content_hash: str
    created_at: str
    fps: float
    feature_set: str
    feature_sets: dict[str, tuple[int, int]]
    feature_names: list[str]
    source: str
    layout: str
    rows: int
    videos: dict[str, list[str]]
    metadata: dict[str, str] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0

    @property
    def feature_dim(self) -> int:
        return len(self.feature_names)

    @classmethod
    def from_metadata(
        cls,
        url: str,
        metadata: dict[str, str],
        *,
        version: str | None,
        versions: list[str],
        content_hash: str,
        rows: int,
        videos: dict[str, list[str]],
        files: int = 0,
        bytes: int = 0,
    ) -> DatasetInfo:
        """The info of a dataset whose ``affect.*`` keys are ``metadata`` (what every field but the counts says)."""
        return cls(
            url=url,
            version=version,
            versions=versions,
            content_hash=content_hash,
            created_at="",
            fps=metadata_fps(metadata),
            feature_set=metadata.get(keys.FEATURE_SET, ""),
            feature_sets={s["name"]: (int(s["start"]), int(s["stop"])) for s in metadata_feature_sets(metadata)},
            feature_names=json.loads(metadata.get(keys.FEATURE_NAMES, "[]")),
            source=metadata.get(keys.SOURCE, ""),
            layout=metadata.get(keys.LAYOUT, ""),
            rows=int(rows),
            videos=videos,
            metadata=metadata,
            files=files,
            bytes=bytes,
        )


def dataset_info(
    dataset_url: Dataset, *, version: str | int | None = None, storage_options: dict[str, Any] | None = None
) -> DatasetInfo:
    """Metadata of a dataset version (latest by default): versions, fps, feature sets, video ids per split,
    files and bytes. ``dataset_url``: ``URL[@VERSION]`` (resolved here with ``storage_options``) or resolved."""
    opened = open_table(delta.resolve_versioned(dataset_url, storage_options), version)
    if opened.snapshot is None:
        return bare_info(opened.loc)
    snap = opened.snapshot
    metadata = opened.metadata
    videos: dict[str, list[str]] = {}
    rows = 0

    def stream() -> Iterator[tuple[str, str, str]]:
        nonlocal rows
        for entry in snap.entries():
            videos.setdefault(entry.split, []).append(entry.video_id)
            rows += entry.frames
            yield entry.split, entry.video_id, entry.hash

    content = combined_hash(metadata.get(keys.HEADER_HASH, ""), stream(), ordered=True)
    return DatasetInfo.from_metadata(
        opened.loc.display(),
        metadata,
        version=str(snap.version),
        versions=opened.versions,
        content_hash=content,
        rows=rows,
        videos=videos,
        files=len(snap.files),
        bytes=int(sum(f.size for f in snap.files)),
    )


def resolve_version(
    dataset_url: Dataset, *, version: str | int | None = None, storage_options: dict[str, Any] | None = None
) -> str | None:
    """The version a read of ``dataset_url`` (``URL@VERSION`` or ``version``, else the latest) would see; None
    for a bare Parquet features URL. Pin it for every later read of one job."""
    return dataset_info(dataset_url, version=version, storage_options=storage_options).version


def bare_info(loc: storage.Location) -> DatasetInfo:
    """The info of a bare Parquet file or directory in the dataset schema (no table, no versions)."""
    where = loc.display()
    try:
        dataset = pads.dataset(loc.path, filesystem=loc.arrow_filesystem(), format="parquet", partitioning="hive")
        fragments = list(dataset.get_fragments())
        columns = [c for c in ("video_id", "split") if c in dataset.schema.names]
        table = dataset.to_table(columns=columns) if "video_id" in columns else None
    except (OSError, pa.ArrowException) as exc:
        raise AffectError(f"{where}: not a readable Parquet file or directory ({type(exc).__name__})") from None
    if table is None or not fragments:
        raise AffectError(f"{where}: no 'video_id' column; expected a dataset or features in the dataset schema")
    metadata = {k.decode(): v.decode() for k, v in (fragments[0].physical_schema.metadata or {}).items()}
    videos: dict[str, list[str]] = {}
    split_column = table.column("split").to_pylist() if "split" in columns else ["test"] * table.num_rows
    seen = set()
    for video_id, split in zip(table.column("video_id").to_pylist(), split_column, strict=True):
        if video_id not in seen:
            seen.add(video_id)
            videos.setdefault(split, []).append(video_id)
    for ids in videos.values():
        ids.sort(key=lambda v: video_sort_key("", v))
    return DatasetInfo.from_metadata(
        where,
        metadata,
        version=None,
        versions=[],
        content_hash=metadata.get(keys.CONTENT_HASH, ""),
        rows=table.num_rows,
        videos=videos,
    )


def table_summary(
    url: Dataset, *, version: str | int | None = None, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What ``affect info URL --json`` prints for a dataset or predictions table: version, versions, videos
    [{video_id, split, frames, frames_without_face}] (frames_without_face None for a predictions table written
    before the ``face`` column, which keeps no such count), files, bytes, feature_sets, fps (None where the table
    keeps no frame rate) and the table's metadata.

    ``videos`` is an iterator, in split and natural id order, read once: a table of 10^6 videos is never a list of
    10^6 dicts (``affect info`` prints them as they come)."""
    opened = open_versioned_table(delta.resolve_versioned(url, storage_options), version)
    snap = opened.snapshot
    assert snap is not None
    metadata = opened.metadata
    fps = metadata_fps(metadata)
    # A predictions table's index counts the frames without a face since the tables have the face column; an older
    # table's does not (None: no count to give).
    counts_faces = metadata.get(keys.KIND, KIND) != PREDICTIONS_KIND or metadata.get(keys.FACE_COUNTS) == "1"
    return {
        "url": opened.loc.display(),
        "kind": metadata.get(keys.KIND, KIND),
        "version": snap.version,
        "versions": [int(v) for v in opened.versions],
        "videos": (
            {
                "video_id": e.video_id,
                "split": e.split,
                "frames": e.frames,
                "frames_without_face": e.frames_without_face if counts_faces else None,
            }
            for e in snap.entries()
        ),
        "files": len(snap.files),
        "bytes": int(sum(f.size for f in snap.files)),
        "feature_sets": {s["name"]: int(s["stop"]) - int(s["start"]) for s in metadata_feature_sets(metadata)},
        "fps": fps if math.isfinite(fps) else None,  # None: a predictions table keeps none
        "metadata": {k: v for k, v in metadata.items() if k != keys.FEATURE_NAMES},
    }
