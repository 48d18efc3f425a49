"""Versioned datasets on any local path or S3 URL: ``ingest`` writes them; ``read_corpus``, ``iter_videos``,
``iter_video_parts`` and ``dataset_info`` read them; ``migrate`` converts the earlier per-video layout.

A dataset is a Delta Lake table (:mod:`affect_core.data.delta`): Parquet files of many whole videos, partitioned by
split, rows sorted by video and frame, row groups ending at video boundaries, an index of each file's videos in its
footer. A commit is atomic and makes a new version; any version can be read (``version=`` or ``URL@VERSION``) until
``affect vacuum`` removes it. Re-ingesting input whose every video has the hash the latest version holds is a no-op;
changed input writes the changed videos (and the rest of each file that held an old copy of one) in one commit.

Columns (docs/data_formats.md): video_id, split, frame (int32), time_s (float64), features (list<float32>, one list per
frame, NaN where there is no face), arousal, valence (float32, null where unlabelled). The table's description holds
the metadata: feature names and sets, fps, source, layout."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from affect_core import storage
from affect_core.data import delta, legacy
from affect_core.data import source_videos as sv
from affect_core.data.readers import (
    TIME_DECIMALS,
    ReadOptions,
    parse_feature_sets,
    read_source,
    set_ranges,
    video_sort_key,
)
from affect_core.data.records import AFFECT_DIMENSIONS, Corpus, Video
from affect_core.errors import AffectError

FORMAT = "affect-dataset/2"
META_PREFIX = "affect."
RESERVED_COLUMNS = ("video_id", "split", "frame", "time_s", "features", *AFFECT_DIMENSIONS, "ratings")
# Corpus metadata kept in the dataset as affect.<key>: AVEC features come pooled; the tool that wrote the files.
SOURCE_METADATA = ("pooled", "source_format")
# A writer that loses a commit race re-plans from the new version this many times before giving up.
COMMIT_ATTEMPTS = 4


@dataclass
class IngestResult:
    """What an ingest did. ``unchanged`` is True when the input matched the latest version (nothing
    written); ``videos_written`` counts the videos whose rows went into new files."""

    dataset_url: str
    version: str
    content_hash: str
    unchanged: bool
    rows: int
    videos: int
    seconds: float
    source_bytes: int
    videos_written: int = 0
    files_written: int = 0
    notes: list[str] = field(default_factory=list)  # what the reader skipped, one line each
    mb_per_s: float = field(init=False)  # source megabytes read per second of the ingest

    def __post_init__(self) -> None:
        self.mb_per_s = self.source_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for the CLI."""
        if self.unchanged:
            return (
                f"unchanged: {self.dataset_url} version {self.version} already holds this input "
                f"({self.videos} videos, {self.rows} rows)"
            )
        return (
            f"ingested {self.dataset_url} version {self.version}: {self.videos} videos, {self.rows} rows, "
            f"{self.source_bytes / 1e6:.1f} MB in {self.seconds:.2f} s ({self.mb_per_s:.1f} MB/s); "
            f"{self.videos_written} video(s) written in {self.files_written} file(s)"
        )


@dataclass
class DatasetInfo:
    """Metadata of one dataset version (or of a bare Parquet features URL, where ``version`` is None)."""

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


# ---------------------------------------------------------------------------------------------------- content hash
def header_hash(
    feature_names: Sequence[str], sets: Sequence[dict[str, Any]], fps: float, ratings: Sequence[str] = ()
) -> str:
    """SHA-256 over what every video of a dataset shares: feature names and sets, fps, the per-rater tracks."""
    header = {
        "format": FORMAT,
        "feature_names": list(feature_names),
        "feature_sets": [{k: v for k, v in s.items() if k != "names"} for s in sets],
        "fps": float(fps),
    }
    if ratings:
        header["ratings"] = list(ratings)
    return "sha256:" + hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def video_hash(video: Video) -> str:
    """SHA-256 over one video: id, split, times, features, labels and per-rater ratings (NaN canonicalised)."""
    digest = hashlib.sha256()
    features = np.ascontiguousarray(video.features, dtype=np.float32)
    features = np.where(np.isnan(features), np.float32(np.nan), features)
    digest.update(json.dumps([video.video_id, video.split, list(features.shape)]).encode())
    digest.update(np.ascontiguousarray(np.round(video.time_s, TIME_DECIMALS), dtype=np.float64).tobytes())
    digest.update(features.tobytes())
    for dimension in AFFECT_DIMENSIONS:
        labels = video.labels(dimension)
        digest.update(b"none" if labels is None else np.ascontiguousarray(labels, dtype=np.float32).tobytes())
    for name in sorted(video.ratings or {}):
        digest.update(name.encode() + np.ascontiguousarray(video.ratings[name], dtype=np.float32).tobytes())
    return "sha256:" + digest.hexdigest()


def combined_hash(header: str, video_hashes: Iterable[tuple[str, str, str]], *, ordered: bool = False) -> str:
    """The dataset's content hash from its header hash and (split, video id, video hash) of every video; ``ordered``:
    they come in split and natural id order already (streamed, not sorted here)."""
    digest = hashlib.sha256(header.encode())
    items = video_hashes if ordered else sorted(video_hashes, key=lambda t: video_sort_key(t[0], t[1]))
    for split, video_id, value in items:
        digest.update(f"{split}/{video_id}={value};".encode())
    return "sha256:" + digest.hexdigest()


def content_hash(corpus: Corpus) -> str:
    """SHA-256 over what a dataset holds: feature names and sets, fps, and every video's ids, times, features
    and labels. Source path and layout are not part of it: the same data from elsewhere is unchanged."""
    header = header_hash(corpus.feature_names, set_ranges(corpus), corpus.fps, rating_names(corpus))
    return combined_hash(header, [(v.split, v.video_id, video_hash(v)) for v in corpus.videos])


# --------------------------------------------------------------------------------------------------------- writing
def _frames(video: Video) -> np.ndarray:
    time_s = video.time_s
    if time_s.size == 0:
        return np.zeros(0, dtype=np.int32)
    start = int(np.rint(time_s[0] * video.fps))
    return (np.rint((time_s - time_s[0]) * video.fps).astype(np.int64) + start).astype(np.int32)


