"""``affect migrate``: a dataset in the earlier per-video layout (:mod:`affect_core.data.legacy`) converted into a
table, its videos streamed one file at a time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from affect_core import storage
from affect_core.data import delta, keys, legacy
from affect_core.data.dataset.convert import to_video
from affect_core.data.dataset.format import FORMAT
from affect_core.data.dataset.hashing import header_hash, video_hash
from affect_core.data.dataset.result import IngestResult
from affect_core.data.dataset.write import check_destination, write_videos
from affect_core.data.records import Video
from affect_core.errors import AffectError


def migrate(
    source_url: storage.Where,
    dataset_url: storage.Where | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    keep_old: bool = False,
    target_file_bytes: int = delta.DEFAULT_TARGET_FILE_BYTES,
    row_group_rows: int = delta.ROW_GROUP_ROWS,
) -> IngestResult:
    """Convert the latest version of a dataset in the earlier per-video layout into a table at ``dataset_url``
    (default: in place, after which the earlier layout's files are deleted unless ``keep_old``). Each URL is
    resolved here, once, with ``storage_options`` (a Location given instead was resolved before)."""
    started = time.perf_counter()
    source = storage.resolve(source_url, storage_options)
    if not legacy.is_legacy(source):
        if delta.is_table(source):
            raise AffectError(f"{source.display()}: already a table; nothing to migrate")
        raise AffectError(f"{source.display()}: no dataset of format {legacy.FORMAT} here (no _manifests/)")
    manifest = legacy.latest_manifest(source)
    target = storage.resolve(dataset_url, storage_options) if dataset_url else source
    if target.path == source.path and delta.is_table(target):
        raise AffectError(f"{target.display()}: already holds a table next to the earlier layout")
    metadata = dict(manifest["metadata"])
    names = json.loads(metadata.get(keys.FEATURE_NAMES, "[]"))
    sets = json.loads(metadata.get(keys.FEATURE_SETS, "[]"))
    fps = float(metadata.get(keys.FPS, "nan"))
    metadata[keys.FORMAT] = FORMAT
    metadata[keys.HEADER_HASH] = header_hash(names, sets, fps)
    metadata.pop(keys.CONTENT_HASH, None)
    ranges = [(0, len(names))]
    where = source.display()

    def videos() -> Iterator[Video]:
        for _, table in legacy.iter_video_tables(source, manifest):
            yield to_video(table, ranges, fps, where)

    # The videos are written one file at a time: the hashes need one pass, the write another.
    hashes = {}
    splits = {}
    for video in videos():
        hashes[video.video_id] = video_hash(video)
        splits[video.video_id] = video.split
    entries = {e["video_id"]: e for e in manifest["files"]}

    def load(video_id: str) -> Video:
        entry = entries[video_id]
        with source.fs.open(storage.join(source.path, manifest["data_path"], entry["path"]), "rb") as handle:
            return to_video(pq.read_table(handle), ranges, fps, where)

    if target.path == source.path:
        _check_table_or_empty_besides_legacy(target)
    else:
        check_destination(target)
    written = write_videos(
        [],
        target,
        metadata=metadata,
        video_hashes=hashes,
        splits=splits,
        load=load,
        target_file_bytes=target_file_bytes,
        row_group_rows=row_group_rows,
        check=False,
    )
    if target.path == source.path and not keep_old:
        legacy.remove(source, manifest)
    return IngestResult.of(
        target.display(),
        written,
        rows=int(manifest.get("rows", 0)),
        videos=len(hashes),
        source_bytes=sum(int(e.get("bytes", 0)) for e in manifest["files"]),
        started=started,
    )


def _check_table_or_empty_besides_legacy(loc: storage.Location) -> None:
    others = [n for n, _ in storage.list_dir(loc.fs, loc.path) if n not in (legacy.MANIFESTS, "versions")]
    others = [n for n in others if not n.startswith(".")]
    if others:
        raise AffectError(f"{loc.display()}: holds {others[0]!r} besides the earlier layout; migrate to a new URL")
