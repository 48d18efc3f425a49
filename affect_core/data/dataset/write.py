"""Writing a dataset version: :func:`write_videos` (the one writer: only videos whose content changed are written,
with the other videos of each file that held an old copy of one; removed videos disappear with their files; one
atomic commit, re-planned when another writer committed first) and :func:`write_dataset` (a whole corpus).

A dataset is a Delta Lake table (:mod:`affect_core.data.delta`): Parquet files of many whole videos, partitioned by
split, rows sorted by video and frame, row groups ending at video boundaries, an index of each file's videos in its
footer. Files a version needs besides its table (the video layout's fitted transform) are *attachments*: named from
the version's content hash, they are written before the commit that publishes the version, so a version is never
visible without them."""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from affect_core import storage
from affect_core.data import delta, keys, legacy
from affect_core.data.dataset.format import dataset_metadata, dataset_schema
from affect_core.data.dataset.hashing import combined_hash, corpus_header_hash, video_hash
from affect_core.data.readers import TIME_DECIMALS, video_sort_key
from affect_core.data.records import AFFECT_DIMENSIONS, Corpus, Video
from affect_core.errors import AffectError

# A writer that loses a commit race re-plans from the new version this many times before giving up.
COMMIT_ATTEMPTS = 4
# Files stored with a version: {path relative to the dataset root: what makes its content (called only when the file
# must be written)}, given the version's content hash.
Attachments = Callable[[str], dict[str, Callable[[], bytes]]]


@dataclass(frozen=True)
class Written:
    """What a write did: the version the dataset is at, its content hash, whether it was already there (nothing
    written), the videos and files written."""

    version: str
    content_hash: str
    unchanged: bool
    videos_written: int = 0
    files_written: int = 0


# ------------------------------------------------------------------------------------------------- rows of a video
def _frames(video: Video) -> np.ndarray:
    time_s = video.time_s
    if time_s.size == 0:
        return np.zeros(0, dtype=np.int32)
    start = int(np.rint(time_s[0] * video.fps))
    return (np.rint((time_s - time_s[0]) * video.fps).astype(np.int64) + start).astype(np.int32)


def _ratings_matrix(video: Video, names: list[str]) -> np.ndarray:
    """(T, len(names)) float32; NaN for a rater the video lacks."""
    out = np.full((video.num_frames, len(names)), np.nan, dtype=np.float32)
    for j, name in enumerate(names):
        if video.ratings and name in video.ratings:
            out[:, j] = video.ratings[name]
    return out


def video_table(video: Video, schema: pa.Schema) -> pa.Table:
    """One video as a table in the dataset schema (labels null where the video has none)."""
    frames = video.num_frames
    dim = video.features.shape[1] if video.features.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(video.features, dtype=np.float32).reshape(-1), pa.float32())
    offsets = pa.array(np.arange(frames + 1, dtype=np.int32) * dim, pa.int32())
    columns = [
        pa.repeat(pa.scalar(video.video_id, pa.string()), frames),
        pa.repeat(pa.scalar(video.split, pa.string()), frames),
        pa.array(_frames(video), pa.int32()),
        pa.array(np.round(video.time_s, TIME_DECIMALS), pa.float64()),
        pa.ListArray.from_arrays(offsets, flat),
    ]
    for dimension in AFFECT_DIMENSIONS:
        labels = video.labels(dimension)
        if labels is None:
            columns.append(pa.nulls(frames, pa.float32()))
        else:
            columns.append(pa.array(np.asarray(labels, dtype=np.float32), pa.float32()))
    if "ratings" in schema.names:
        names = json.loads(schema.metadata[keys.RATINGS.encode()])
        ratings = _ratings_matrix(video, names).reshape(-1)
        offsets = pa.array(np.arange(frames + 1, dtype=np.int32) * len(names), pa.int32())
        columns.append(pa.ListArray.from_arrays(offsets, pa.array(ratings, pa.float32())))
    return pa.Table.from_arrays(columns, schema=schema)


def video_entry(video: Video, *, source: str = "") -> delta.VideoEntry:
    """The index entry of one video (frames, frames without a face, content hash)."""
    features = np.asarray(video.features)
    missing = int(np.isnan(features).all(axis=1).sum()) if features.size else 0
    return delta.VideoEntry(
        video_id=video.video_id,
        split=video.split,
        frames=video.num_frames,
        frames_without_face=missing,
        hash=video_hash(video),
        source=source,
    )