def dataset_schema(feature_dim: int = 0, metadata: dict[str, str] | None = None) -> pa.Schema:
    """The Parquet schema of a dataset file (docs/data_formats.md). ``features`` is a variable-size list (Delta Lake
    has no fixed-size list type); every frame's list has the dataset's feature count. A ``ratings`` column (one value
    per rater track named in ``affect.ratings``) when the corpus has per-rater ratings."""
    fields = [
        ("video_id", pa.string()),
        ("split", pa.string()),
        ("frame", pa.int32()),
        ("time_s", pa.float64()),
        ("features", pa.list_(pa.float32())),
        ("arousal", pa.float32()),
        ("valence", pa.float32()),
    ]
    if metadata and metadata.get(f"{META_PREFIX}ratings"):
        fields.append(("ratings", pa.list_(pa.float32())))
    return pa.schema(fields, metadata=metadata)


def rating_names(corpus: Corpus) -> list[str]:
    """The per-rater rating tracks of a corpus ("<dimension>/<rater>"), in column order."""
    raw = corpus.metadata.get("ratings")
    return list(json.loads(raw)) if raw else []


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
        names = json.loads(schema.metadata[f"{META_PREFIX}ratings".encode()])
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


def dataset_metadata(corpus: Corpus, chash: str, layout: str, source: str) -> dict[str, str]:
    """The ``affect.*`` keys of a dataset (the table's description and each file's schema metadata): feature sets
    (with their ``set`` and ``dimension`` where the source keeps a version per affect dimension), the source's
    metadata (``pooled``, ``source_format``) and the per-rater tracks."""
    sets = [{k: v for k, v in s.items() if k != "names"} for s in set_ranges(corpus)]
    extra = {f"{META_PREFIX}{k}": corpus.metadata[k] for k in SOURCE_METADATA if k in corpus.metadata}
    if rating_names(corpus):
        extra[f"{META_PREFIX}ratings"] = json.dumps(rating_names(corpus))
    return {
        **extra,
        "affect.format": FORMAT,
        "affect.kind": "dataset",
        "affect.feature_set": corpus.feature_set,
        "affect.feature_sets": json.dumps(sets),
        "affect.feature_names": json.dumps(list(corpus.feature_names)),
        "affect.feature_dim": str(corpus.feature_dim),
        "affect.fps": repr(float(corpus.fps)),
        "affect.source": storage.redact(source),
        "affect.layout": layout,
        "affect.header_hash": chash,
    }


def _check_destination(loc: storage.Location) -> None:
    if storage.exists(loc.fs, loc.path) and not storage.is_dir(loc.fs, loc.path):
        raise AffectError(f"{loc.display()}: exists and is a file; expected a dataset directory (or a new URL)")
    if delta.is_table(loc):
        return
    if legacy.is_legacy(loc):
        raise AffectError(
            f"{loc.display()}: holds a dataset in the earlier per-video layout ({legacy.FORMAT}); convert it first "
            f"with `affect migrate {loc.display()}`"
        )
    # split=... folders without a log are a crashed first ingest's uncommitted files: an ingest may write here
    entries = [name for name, _ in storage.list_dir(loc.fs, loc.path) if not name.startswith((".", "split="))]
    if entries:
        raise AffectError(
            f"{loc.display()}: directory holds {entries[0]!r} and is not an affect dataset (no _delta_log/); "
            "expected an empty directory, a new URL or an existing dataset"
        )


def write_videos(
    videos: Iterable[Video] | Sequence[Video],
    dataset_url: str,
    *,
    metadata: dict[str, str],
    storage_options: dict[str, Any] | None = None,
    sources: dict[str, str] | None = None,
    target_file_bytes: int = delta.DEFAULT_TARGET_FILE_BYTES,
    row_group_rows: int = delta.ROW_GROUP_ROWS,
    video_hashes: dict[str, str] | None = None,
    splits: dict[str, str] | None = None,
    load: Any = None,
    check: bool = True,
) -> tuple[str, str, bool, int, int]:
    """Write ``videos`` as the new content of the dataset: a new version holding exactly these videos.

    Only videos whose hash differs from the latest version's copy (or that are new) are written, together with the
    other videos of each file that held an old copy; removed videos disappear with their files. ``video_hashes``
    ({video id: hash}) lets a caller that knows a video is unchanged skip reading it: ``load(video_id)`` is then
    called only for videos that must be written, and ``videos`` may be the ids' Video objects or None.
    Returns (version, content hash, unchanged, videos written, files written)."""
    loc = storage.resolve(dataset_url, storage_options)
    if check:
        _check_destination(loc)
    given = {v.video_id: v for v in videos} if videos is not None else {}
    hashes = dict(video_hashes or {})
    for video_id, video in given.items():
        hashes.setdefault(video_id, video_hash(video))
    splits = {**(splits or {}), **{v.video_id: v.split for v in given.values()}}
    if load is None:

        def load(video_id: str) -> Video:
            return given[video_id]

    for attempt in range(COMMIT_ATTEMPTS):
        snap = delta.snapshot(loc)
        try:
            return _write_once(
                loc, snap, hashes, splits, load, metadata, sources or {}, target_file_bytes, row_group_rows
            )
        except delta.CommitConflict:
            if attempt == COMMIT_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _write_once(
    loc: storage.Location,
    snap: delta.Snapshot | None,
    hashes: dict[str, str],
    splits: dict[str, str],
    load: Any,
    metadata: dict[str, str],
    sources: dict[str, str],
    target_file_bytes: int,
    row_group_rows: int,
) -> tuple[str, str, bool, int, int]:
    header = metadata["affect.header_hash"]
    same_header = snap is not None and snap.metadata.get("affect.header_hash") == header
    held = snap if (snap is not None and same_header) else None
    order = sorted(hashes, key=lambda v: video_sort_key(splits[v], v))  # the one sort: ids only

    def content() -> str:
        return combined_hash(header, ((splits[v], v, hashes[v]) for v in order), ordered=True)

    changed, deleted = order, []
    if held is not None:
        held_hashes, held_splits = held.column_map("hash"), held.column_map("split")
        changed = [v for v in order if held_hashes.get(v) != hashes[v] or held_splits.get(v) != splits[v]]
        deleted = [v for v in held_hashes if v not in hashes]
        del held_hashes, held_splits
        if not changed and not deleted:
            return str(held.version), content(), True, 0, 0
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
    try:
        # the changed videos (read now) and the carried ones (copied from the files being replaced), merged in order
        incoming = ((video_sort_key(splits[v], v), v, None) for v in changed)
        copied = ((_entry_key(e), e, t) for e, t in delta.iter_entry_tables(loc, carried))
        for _, item, table in heapq.merge(incoming, copied, key=lambda t: t[0]):
            if table is not None:
                added += writer.add(table.replace_schema_metadata(metadata), _copy_entry(item))
                continue
            video = load(item)
            entry = video_entry(video, source=sources.get(video.video_id, ""))
            if entry.hash != hashes[video.video_id]:
                hashes[video.video_id] = entry.hash
            added += writer.add(video_table(video, schema), entry)
        added += writer.close()
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
        if storage.is_store_error(exc) and not isinstance(exc, AffectError):
            raise AffectError(
                f"{loc.display()}: writing a new version failed ({type(exc).__name__}: "
                f"{storage.redact(str(exc))[:200]}); nothing was published"
            ) from None
        raise
    written = sum(f.video_count for f in added)
    return str(version), content(), False, written, len(added)


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
    dataset_url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    layout: str = "",
    source: str = "",
    progress: bool = True,
    target_file_bytes: int = delta.DEFAULT_TARGET_FILE_BYTES,
    row_group_rows: int = delta.ROW_GROUP_ROWS,
) -> tuple[str, str, bool]:
    """Write ``corpus`` as a new dataset version. Returns (version, content hash, unchanged)."""
    version, chash, unchanged, _, _ = _write_corpus(
        corpus,
        dataset_url,
        storage_options=storage_options,
        layout=layout,
        source=source,
        target_file_bytes=target_file_bytes,
        row_group_rows=row_group_rows,
    )
    return version, chash, unchanged


