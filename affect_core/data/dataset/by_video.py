"""Ingest video by video, in bounded memory: :class:`VideoIngest` lists a source once (a :class:`SourcePlan`: its
videos, each one's stamp, the reader that reads them), compares it with the latest version, reads and checks only
what the version does not vouch for, and writes what changed in one commit. The reader is pluggable
(:class:`VideoReader`): :class:`InProcessReader` reads in this process, ``tuning.ingest.RayReader`` in Ray tasks, and
a layout provided above data (the video layout) brings its own."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from affect_core import storage
from affect_core.data import delta, keys
from affect_core.data import source_videos as sv
from affect_core.data.dataset.format import dataset_metadata
from affect_core.data.dataset.hashing import combined_hash, corpus_header_hash, video_hash
from affect_core.data.dataset.result import IngestResult
from affect_core.data.dataset.write import Attachments, Written, store_attachments, write_videos
from affect_core.data.records import Corpus, Video
from affect_core.errors import AffectError

# Single-process ingest keeps the videos it read last up to this many bytes: a small corpus is read once (checked,
# then written from memory), a large one is read again, video by video, as it is written.
READ_CACHE_BYTES = 256 * 2**20


def read_summary(request: sv.SourceRequest, item: sv.SourceVideoFiles) -> tuple[sv.VideoSummary, Video]:
    """Read and validate one video of a source: (its summary with its content hash, the video). What a Ray task of
    parallel ingest runs."""
    read = request.read(item)
    return read.summary(video_hash(read.video)), read.video


def reread_video(request: sv.SourceRequest, item: sv.SourceVideoFiles, expected: str | None) -> Video:
    """Read a video again to write it; AffectError when its content hash is no longer ``expected``."""
    return check_reread(request.read(item).video, expected, request.where)


def check_reread(video: Video, expected: str | None, where: str) -> Video:
    """``video``, read again to be written; AffectError when its content hash is no longer ``expected`` (its files
    changed during the ingest: what was checked would not be what is written)."""
    if expected is not None and video_hash(video) != expected:
        raise AffectError(
            f"{where}: video {video.video_id!r} changed while it was being ingested; expected its files to "
            "stay as they were read: run the ingest again"
        )
    return video


class VideoReader(Protocol):
    """How :class:`VideoIngest` reads a source's videos: ``read`` reads and checks them, yielding each one's summary
    as it is done, in any order; ``load`` gives one of them to be written (reading it again where it is no longer
    held)."""

    def read(self, items: Sequence[sv.SourceVideoFiles]) -> Iterator[sv.VideoSummary]: ...

    def load(self, item: sv.SourceVideoFiles) -> Video: ...


class VideoCache:
    """The videos read most recently, up to ``cache_bytes`` (default :data:`READ_CACHE_BYTES`): what a reader hands
    over to be written without reading them again. A video let go of (to make room, or too large to hold) goes to
    :meth:`drop`: here nowhere (it is read again)."""

    def __init__(self, cache_bytes: int | None = None) -> None:
        self.cache_bytes = READ_CACHE_BYTES if cache_bytes is None else cache_bytes
        self._held: dict[str, tuple[Video, int]] = {}  # oldest first
        self._bytes = 0

    def keep(self, video: Video) -> None:
        size = _video_bytes(video)
        if size > self.cache_bytes:
            self.drop(video)
            return
        while self._held and self._bytes + size > self.cache_bytes:
            dropped, dropped_size = self._held.pop(next(iter(self._held)))
            self._bytes -= dropped_size
            self.drop(dropped)
        self._held[video.video_id] = (video, size)
        self._bytes += size

    def drop(self, video: Video) -> None:
        """A video let go of."""

    def take(self, video_id: str) -> Video | None:
        """The video, let go of here; None when it is not held."""
        held = self._held.pop(video_id, None)
        if held is None:
            return None
        self._bytes -= held[1]
        return held[0]


def _video_bytes(video: Video) -> int:
    arrays = [video.features, video.time_s, video.arousal, video.valence, *(video.ratings or {}).values()]
    return sum(int(np.asarray(a).nbytes) for a in arrays if a is not None)


class InProcessReader:
    """Reads videos in this process, one at a time: each is read, hashed and checked, then dropped, except those in
    its :class:`VideoCache`, which ``load`` hands over without reading them again. Memory holds the cache and at
    most two videos besides, whatever the corpus."""

    def __init__(self, request: sv.SourceRequest, *, cache_bytes: int | None = None) -> None:
        self.request = request
        self.cache = VideoCache(cache_bytes)
        self._hashes: dict[str, str] = {}

    def read(self, items: Sequence[sv.SourceVideoFiles]) -> Iterator[sv.VideoSummary]:
        for item in items:
            summary, video = read_summary(self.request, item)
            self._hashes[item.video_id] = summary.hash
            self.cache.keep(video)
            del video  # not held while the caller works on the summary
            yield summary

    def load(self, item: sv.SourceVideoFiles) -> Video:
        held = self.cache.take(item.video_id)
        if held is None:
            return reread_video(self.request, item, self._hashes.get(item.video_id))
        return held


@dataclass
class SourcePlan:
    """What an ingest reads: the source's videos (listed once, in split and natural id order), each one's stamp
    (what the dataset records, to recognise it unchanged next time), the reader that reads them and the files the
    version stores beside its table (:data:`~affect_core.data.dataset.write.Attachments`)."""

    videos: list[sv.SourceVideoFiles]
    stamps: dict[str, str]
    reader: VideoReader
    attachments: Attachments | None = None

    @classmethod
    def listed(cls, request: sv.SourceRequest, reader: VideoReader) -> SourcePlan:
        """The plan of a per-video source of a layout data reads (:func:`affect_core.data.source_videos.splittable`):
        listed with :func:`~affect_core.data.source_videos.list_source_videos`, read by ``reader``."""
        videos = sv.list_source_videos(request.location, request.layout)
        return cls(videos, {item.video_id: request.stamp(item) for item in videos}, reader)


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
    """One ingest of a source video by video, step by step: :meth:`start` compares the plan's videos with the latest
    version (``unchanged``: videos whose stamp the version records, or its stamp cache vouches for, with the same
    split); :meth:`read` reads and checks the others; :meth:`write` writes what changed and updates the stamp
    cache."""

    request: sv.SourceRequest
    dataset: storage.Location  # resolved once, where the ingest entered the library
    plan: SourcePlan
    snapshot: delta.Snapshot | None
    held: dict[str, dict[str, Any]]  # "hash", "split", "frames" -> {video id: value} of the latest version
    cache: dict[str, tuple[str, str]]  # the stamp cache as read
    unchanged: set[str]
    tally: _Tally
    started: float
    complete: bool = False  # every video that needs it was read and checked

    @classmethod
    def start(
        cls,
        request: sv.SourceRequest,
        dataset: storage.Location,
        plan: SourcePlan,
        *,
        started: float | None = None,
    ) -> VideoIngest:
        """Find the videos of ``plan`` that the latest version holds as they are (nothing of the source is read)."""
        started = time.perf_counter() if started is None else started
        loc = dataset
        snap = delta.snapshot(loc) if delta.is_table(loc) else None
        held = {column: snap.column_map(column) if snap else {} for column in ("source", "hash", "split", "frames")}
        cache = sv.read_stamp_cache(loc) if snap else {}
        recorded = sv.recorded_stamps(held.pop("source"), held["hash"], cache)
        unchanged = {
            item.video_id
            for item in plan.videos
            if recorded.get(item.video_id) == plan.stamps[item.video_id]
            and held["split"].get(item.video_id) == item.split
        }
        return cls(request, dataset, plan, snap, held, cache, unchanged, _Tally(request.where), started)

    @property
    def videos(self) -> list[sv.SourceVideoFiles]:
        return self.plan.videos

    @property
    def stamps(self) -> dict[str, str]:
        return self.plan.stamps

    @property
    def up_to_date(self) -> bool:
        """Whether the latest version holds exactly the source's videos, each as its stamp says: nothing to read."""
        count = len(self.videos)
        return self.snapshot is not None and len(self.unchanged) == count == self.snapshot.video_count

    def read(self) -> None:
        """Read and check every video not known unchanged; then every video, when the header they give is not the
        latest version's (every video is rewritten then, so every one must agree with it)."""
        if not self.up_to_date:
            self._read([item for item in self.videos if item.video_id not in self.unchanged])
            if self.snapshot is not None and self.tally.hashes and not self._same_header(self._metadata()):
                self._read([item for item in self.videos if item.video_id in self.unchanged])
                self.unchanged = set()
        self.complete = True

    def _same_header(self, metadata: dict[str, str]) -> bool:
        """Whether ``metadata`` has the latest version's header (feature names and sets, fps, rater tracks)."""
        return self.snapshot is not None and self.snapshot.metadata.get(keys.HEADER_HASH) == metadata[keys.HEADER_HASH]

    def _read(self, items: list[sv.SourceVideoFiles]) -> None:
        if items:
            for summary in self.plan.reader.read(items):
                self.tally.add(summary)

    def _metadata(self) -> dict[str, str]:
        """The new version's metadata: the header of the videos read (with the latest version's rater tracks where
        videos were not read: theirs are among them); the latest version's when none was read (only deletions)."""
        if not self.tally.hashes:
            return {str(k): str(v) for k, v in (self.snapshot.metadata if self.snapshot else {}).items()}
        kept = self.snapshot.metadata.get(keys.RATINGS) if self.snapshot and self.unchanged else None
        corpus = self.tally.header_corpus(json.loads(kept) if kept else ())
        return dataset_metadata(corpus, corpus_header_hash(corpus), self.request.layout, self.request.root)

    def write(self, *, target_file_bytes: int, row_group_rows: int) -> IngestResult:
        """Write the videos whose content changed (the reader's ``load`` gives each) as a new version, or nothing when
        none did; then keep the stamps of touched but unchanged videos in the stamp cache."""
        if self.up_to_date:
            assert self.snapshot is not None
            written = Written(str(self.snapshot.version), self._latest_content_hash(), True)
            store_attachments(self.dataset, self.plan.attachments, written.content_hash, only_missing=True)
            return self._result(written)
        metadata = self._metadata()
        hashes = {video_id: self.held["hash"][video_id] for video_id in self.unchanged}
        hashes.update(self.tally.hashes)
        splits = {item.video_id: item.split for item in self.videos}
        splits.update(self.tally.splits)
        items = {item.video_id: item for item in self.videos}
        written = write_videos(
            [],
            self.dataset,
            metadata=metadata,
            sources={video_id: self.stamps[video_id] for video_id in self.tally.hashes},
            video_hashes=hashes,
            splits=splits,
            load=lambda video_id: self.plan.reader.load(items[video_id]),
            target_file_bytes=target_file_bytes,
            row_group_rows=row_group_rows,
            attachments=self.plan.attachments,
        )
        self._save_stamps(self._same_header(metadata))
        return self._result(written)

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
            sv.write_stamp_cache(self.dataset, entries)

    def _latest_content_hash(self) -> str:
        assert self.snapshot is not None
        header = self.snapshot.metadata.get(keys.HEADER_HASH, "")
        videos = ((e.split, e.video_id, e.hash) for e in self.snapshot.entries())
        return combined_hash(header, videos, ordered=True)

    def _result(self, written: Written) -> IngestResult:
        rows = sum(self.tally.frames.values()) + sum(self.held["frames"][v] for v in self.unchanged)
        return IngestResult.of(
            self.dataset.url,
            written,
            rows=rows,
            videos=len(self.videos),
            source_bytes=self.tally.source_bytes,
            started=self.started,
            notes=self.tally.notes,
        )


def ingest_by_video(
    request: sv.SourceRequest,
    dataset_url: storage.Where,
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
    (nothing is written). ``dataset_url`` is resolved here, once, unless it is a Location already."""
    started = time.perf_counter()
    dataset = storage.resolve(dataset_url, storage_options)
    plan = SourcePlan.listed(request, reader)
    return run_plan(request, dataset, plan, started, target_file_bytes, row_group_rows)


def run_plan(
    request: sv.SourceRequest,
    dataset: storage.Location,
    plan: SourcePlan,
    started: float,
    target_file_bytes: int,
    row_group_rows: int,
) -> IngestResult:
    """Start, read and write one :class:`VideoIngest` of ``plan``."""
    job = VideoIngest.start(request, dataset, plan, started=started)
    job.read()
    return job.write(target_file_bytes=target_file_bytes, row_group_rows=row_group_rows)