# ----------------------------------------------------------------------------------------------------- the writer
def check_destination(loc: storage.Location) -> None:
    """Refuse a destination that is not a dataset, an empty directory or a new URL."""
    if storage.exists(loc.fs, loc.path) and not storage.is_dir(loc.fs, loc.path):
        raise AffectError(f"{loc.display()}: exists and is a file; expected a dataset directory (or a new URL)")
    if delta.is_table(loc):
        return
    if legacy.is_legacy(loc):
        raise AffectError(
            f"{loc.display()}: holds a dataset in the earlier per-video layout ({legacy.FORMAT}); convert it first "
            f"with `affect migrate {loc.display()}`"
        )
    # split=... folders without a log are a crashed first ingest's uncommitted files, _... ones its attachments (or
    # a stamp cache): an ingest may write here
    entries = [name for name, _ in storage.list_dir(loc.fs, loc.path) if not name.startswith((".", "_", "split="))]
    if entries:
        raise AffectError(
            f"{loc.display()}: directory holds {entries[0]!r} and is not an affect dataset (no _delta_log/); "
            "expected an empty directory, a new URL or an existing dataset"
        )


def write_videos(
    videos: Iterable[Video] | Sequence[Video] | None,
    dataset_url: storage.Where,
    *,
    metadata: dict[str, str],
    storage_options: dict[str, Any] | None = None,
    sources: dict[str, str] | None = None,
    target_file_bytes: int = delta.DEFAULT_TARGET_FILE_BYTES,
    row_group_rows: int = delta.ROW_GROUP_ROWS,
    video_hashes: dict[str, str] | None = None,
    splits: dict[str, str] | None = None,
    load: Callable[[str], Video] | None = None,
    check: bool = True,
    attachments: Attachments | None = None,
) -> Written:
    """Write ``videos`` as the new content of the dataset: a new version holding exactly these videos.

    Only videos whose hash differs from the latest version's copy (or that are new) are written, together with the
    other videos of each file that held an old copy; removed videos disappear with their files. ``video_hashes``
    ({video id: hash}) lets a caller that knows a video is unchanged skip reading it: ``load(video_id)`` is then
    called only for videos that must be written, and ``videos`` may be the ids' Video objects or None.
    ``attachments`` gives the files stored with the version from its content hash: written before the commit (and,
    where missing, when the dataset is unchanged), removed again when the commit fails. ``dataset_url`` is resolved
    here with ``storage_options`` unless it is a Location already."""
    loc = storage.resolve(dataset_url, storage_options)
    if check:
        check_destination(loc)
    given = {v.video_id: v for v in videos} if videos is not None else {}
    hashes = dict(video_hashes or {})
    for video_id, video in given.items():
        hashes.setdefault(video_id, video_hash(video))
    splits = {**(splits or {}), **{v.video_id: v.split for v in given.values()}}
    if load is None:
        load = given.__getitem__
    plan = _WritePlan(loc, hashes, splits, load, metadata, sources or {}, attachments)
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            return plan.write_once(delta.snapshot(loc), target_file_bytes, row_group_rows)
        except delta.CommitConflict:
            if attempt == COMMIT_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