def _write_corpus(
    corpus: Corpus,
    dataset_url: str,
    *,
    storage_options: dict[str, Any] | None,
    layout: str,
    source: str,
    target_file_bytes: int,
    row_group_rows: int,
    sources: dict[str, str] | None = None,
) -> tuple[str, str, bool, int, int]:
    header = header_hash(corpus.feature_names, set_ranges(corpus), corpus.fps, rating_names(corpus))
    metadata = dataset_metadata(corpus, header, layout or corpus.metadata.get("layout", ""), source or corpus.source)
    return write_videos(
        corpus.videos,
        dataset_url,
        metadata=metadata,
        storage_options=storage_options,
        target_file_bytes=target_file_bytes,
        row_group_rows=row_group_rows,
        sources=sources,
    )


# ---------------------------------------------------------------------------------------------------------- ingest
# Single-process ingest keeps the videos it read last up to this many bytes: a small corpus is read once (checked,
# then written from memory), a large one is read again, video by video, as it is written.
READ_CACHE_BYTES = 256 * 2**20


def read_summary(request: sv.SourceRequest, item: sv.SourceVideoFiles) -> tuple[sv.VideoSummary, Video]:
    """Read and validate one video of a source: (its summary with its content hash, the video). What a Ray task of
    parallel ingest runs."""
    read = request.read(item)
    return read.summary(video_hash(read.video)), read.video


def reread_video(request: sv.SourceRequest, item: sv.SourceVideoFiles, expected: str | None) -> Video:
    """Read a video again to write it; AffectError when its content hash is no longer ``expected`` (its files changed
    during the ingest: what was checked would not be what is written)."""
    video = request.read(item).video
    if expected is not None and video_hash(video) != expected:
        raise AffectError(
            f"{request.where}: video {item.video_id!r} changed while it was being ingested; expected its files to "
            "stay as they were read: run the ingest again"
        )
    return video


class VideoReader(Protocol):
    """How :func:`ingest_by_video` reads a per-video source: in this process (:class:`InProcessReader`) or with Ray
    tasks (``tuning.ingest``). ``read`` reads and checks the videos, yielding each one's summary as it is done, in
    any order; ``load`` gives one of them to be written (reading it again where it is no longer held)."""

    def read(self, items: Sequence[sv.SourceVideoFiles]) -> Iterator[sv.VideoSummary]: ...

    def load(self, item: sv.SourceVideoFiles) -> Video: ...


class InProcessReader:
    """Reads videos in this process, one at a time: each is read, hashed and checked, then dropped, except the most
    recently read up to ``cache_bytes`` (default :data:`READ_CACHE_BYTES`), which ``load`` hands over without reading
    them again. Memory holds the cache and at most two videos besides, whatever the corpus."""

    def __init__(self, request: sv.SourceRequest, *, cache_bytes: int | None = None) -> None:
        self.request = request
        self.cache_bytes = READ_CACHE_BYTES if cache_bytes is None else cache_bytes
        self._cache: dict[str, tuple[Video, int]] = {}  # oldest first
        self._cached_bytes = 0
        self._hashes: dict[str, str] = {}

    def read(self, items: Sequence[sv.SourceVideoFiles]) -> Iterator[sv.VideoSummary]:
        for item in items:
            summary, video = read_summary(self.request, item)
            self._hashes[item.video_id] = summary.hash
            self._keep(video)
            del video  # not held while the caller works on the summary
            yield summary

    def load(self, item: sv.SourceVideoFiles) -> Video:
        held = self._cache.pop(item.video_id, None)
        if held is None:
            return reread_video(self.request, item, self._hashes.get(item.video_id))
        self._cached_bytes -= held[1]
        return held[0]

    def _keep(self, video: Video) -> None:
        size = _video_bytes(video)
        if size > self.cache_bytes:
            return
        while self._cache and self._cached_bytes + size > self.cache_bytes:
            _, dropped = self._cache.pop(next(iter(self._cache)))
            self._cached_bytes -= dropped
        self._cache[video.video_id] = (video, size)
        self._cached_bytes += size


def _video_bytes(video: Video) -> int:
    arrays = [video.features, video.time_s, video.arousal, video.valence, *(video.ratings or {}).values()]
    return sum(int(np.asarray(a).nbytes) for a in arrays if a is not None)


