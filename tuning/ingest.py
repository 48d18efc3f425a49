"""Parallel ingest on Ray: each video read and validated by a Ray task, the dataset written by the driver in one commit.

The source is listed once (:func:`affect_core.data.source_videos.list_source_videos`: sizes and modification times or
ETags, grouped by video). A video whose files' fingerprint (and the ingest's options) equal what the latest dataset
version recorded for it is not read at all; every other video is read by a task
(:func:`affect_core.data.source_videos.read_source_video`: one video's files, so a task's memory does not grow with the
corpus), which returns a small summary (content hash, feature names and sets, fps) and, separately, the video, left in
Ray's object store. The driver checks the summaries against each other as they arrive (the cross-video checks), then
:func:`affect_core.data.dataset.write_videos` writes only the videos whose content hash changed, pulling each from the
object store as it writes it. A source that holds every video in one file (``features.parquet``) is ingested by the
single-process :func:`affect_core.data.dataset.ingest`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from affect_core import storage
from affect_core.data.dataset import IngestResult

# Reads in flight per CPU of the cluster: enough to keep every CPU busy while the driver collects results.
IN_FLIGHT_PER_CPU = 2


def _read_task(
    root: str,
    layout: str,
    item: Any,
    feature_set: str | Sequence[str] | None,
    storage_options: dict[str, Any] | None,
    fps: float | None,
    min_face_confidence: float,
) -> tuple[dict[str, Any], Any]:
    """Ray task: read and validate one video; returns (summary, video)."""
    from affect_core.data.dataset import video_hash
    from affect_core.data.source_videos import read_source_video

    read = read_source_video(
        root,
        layout,
        item,
        feature_set=feature_set,
        storage_options=storage_options,
        fps=fps,
        min_face_confidence=min_face_confidence,
    )
    summary = {
        "video_id": read.video.video_id,
        "split": read.video.split,
        "hash": video_hash(read.video),
        "feature_names": read.feature_names,
        "feature_sets": read.feature_sets,
        "fps": read.fps,
        "source_bytes": read.source_bytes,
        "frames": read.video.num_frames,
        "metadata": read.metadata,
        "ratings": sorted(read.video.ratings or {}),
    }
    return summary, read.video


def ingest(
    source_root: str,
    dataset_url: str,
    *,
    layout: str,
    feature_set: str | Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    source_storage_options: Mapping[str, Any] | None = None,
    fps: float | None = None,
    cpus_per_task: float = 1.0,
    target_file_bytes: int | None = None,
    row_group_rows: int | None = None,
    min_face_confidence: float = 0.5,
) -> IngestResult:
    """Ingest ``source_root`` into ``dataset_url`` with Ray tasks reading the videos (see the module docstring).
    Same arguments and result as :func:`affect_core.data.dataset.ingest`; raises AffectError on bad input (nothing
    is written)."""
    import ray

    from affect_core.data import dataset as ds
    from affect_core.data import delta
    from affect_core.data.records import Corpus
    from affect_core.data.source_videos import CorpusHeader, list_source_videos, options_stamp, splittable
    from affect_core.errors import AffectError
    from tuning.cluster import ensure_ray, shareable_storage_options

    started = time.perf_counter()
    options = dict(storage_options or {}) or None
    source_options = dict(source_storage_options) if source_storage_options is not None else options
    sizes = {
        "target_file_bytes": target_file_bytes or delta.DEFAULT_TARGET_FILE_BYTES,
        "row_group_rows": row_group_rows or delta.ROW_GROUP_ROWS,
    }
    if not splittable(source_root, layout, source_options):
        return ds.ingest(
            source_root,
            dataset_url,
            layout=layout,
            feature_set=feature_set,
            storage_options=options,
            source_storage_options=source_options,
            progress=False,
            fps=fps,
            **sizes,
        )
    items = list_source_videos(source_root, layout, source_options)
    stamps = {item.video_id: options_stamp(item.fingerprint, layout, feature_set, fps) for item in items}
    loc = storage.resolve(dataset_url, options)
    snap = delta.snapshot(loc) if delta.is_table(loc) else None
    index = snap.index() if snap is not None else {}
    unchanged = {
        item.video_id
        for item in items
        if item.video_id in index
        and index[item.video_id].source == stamps[item.video_id]
        and index[item.video_id].split == item.split
    }
    if snap is not None and len(unchanged) == len(items) == len(index):
        return IngestResult(
            dataset_url=loc.display(),
            version=str(snap.version),
            content_hash=ds.dataset_info(loc.url, version=snap.version, storage_options=options).content_hash,
            unchanged=True,
            rows=int(sum(e.frames for e in index.values())),
            videos=len(items),
            seconds=time.perf_counter() - started,
            source_bytes=0,
            mb_per_s=0.0,
        )

    cluster = ensure_ray(storage_options=source_options or options)
    task = ray.remote(num_returns=2, num_cpus=cpus_per_task)(_read_task)
    shared = shareable_storage_options(source_options)
    where = storage.resolve(source_root, source_options).display()
    header = CorpusHeader()
    summaries: dict[str, dict[str, Any]] = {}
    videos: dict[str, Any] = {}

    def read_all(todo: list[Any]) -> None:
        window = max(1, int(cluster.cpus * IN_FLIGHT_PER_CPU))
        pending: dict[Any, str] = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < window:
                item = queue.pop(0)
                summary_ref, video_ref = task.remote(
                    source_root, layout, item, feature_set, shared, fps, min_face_confidence
                )
                pending[summary_ref] = item.video_id
                videos[item.video_id] = video_ref
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                video_id = pending.pop(ref)
                try:
                    summary = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), AffectError) else None
                    if cause is not None:
                        raise AffectError(str(cause)) from None
                    raise
                header.check(video_id, summary["feature_names"], summary["feature_sets"], summary["fps"], where)
                summaries[video_id] = summary

    read_all([item for item in items if item.video_id not in unchanged])
    if snap is not None and summaries:
        names = json.loads(snap.metadata.get("affect.feature_names", "[]"))
        if names != header.feature_names:  # the header changed: every video is rewritten, so every video is read
            read_all([item for item in items if item.video_id in unchanged])
            unchanged = set()
    if header.feature_names is None:  # only deletions: the header is the latest version's
        metadata = {str(k): str(v) for k, v in (snap.metadata if snap is not None else {}).items()}
    else:
        sets = header.feature_sets or []
        extra: dict[str, str] = {}
        for summary in summaries.values():
            extra.update(summary["metadata"])
        raters = sorted({name for summary in summaries.values() for name in summary["ratings"]})
        if raters:
            extra["ratings"] = json.dumps(raters)
        corpus = Corpus(
            [],
            header.feature_names,
            float(header.fps or 0.0),
            feature_set="+".join(dict.fromkeys(s.get("set", s["name"]) for s in sets)) or "features",
            metadata={"feature_sets": json.dumps(sets), **extra},
        )
        chash = ds.header_hash(corpus.feature_names, sets, corpus.fps, raters)
        metadata = ds.dataset_metadata(corpus, chash, layout, source_root)
    hashes = {v: index[v].hash for v in unchanged}
    hashes.update({v: s["hash"] for v, s in summaries.items()})
    splits = {item.video_id: item.split for item in items}
    splits.update({v: s["split"] for v, s in summaries.items()})

    def load(video_id: str) -> Any:
        return ray.get(videos.pop(video_id))

    version, content, same, written, files = ds.write_videos(
        [],
        dataset_url,
        metadata=metadata,
        storage_options=options,
        sources={v: stamps[v] for v in summaries},
        video_hashes=hashes,
        splits=splits,
        load=load,
        **sizes,
    )
    seconds = time.perf_counter() - started
    source_bytes = int(sum(s["source_bytes"] for s in summaries.values()))
    return IngestResult(
        dataset_url=loc.display(),
        version=version,
        content_hash=content,
        unchanged=same,
        rows=int(sum(s["frames"] for s in summaries.values()) + sum(index[v].frames for v in unchanged)),
        videos=len(items),
        seconds=seconds,
        source_bytes=source_bytes,
        mb_per_s=source_bytes / 1e6 / seconds if seconds > 0 else 0.0,
        videos_written=written,
        files_written=files,
    )