@dataclass
class _WritePlan:
    """One write of :func:`write_videos`, tried against a snapshot (again after a lost commit race)."""

    loc: storage.Location
    hashes: dict[str, str]
    splits: dict[str, str]
    load: Callable[[str], Video]
    metadata: dict[str, str]
    sources: dict[str, str]
    attachments: Attachments | None

    def content(self, order: list[str]) -> str:
        header = self.metadata[keys.HEADER_HASH]
        return combined_hash(header, ((self.splits[v], v, self.hashes[v]) for v in order), ordered=True)

    def write_once(self, snap: delta.Snapshot | None, target_file_bytes: int, row_group_rows: int) -> Written:
        hashes, splits, loc, metadata = self.hashes, self.splits, self.loc, self.metadata
        same_header = snap is not None and snap.metadata.get(keys.HEADER_HASH) == metadata[keys.HEADER_HASH]
        held = snap if (snap is not None and same_header) else None
        order = sorted(hashes, key=lambda v: video_sort_key(splits[v], v))  # the one sort: ids only
        changed, deleted = order, []
        if held is not None:
            held_hashes, held_splits = held.column_map("hash"), held.column_map("split")
            changed = [v for v in order if held_hashes.get(v) != hashes[v] or held_splits.get(v) != splits[v]]
            deleted = [v for v in held_hashes if v not in hashes]
            del held_hashes, held_splits
            if not changed and not deleted:
                content = self.content(order)
                store_attachments(loc, self.attachments, content, only_missing=True)
                return Written(str(held.version), content, True)
        stale = pa.array([*changed, *deleted], pa.string()) if held is not None else None
        removed = [f for f in held.files if select_index_rows(f, stale)] if held is not None else []
        changed_set = set(changed) if removed else set()
        carried = (
            e
            for e in heapq.merge(*(f.entries() for f in removed), key=_entry_key)
            if e.video_id in hashes and e.video_id not in changed_set
        )
        schema = dataset_schema(0, metadata)
        writer = delta.FileWriter(loc, schema, target_file_bytes=target_file_bytes, row_group_rows=row_group_rows)
        added: list[delta.DataFile] = []
        stored: list[str] = []
        try:
            # the changed videos (read now) and the carried ones (copied from the files being replaced), in order
            incoming = ((video_sort_key(splits[v], v), v, None) for v in changed)
            copied = ((_entry_key(e), e, t) for e, t in delta.iter_entry_tables(loc, carried))
            for _, item, table in heapq.merge(incoming, copied, key=lambda t: t[0]):
                if table is not None:
                    added += writer.add(table.replace_schema_metadata(metadata), _copy_entry(item))
                    continue
                video = self.load(item)
                entry = video_entry(video, source=self.sources.get(video.video_id, ""))
                hashes[video.video_id] = entry.hash
                added += writer.add(video_table(video, schema), entry)
            added += writer.close()
            content = self.content(order)
            stored = store_attachments(loc, self.attachments, content, only_missing=False)
            version = delta.commit(
                loc,
                schema,
                added=added,
                removed=removed,
                read_version=snap.version if snap is not None else None,
                metadata=metadata,
                replace=snap is not None and not same_header,
                operation="ingest",
            )
        except BaseException as exc:
            writer.abort()
            for path in stored:
                storage.remove_tree(loc.fs, path)
            if storage.is_store_error(exc) and not isinstance(exc, AffectError):
                raise AffectError(
                    f"{loc.display()}: writing a new version failed ({type(exc).__name__}: "
                    f"{storage.redact(str(exc))[:200]}); nothing was published"
                ) from None
            raise
        return Written(str(version), content, False, sum(f.video_count for f in added), len(added))


def store_attachments(
    loc: storage.Location, attachments: Attachments | None, content: str, *, only_missing: bool
) -> list[str]:
    """Write the attachments of the version whose content hash is ``content`` (those not there yet, with
    ``only_missing``: a version whose attachment was lost gets it back); returns the paths created."""
    created = []
    for relative, data in (attachments(content) if attachments else {}).items():
        path = storage.join(loc.path, relative)
        there = storage.exists(loc.fs, path)
        if there and only_missing:
            continue
        storage.write_bytes_atomic(loc.fs, path, data())
        if not there:
            created.append(path)
    return created


def _entry_key(entry: delta.VideoEntry) -> tuple[object, ...]:
    return video_sort_key(entry.split, entry.video_id)


def select_index_rows(data_file: delta.DataFile, video_ids: pa.Array) -> int:
    """How many of ``video_ids`` the file holds."""
    return delta.select_index(data_file.index, None, video_ids).num_rows if data_file.index is not None else 0


def _copy_entry(entry: delta.VideoEntry) -> delta.VideoEntry:
    return delta.VideoEntry(
        entry.video_id, entry.split, entry.frames, 0, entry.frames_without_face, entry.hash, entry.source
    )


def write_dataset(
    corpus: Corpus,
    dataset_url: storage.Where,
    *,
    storage_options: dict[str, Any] | None = None,
    layout: str = "",
    source: str = "",
    progress: bool = True,
    target_file_bytes: int = delta.DEFAULT_TARGET_FILE_BYTES,
    row_group_rows: int = delta.ROW_GROUP_ROWS,
    sources: dict[str, str] | None = None,
) -> Written:
    """Write ``corpus`` as a new dataset version (``sources``: the source stamp of each video, recorded for the next
    ingest to compare). ``layout`` and ``source`` default to the corpus's."""
    metadata = dataset_metadata(
        corpus, corpus_header_hash(corpus), layout or corpus.metadata.get("layout", ""), source or corpus.source
    )
    return write_videos(
        corpus.videos,
        dataset_url,
        metadata=metadata,
        storage_options=storage_options,
        target_file_bytes=target_file_bytes,
        row_group_rows=row_group_rows,
        sources=sources,
    )