@dataclass
class _Tally:
    """What ingest keeps of the videos it read: hash, split and frames of each; the corpus-wide parts (header, source
    metadata, rater tracks, notes, bytes read) as running aggregates, the header checked as each video arrives."""

    where: str
    header: sv.CorpusHeader = field(default_factory=sv.CorpusHeader)
    hashes: dict[str, str] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    source_bytes: int = 0
    ratings: set[str] = field(default_factory=set)
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, summary: sv.VideoSummary) -> None:
        """Count one video in; AffectError when it disagrees with the videos before it."""
        self.header.check(summary.video_id, summary.feature_names, summary.feature_sets, summary.fps, self.where)
        self.hashes[summary.video_id] = summary.hash
        self.splits[summary.video_id] = summary.split
        self.frames[summary.video_id] = summary.frames
        self.source_bytes += summary.source_bytes
        self.ratings.update(summary.ratings)
        self.metadata.update(summary.metadata)
        self.notes += [note for note in summary.notes if note not in self.notes]

    def header_corpus(self, ratings: Iterable[str] = ()) -> Corpus:
        """A Corpus without videos carrying the header of those read (and ``ratings``, tracks of videos not read)."""
        sets = self.header.feature_sets or []
        metadata = {"feature_sets": json.dumps(sets), **self.metadata}
        raters = sorted(self.ratings.union(ratings))
        if raters:
            metadata["ratings"] = json.dumps(raters)
        label = "+".join(dict.fromkeys(s.get("set", s["name"]) for s in sets)) or "features"
        names = list(self.header.feature_names or [])
        return Corpus([], names, float(self.header.fps or 0.0), feature_set=label, metadata=metadata)


@dataclass
class VideoIngest:
    """One ingest of a per-video source (:func:`ingest_by_video`), step by step: :meth:`start` lists the source and
    compares it with the latest version (``unchanged``: videos whose stamp the version records, or its stamp cache
    vouches for, with the same split); :meth:`read` reads and checks the others; :meth:`write` writes what changed
    and updates the stamp cache."""

    request: sv.SourceRequest
    dataset_url: str
    storage_options: dict[str, Any] | None
    videos: list[sv.SourceVideoFiles]  # the source's, in split and natural id order
    stamps: dict[str, str]
    snapshot: delta.Snapshot | None
    held: dict[str, dict[str, Any]]  # "hash", "split", "frames" -> {video id: value} of the latest version
    cache: dict[str, tuple[str, str]]  # the stamp cache as read
    unchanged: set[str]
    tally: _Tally
    started: float
    complete: bool = False  # every video that needs it was read and checked

    @classmethod
    def start(cls, request: sv.SourceRequest, dataset_url: str, storage_options: dict[str, Any] | None) -> VideoIngest:
        """List the source (nothing is read but its partition table) and find the videos the latest version holds
        as they are."""
        started = time.perf_counter()
        videos = sv.list_source_videos(request.root, request.layout, request.storage_options)
        stamps = {item.video_id: request.stamp(item) for item in videos}
        loc = storage.resolve(dataset_url, storage_options)
        snap = delta.snapshot(loc) if delta.is_table(loc) else None
        held = {column: snap.column_map(column) if snap else {} for column in ("source", "hash", "split", "frames")}
        cache = sv.read_stamp_cache(loc) if snap else {}
        recorded = sv.recorded_stamps(held.pop("source"), held["hash"], cache)
        unchanged = {
            item.video_id
            for item in videos
            if recorded.get(item.video_id) == stamps[item.video_id] and held["split"].get(item.video_id) == item.split
        }
        where = storage.resolve(request.root, request.storage_options).display()
        return cls(
            request, dataset_url, storage_options, videos, stamps, snap, held, cache, unchanged, _Tally(where), started
        )

    @property
    def up_to_date(self) -> bool:
        """Whether the latest version holds exactly the source's videos, each as its stamp says: nothing to read."""
        count = len(self.videos)
        return self.snapshot is not None and len(self.unchanged) == count == self.snapshot.video_count

    def read(self, reader: VideoReader) -> None:
        """Read and check every video not known unchanged; then every video, when the header they give is not the
        latest version's (every video is rewritten then, so every one must agree with it)."""
        if not self.up_to_date:
            self._read(reader, [item for item in self.videos if item.video_id not in self.unchanged])
            if self.snapshot is not None and self.tally.hashes and not self._same_header(self._metadata()):
                self._read(reader, [item for item in self.videos if item.video_id in self.unchanged])
                self.unchanged = set()
        self.complete = True

    def _same_header(self, metadata: dict[str, str]) -> bool:
        """Whether ``metadata`` has the latest version's header (feature names and sets, fps, rater tracks)."""
        key = f"{META_PREFIX}header_hash"
        return self.snapshot is not None and self.snapshot.metadata.get(key) == metadata[key]

    def _read(self, reader: VideoReader, items: list[sv.SourceVideoFiles]) -> None:
        if items:
            for summary in reader.read(items):
                self.tally.add(summary)

    def _metadata(self) -> dict[str, str]:
        """The new version's metadata: the header of the videos read (with the latest version's rater tracks where
        videos were not read: theirs are among them); the latest version's when none was read (only deletions)."""
        if not self.tally.hashes:
            return {str(k): str(v) for k, v in (self.snapshot.metadata if self.snapshot else {}).items()}
        kept = self.snapshot.metadata.get(f"{META_PREFIX}ratings") if self.snapshot and self.unchanged else None
        corpus = self.tally.header_corpus(json.loads(kept) if kept else ())
        header = header_hash(corpus.feature_names, set_ranges(corpus), corpus.fps, rating_names(corpus))
        return dataset_metadata(corpus, header, self.request.layout, self.request.root)

    def write(self, reader: VideoReader, *, target_file_bytes: int, row_group_rows: int) -> IngestResult:
        """Write the videos whose content changed (``reader.load`` gives each) as a new version, or nothing when
        none did; then keep the stamps of touched but unchanged videos in the stamp cache."""
        if self.up_to_date:
            assert self.snapshot is not None
            return self._result(str(self.snapshot.version), self._latest_content_hash(), True)
        metadata = self._metadata()
        hashes = {video_id: self.held["hash"][video_id] for video_id in self.unchanged}
        hashes.update(self.tally.hashes)
        splits = {item.video_id: item.split for item in self.videos}
        splits.update(self.tally.splits)
        items = {item.video_id: item for item in self.videos}
        version, chash, same, written, files = write_videos(
            [],
            self.dataset_url,
            metadata=metadata,
            storage_options=self.storage_options,
            sources={video_id: self.stamps[video_id] for video_id in self.tally.hashes},
            video_hashes=hashes,
            splits=splits,
            load=lambda video_id: reader.load(items[video_id]),
            target_file_bytes=target_file_bytes,
            row_group_rows=row_group_rows,
        )
        self._save_stamps(self._same_header(metadata))
        return self._result(version, chash, same, written, files)

    def _save_stamps(self, same_header: bool) -> None:
        """Keep in the stamp cache the stamp of every video read whose content the version already held (it was not
        written, so the version still records its old stamp), and the entries that vouched for videos not read."""
        held_hash, held_split = self.held["hash"], self.held["split"]
        entries = {
            video_id: entry
            for video_id, entry in self.cache.items()
            if video_id in self.unchanged and entry == (self.stamps[video_id], held_hash.get(video_id))
        }
        if same_header:
            entries.update(
                (video_id, (self.stamps[video_id], value))
                for video_id, value in self.tally.hashes.items()
                if held_hash.get(video_id) == value and held_split.get(video_id) == self.tally.splits[video_id]
            )
        if entries != self.cache:
            sv.write_stamp_cache(storage.resolve(self.dataset_url, self.storage_options), entries)

    def _latest_content_hash(self) -> str:
        assert self.snapshot is not None
        header = self.snapshot.metadata.get(f"{META_PREFIX}header_hash", "")
        videos = ((e.split, e.video_id, e.hash) for e in self.snapshot.entries())
        return combined_hash(header, videos, ordered=True)

    def _result(self, version: str, chash: str, unchanged: bool, written: int = 0, files: int = 0) -> IngestResult:
        seconds = time.perf_counter() - self.started
        source_bytes = self.tally.source_bytes
        rows = sum(self.tally.frames.values()) + sum(self.held["frames"][v] for v in self.unchanged)
        return IngestResult(
            dataset_url=storage.redact(self.dataset_url),
            version=version,
            content_hash=chash,
            unchanged=unchanged,
            rows=int(rows),
            videos=len(self.videos),
            seconds=seconds,
            source_bytes=source_bytes,
            videos_written=written,
            files_written=files,
            notes=list(self.tally.notes),
        )


def ingest_by_video(
    request: sv.SourceRequest,
    dataset_url: str,
    *,
    reader: VideoReader,
    storage_options: dict[str, Any] | None = None,
    target_file_bytes: int = delta.DEFAULT_TARGET_FILE_BYTES,
    row_group_rows: int = delta.ROW_GROUP_ROWS,
) -> IngestResult:
    """Ingest a per-video source (:func:`affect_core.data.source_videos.splittable`) video by video: list it, read
    with ``reader`` only the videos whose stamps the latest version (or its stamp cache) does not vouch for, check
    them against each other, write those whose content changed in one commit. A no-op re-ingest reads no file; a
    touched but unchanged file is read once, then vouched for by the stamp cache. Raises AffectError on bad input
    (nothing is written)."""
    job = VideoIngest.start(request, dataset_url, storage_options)
    job.read(reader)
    return job.write(reader, target_file_bytes=target_file_bytes, row_group_rows=row_group_rows)


def ingest(
    source_root: str,
    dataset_url: str,
    *,
    layout: str,
    feature_set: str | Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    source_storage_options: dict[str, Any] | None = None,
    progress: bool = True,
    fps: float | None = None,
    target_file_bytes: int = delta.DEFAULT_TARGET_FILE_BYTES,
    row_group_rows: int = delta.ROW_GROUP_ROWS,
    min_face_confidence: float = ReadOptions.min_face_confidence,
) -> IngestResult:
    """Read and validate ``source_root`` (a layout of :func:`affect_core.data.readers.read_source`), then write it
    to ``dataset_url`` as a new dataset version, or do nothing if the latest version holds the same videos.

    A source with a file per video is read video by video in this process (:func:`ingest_by_video` with an
    :class:`InProcessReader`): memory does not grow with the corpus. A source holding every video in one file, or one
    whose videos disagree or hold bad input, is read whole (:func:`affect_core.data.readers.read_source`), which
    names the problem.

    storage_options apply to the dataset URL (and to the source when ``source_storage_options`` is None).
    Raises AffectError on bad input (nothing is written) or when the destination cannot take the dataset."""
    started = time.perf_counter()
    source_options = source_storage_options if source_storage_options is not None else storage_options
    request = sv.SourceRequest(source_root, layout, feature_set, source_options, fps, min_face_confidence)
    sizes = {"target_file_bytes": target_file_bytes, "row_group_rows": row_group_rows}
    stamps: dict[str, str] = {}
    if sv.splittable(source_root, layout, source_options):
        reader = InProcessReader(request)
        job = _read_by_video(request, dataset_url, storage_options, reader)
        if job is not None and job.complete:
            return job.write(reader, **sizes)
        stamps = job.stamps if job is not None else {}
        del reader, job  # what they hold is not needed by the whole-corpus read
    return _ingest_whole(request, dataset_url, storage_options, stamps, started, **sizes)


def _read_by_video(
    request: sv.SourceRequest, dataset_url: str, storage_options: dict[str, Any] | None, reader: InProcessReader
) -> VideoIngest | None:
    """A per-video ingest, read and checked (``complete``); not complete, or None when the source could not even be
    listed, where it met bad input (videos that disagree, a bad file): the whole-corpus reader then names the problem
    as it always has, its checks across the whole corpus first."""
    try:
        job = VideoIngest.start(request, dataset_url, storage_options)
    except AffectError:
        return None
    try:
        job.read(reader)
    except AffectError:
        pass
    return job


def _ingest_whole(
    request: sv.SourceRequest,
    dataset_url: str,
    storage_options: dict[str, Any] | None,
    stamps: dict[str, str],
    started: float,
    *,
    target_file_bytes: int,
    row_group_rows: int,
) -> IngestResult:
    """Ingest the corpus read whole into memory (:func:`affect_core.data.readers.read_source`), recording ``stamps``
    as the videos' source stamps."""
    corpus = read_source(
        request.root,
        request.layout,
        feature_set=request.feature_set,
        storage_options=request.storage_options,
        fps=request.fps,
        min_face_confidence=request.min_face_confidence,
    )
    version, chash, unchanged, written, files = _write_corpus(
        corpus,
        dataset_url,
        storage_options=storage_options,
        layout=request.layout,
        source=request.root,
        target_file_bytes=target_file_bytes,
        row_group_rows=row_group_rows,
        sources=stamps,
    )
    seconds = time.perf_counter() - started
    source_bytes = int(corpus.metadata.get("source_bytes", "0"))
    return IngestResult(
        dataset_url=storage.redact(dataset_url),
        version=version,
        content_hash=chash,
        unchanged=unchanged,
        rows=int(sum(v.num_frames for v in corpus.videos)),
        videos=len(corpus.videos),
        seconds=seconds,
        source_bytes=source_bytes,
        videos_written=written,
        files_written=files,
        notes=json.loads(corpus.metadata.get("notes", "[]")),
    )


def migrate(
    source_url: str,
    dataset_url: str | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    keep_old: bool = False,
    target_file_bytes: int = delta.DEFAULT_TARGET_FILE_BYTES,
    row_group_rows: int = delta.ROW_GROUP_ROWS,
) -> IngestResult:
    """Convert the latest version of a dataset in the earlier per-video layout into a table at ``dataset_url``
    (default: in place, after which the earlier layout's files are deleted unless ``keep_old``)."""
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
    names = json.loads(metadata.get("affect.feature_names", "[]"))
    sets = json.loads(metadata.get("affect.feature_sets", "[]"))
    fps = float(metadata.get("affect.fps", "nan"))
    metadata["affect.format"] = FORMAT
    metadata["affect.header_hash"] = header_hash(names, sets, fps)
    metadata.pop("affect.content_hash", None)
    ranges = [(0, len(names))]
    where = source.display()

    def videos() -> Iterator[Video]:
        for _, table in legacy.iter_video_tables(source, manifest):
            yield _to_video(table, ranges, fps, where)

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
            return _to_video(pq.read_table(handle), ranges, fps, where)

    if target.path == source.path:
        _check_table_or_empty_besides_legacy(target)
    else:
        _check_destination(target)
    version, chash, _, written, files = write_videos(
        [],
        target.url,
        metadata=metadata,
        storage_options=storage_options,
        video_hashes=hashes,
        splits=splits,
        load=load,
        target_file_bytes=target_file_bytes,
        row_group_rows=row_group_rows,
        check=False,
    )
    if target.path == source.path and not keep_old:
        legacy.remove(source, manifest)
    return IngestResult(
        dataset_url=target.display(),
        version=version,
        content_hash=chash,
        unchanged=False,
        rows=int(manifest.get("rows", 0)),
        videos=len(hashes),
        seconds=time.perf_counter() - started,
        source_bytes=int(sum(int(e.get("bytes", 0)) for e in manifest["files"])),
        videos_written=written,
        files_written=files,
    )


def _check_table_or_empty_besides_legacy(loc: storage.Location) -> None:
    others = [n for n, _ in storage.list_dir(loc.fs, loc.path) if n not in (legacy.MANIFESTS, "versions")]
    others = [n for n in others if not n.startswith(".")]
    if others:
        raise AffectError(f"{loc.display()}: holds {others[0]!r} besides the earlier layout; migrate to a new URL")


# --------------------------------------------------------------------------------------------------------- reading
def list_versions(dataset_url: str, *, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Readable versions of a dataset, oldest first (as strings: "0", "1", ...)."""
    url, _ = delta.parse_versioned_url(dataset_url)
    return [str(v) for v in delta.versions(storage.resolve(url, storage_options))]


@dataclass
class _Source:
    """A resolved dataset version (snapshot) or a bare Parquet features URL (snapshot None)."""

    loc: storage.Location
    snapshot: delta.Snapshot | None
    versions: list[str]


def _open(dataset_url: str, version: str | int | None, storage_options: dict[str, Any] | None) -> _Source:
    url, pinned = delta.parse_versioned_url(dataset_url)
    loc = storage.resolve(url, storage_options)
    wanted = delta.parse_version(version, loc.display())
    if pinned is not None:
        if wanted is not None and wanted != pinned:
            raise AffectError(f"{loc.display()}: version {version} given, but the URL names version {pinned}")
        wanted = pinned
    if delta.is_table(loc):
        snap = delta.snapshot(loc, wanted)
        assert snap is not None
        return _Source(loc, snap, [str(v) for v in delta.versions(loc)])
    if legacy.is_legacy(loc):
        raise AffectError(
            f"{loc.display()}: a dataset in the earlier per-video layout ({legacy.FORMAT}); convert it with "
            f"`affect migrate {loc.display()}`"
        )
    if wanted is not None:
        raise AffectError(f"{loc.display()}: no dataset versions (no _delta_log/); cannot select version {wanted}")
    if not storage.exists(loc.fs, loc.path):
        raise AffectError(f"{loc.display()}: does not exist; expected a dataset written by affect ingest")
    return _Source(loc, None, [])


def resolve_version(
    dataset_url: str, *, version: str | int | None = None, storage_options: dict[str, Any] | None = None
) -> str | None:
    """The version a read of ``dataset_url`` (``URL@VERSION`` or ``version``, else the latest) would see; None
    for a bare Parquet features URL. Pin it for every later read of one job."""
    return dataset_info(dataset_url, version=version, storage_options=storage_options).version


def _meta(manifest_or_schema: dict[str, str], key: str, default: str = "") -> str:
    return manifest_or_schema.get(META_PREFIX + key, default)


def _selected_columns(
    metadata: dict[str, str], feature_set: str | Sequence[str] | None, where: str
) -> tuple[list[tuple[int, int]], list[str], str, list[dict[str, Any]]]:
    """Column ranges, feature names and set label of the chosen feature set(s)."""
    names: list[str] = json.loads(_meta(metadata, "feature_names", "[]"))
    sets: list[dict[str, Any]] = json.loads(_meta(metadata, "feature_sets", "[]")) or [
        {"name": _meta(metadata, "feature_set", "features"), "start": 0, "stop": len(names)}
    ]
    wanted = parse_feature_sets(feature_set)
    if wanted is None:
        return (
            [(0, len(names))],
            names,
            _meta(metadata, "feature_set", "+".join(s["name"] for s in sets)),
            sets,
        )
    # A name selects the set of that name, or every per-dimension version of it ("appearance" selects
    # "arousal/appearance" and "valence/appearance"), in the dataset's order.
    available = list(dict.fromkeys([*(s.get("set") or s["name"] for s in sets), *(s["name"] for s in sets)]))
    ranges, chosen_names, chosen_sets, start = [], [], [], 0
    for name in wanted:
        matching = [s for s in sets if name in (s["name"], s.get("set"))]
        if not matching:
            raise AffectError(f"{where}: unknown feature set {name!r}; available: {', '.join(available)}")
        for s in matching:
            width = int(s["stop"]) - int(s["start"])
            ranges.append((int(s["start"]), int(s["stop"])))
            chosen_names += names[int(s["start"]) : int(s["stop"])]
            extra = {k: v for k, v in s.items() if k in ("set", "dimension")}
            chosen_sets.append({"name": s["name"], "start": start, "stop": start + width, **extra})
            start += width
    prefix = [f"{s['name']}:" for s in chosen_sets]
    if all(any(n.startswith(p) for p in prefix) for n in chosen_names) and len(chosen_sets) == 1:
        chosen_names = [n.split(":", 1)[1] for n in chosen_names]  # one set: its own attribute names
    return ranges, chosen_names, "+".join(wanted), chosen_sets


def selected_feature_names(metadata: dict[str, str], feature_set: str | Sequence[str], where: str) -> list[str]:
    """The feature names a read with ``feature_set`` gives (AffectError for a set the dataset does not hold)."""
    return _selected_columns(metadata, feature_set, where)[1]


def _to_video(table: pa.Table, ranges: list[tuple[int, int]], fps: float | None, where: str) -> Video:
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
    features = _feature_matrix(table, where)
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
    metadata = table.schema.metadata or {}
    if "ratings" not in table.column_names or f"{META_PREFIX}ratings".encode() not in metadata:
        return None
    names = json.loads(metadata[f"{META_PREFIX}ratings".encode()])
    matrix = table.column("ratings").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return names, matrix.astype(np.float32).reshape(-1, len(names))


def _video_ratings(names: list[str], matrix: np.ndarray) -> dict[str, np.ndarray] | None:
    """One video's rows of a rating matrix as {track: (T,)}, leaving out tracks with no rating at all."""
    ratings = {name: matrix[:, j].copy() for j, name in enumerate(names) if not np.isnan(matrix[:, j]).all()}
    return ratings or None


def _row_group_videos(
    table: pa.Table,
    picks: list[tuple[delta.VideoEntry, int, int]],
    ranges: list[tuple[int, int]],
    fps: float | None,
    where: str,
) -> Iterator[Video]:
    """The videos of one row group of a dataset table (``picks``: (entry, first row, rows) of each), converted
    column by column for the whole row group at once; each video's arrays are views of its rows (its per-rater
    ratings, copies). A video whose frames are not in order (not a file written here) goes through
    :func:`_to_video`."""
    if fps is None:
        for _, start, length in picks:
            yield _to_video(table.slice(start, length), ranges, fps, where)
        return
    frame = table.column("frame").to_numpy() if "frame" in table.column_names else table.column("time_s").to_numpy()
    backwards = np.flatnonzero(np.diff(frame) <= 0) + 1  # rows where the order breaks: only at a video's start
    features = _feature_matrix(table, where)
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
            yield _to_video(table.slice(start, length), ranges, fps, where)
            continue
        dims = {d: (v[start:stop] if valid[start:stop].any() else None) for d, (v, valid) in labels.items()}
        dims = {d: dims.get(d) for d in AFFECT_DIMENSIONS}
        video = Video(entry.video_id, entry.split, features[start:stop], time_s[start:stop], fps, **dims)
        if rated is not None:
            video.ratings = _video_ratings(rated[0], rated[1][start:stop])
        yield video


def _feature_matrix(table: pa.Table, where: str) -> np.ndarray:
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


def _snapshot_metadata(snap: delta.Snapshot) -> dict[str, str]:
    return {str(k): str(v) for k, v in snap.metadata.items()}


class DatasetReader:
    """One dataset version opened once (its log, metadata and video index read once), then read video by video as
    often as asked: what a Ray actor or a training worker holds for a whole job. ``version`` (or ``URL@VERSION``)
    pins the version; the latest is resolved here otherwise."""

    def __init__(
        self,
        dataset_url: str,
        *,
        version: str | int | None = None,
        feature_set: str | Sequence[str] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self._load(_open(dataset_url, version, storage_options), feature_set)

    @classmethod
    def _of(cls, source: _Source, feature_set: str | Sequence[str] | None) -> DatasetReader:
        reader = cls.__new__(cls)
        reader._load(source, feature_set)
        return reader

    def _load(self, source: _Source, feature_set: str | Sequence[str] | None) -> None:
        if source.snapshot is None:
            raise AffectError(f"{source.loc.display()}: not a dataset table (no _delta_log/)")
        self.location = source.loc
        self.snapshot = source.snapshot
        self.version = str(source.snapshot.version)
        metadata = _snapshot_metadata(source.snapshot)
        self.ranges, self.feature_names, _, _ = _selected_columns(metadata, feature_set, source.loc.display())
        self.fps = float(_meta(metadata, "fps"))

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
            yield from _row_group_videos(table, picks, self.ranges, self.fps, self.location.display(picks[0][0].path))


def iter_videos(
    dataset_url: str,
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
    source = _open(dataset_url, version, storage_options)
    if source.snapshot is None:
        yield from _iter_bare(source.loc, splits, feature_set, video_ids)
        return
    url, _ = delta.parse_versioned_url(dataset_url)
    reader = DatasetReader(
        url, version=source.snapshot.version, feature_set=feature_set, storage_options=storage_options
    )
    yield from reader.videos(splits=splits, video_ids=video_ids, shard=shard)


def video_parts(
    dataset_url: str,
    *,
    splits: Sequence[str] | None = None,
    version: str | int | None = None,
    storage_options: dict[str, Any] | None = None,
    parts: int | None = None,
) -> list[list[str]]:
    """The video ids of a dataset version cut into ``parts`` lists of about equal frames (default: one per data
    file), each in reading order: what a pool of workers (Ray Data tasks, training workers) takes one list each of,
    passing it to :func:`iter_videos` as ``video_ids`` with the same pinned ``version``."""
    source = _open(dataset_url, version, storage_options)
    if source.snapshot is None:
        info = _bare_info(source.loc)
        ids = [v for s, vs in info.videos.items() if splits is None or s in splits for v in vs]
        return [ids] if ids else []
    snap = source.snapshot
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
    if metadata.get("affect.feature_names"):
        ranges, _, _, _ = _selected_columns(metadata, feature_set, where)
    elif feature_set is not None:
        raise AffectError(f"{where}: no feature-set metadata; cannot select feature set {feature_set!r}")
    else:
        ranges = None
    fps = float(metadata["affect.fps"]) if metadata.get("affect.fps") else None
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
            dim = _feature_matrix(table.slice(0, 1), where).shape[1]
            yield _to_video(table, ranges or [(0, dim)], fps, where)
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
    dataset_url: str,
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
    info = dataset_info(dataset_url, version=version, storage_options=storage_options)
    if splits is not None:
        unknown = [s for s in splits if s not in info.videos]
        if unknown:
            raise AffectError(
                f"{info.url}: no split {unknown[0]!r} in version {info.version}; available: {', '.join(info.videos)}"
            )
    url, _ = delta.parse_versioned_url(dataset_url)
    videos = list(
        iter_videos(
            url,
            splits=splits,
            feature_set=feature_set,
            version=info.version,
            storage_options=storage_options,
            video_ids=video_ids,
        )
    )
    _, names, label, sets = _selected_columns(info.metadata, feature_set, info.url)
    metadata = dict(info.metadata)
    metadata["feature_sets"] = json.dumps(sets)
    metadata["version"] = info.version or ""
    for key in (*SOURCE_METADATA, "ratings"):
        if META_PREFIX + key in info.metadata:
            metadata[key] = info.metadata[META_PREFIX + key]
    if videos and not names:
        names = [f"f{i}" for i in range(videos[0].features.shape[1])]
    fps = info.fps if info.fps == info.fps else (videos[0].fps if videos else float("nan"))
    return Corpus(videos, names, fps, feature_set=label, source=info.source, metadata=metadata)


def dataset_info(
    dataset_url: str, *, version: str | int | None = None, storage_options: dict[str, Any] | None = None
) -> DatasetInfo:
    """Metadata of a dataset version (latest by default): versions, fps, feature sets, video ids per split,
    files and bytes."""
    source = _open(dataset_url, version, storage_options)
    if source.snapshot is None:
        return _bare_info(source.loc)
    snap = source.snapshot
    metadata = _snapshot_metadata(snap)
    videos: dict[str, list[str]] = {}
    rows = 0

    def stream() -> Iterator[tuple[str, str, str]]:
        nonlocal rows
        for entry in snap.entries():
            videos.setdefault(entry.split, []).append(entry.video_id)
            rows += entry.frames
            yield entry.split, entry.video_id, entry.hash

    sets = json.loads(_meta(metadata, "feature_sets", "[]"))
    header = _meta(metadata, "header_hash")
    content = combined_hash(header, stream(), ordered=True)
    return DatasetInfo(
        url=source.loc.display(),
        version=str(snap.version),
        versions=source.versions,
        content_hash=content,
        created_at="",
        fps=float(_meta(metadata, "fps", "nan")),
        feature_set=_meta(metadata, "feature_set"),
        feature_sets={s["name"]: (int(s["start"]), int(s["stop"])) for s in sets},
        feature_names=json.loads(_meta(metadata, "feature_names", "[]")),
        source=_meta(metadata, "source"),
        layout=_meta(metadata, "layout"),
        rows=int(rows),
        videos=videos,
        metadata=metadata,
        files=len(snap.files),
        bytes=int(sum(f.size for f in snap.files)),
    )


def table_summary(
    url: str, *, version: str | int | None = None, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What ``affect info URL --json`` prints for a dataset or predictions table: version, versions, videos
    [{video_id, split, frames, frames_without_face}], files, bytes, feature_sets, fps (None where the table keeps no
    frame rate) and the table's metadata.

    ``videos`` is an iterator, in split and natural id order, read once: a table of 10^6 videos is never a list of
    10^6 dicts (``affect info`` prints them as they come)."""
    source = _open(url, version, storage_options)
    if source.snapshot is None:
        raise AffectError(f"{source.loc.display()}: not a table (no _delta_log/); expected a dataset or predictions")
    snap = source.snapshot
    metadata = _snapshot_metadata(snap)
    sets = json.loads(_meta(metadata, "feature_sets", "[]"))
    fps = float(_meta(metadata, "fps", "nan"))
    return {
        "url": source.loc.display(),
        "kind": metadata.get("affect.kind", "dataset"),
        "version": snap.version,
        "versions": [int(v) for v in source.versions],
        "videos": (
            {
                "video_id": e.video_id,
                "split": e.split,
                "frames": e.frames,
                "frames_without_face": e.frames_without_face,
            }
            for e in snap.entries()
        ),
        "files": len(snap.files),
        "bytes": int(sum(f.size for f in snap.files)),
        "feature_sets": {s["name"]: int(s["stop"]) - int(s["start"]) for s in sets},
        "fps": fps if math.isfinite(fps) else None,  # None: a predictions table keeps none
        "metadata": {k: v for k, v in metadata.items() if k not in ("affect.feature_names",)},
    }


def iter_table_rows(
    url: str,
    *,
    version: str | int | None = None,
    storage_options: dict[str, Any] | None = None,
    video_ids: Sequence[str] | None = None,
) -> Iterator[tuple[str, pa.Table]]:
    """(video id, its rows) of a dataset or predictions table version, one video at a time in split and natural id
    order (bounded memory): what ``affect export`` writes."""
    source = _open(url, version, storage_options)
    if source.snapshot is None:
        raise AffectError(f"{source.loc.display()}: not a table (no _delta_log/); expected a dataset or predictions")
    for entry, table in delta.iter_entry_tables(source.loc, source.snapshot.entries(video_ids=video_ids)):
        yield entry.video_id, table


def _bare_info(loc: storage.Location) -> DatasetInfo:
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
    sets = json.loads(metadata.get("affect.feature_sets", "[]"))
    return DatasetInfo(
        url=where,
        version=None,
        versions=[],
        content_hash=metadata.get("affect.content_hash", ""),
        created_at="",
        fps=float(metadata.get("affect.fps", "nan")),
        feature_set=metadata.get("affect.feature_set", ""),
        feature_sets={s["name"]: (int(s["start"]), int(s["stop"])) for s in sets},
        feature_names=json.loads(metadata.get("affect.feature_names", "[]")),
        source=metadata.get("affect.source", ""),
        layout=metadata.get("affect.layout", ""),
        rows=table.num_rows,
        videos=videos,
        metadata=metadata,
    )
