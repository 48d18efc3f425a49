"""Ingest of a source that holds every video in one table file (the parquet layout's ROOT/features.parquet, with
ROOT/labels.parquet), video by video and in bounded memory.

:func:`table_file_plan` lists the videos from the partition table (nothing else is read). :class:`TableFileReader`
then reads the file in chunks of :data:`CHUNK_ROWS` rows, in the file's own order, cuts each video's rows out as
soon as the next video begins, and validates the video alone with the parquet layout's reader (a one-video view, as
for the per-file layouts: :func:`affect_core.data.source_videos.read_source_video`). The videos read wait for the
write in a :class:`SpillingCache`: the most recent in memory, the others in a local temporary file, so memory holds a
chunk of rows, a video and the cache's memory part, whatever the corpus.

A video's rows must be contiguous in features.parquet, and labels.parquet must hold its videos in the same order (a
subsequence of it). Where they are not, or on any bad input, ingest reads the source whole instead, which names the
problem (or takes the rows in any order)."""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from affect_core import storage
from affect_core.data import source_videos as sv
from affect_core.data import tables
from affect_core.data.assemble import assemble_corpus
from affect_core.data.dataset.by_video import SourcePlan, VideoCache
from affect_core.data.dataset.hashing import video_hash
from affect_core.data.layouts.tables import parquet_table_videos
from affect_core.data.readers import check_read_options
from affect_core.data.records import AFFECT_DIMENSIONS, Video
from affect_core.data.tables import FileTable, arrow_file_table
from affect_core.data.tracks import SourceFiles, SourceRead, read_partition, video_sort_key
from affect_core.errors import AffectError

LAYOUT = "parquet"
FEATURES = "features.parquet"
LABELS = "labels.parquet"
# Rows read from the file at a time (8k rows of 100 features are 3 MB as float32, 6.5 MB converted to float64; with
# chunks of 64k rows the peak of an ingest was 100 MB higher).
CHUNK_ROWS = 8_192
# The videos read wait for the write in memory up to this many bytes; the others in a local temporary file.
MEMORY_CACHE_BYTES = 8 * 2**20


def single_table(root: storage.Where, layout: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``root`` holds every video of a parquet-layout source in one features.parquet."""
    if layout != LAYOUT:
        return False
    try:
        return storage.resolve(root, storage_options).exists(FEATURES)
    except AffectError:
        return False


def table_file_plan(request: sv.SourceRequest) -> SourcePlan:
    """The ingest plan of a single-file source: its videos from the partition table, each stamped with the table
    files' sizes and modification times (a changed file has every video read again), read by a
    :class:`TableFileReader`."""
    check_read_options(request.layout, request.min_face_confidence)
    loc = request.location
    partition, partition_where = read_partition(SourceFiles(loc), LAYOUT)
    files = {}
    for name in (FEATURES, LABELS):
        if loc.exists(name):
            info = loc.fs.info(storage.join(loc.path, name))
            files[name] = (int(info.get("size") or 0), sv.file_stamp(info))
    items = [sv.SourceVideoFiles(video_id, split, files) for video_id, split in partition.items()]
    items.sort(key=lambda item: video_sort_key(item.split, item.video_id))
    stamps = {item.video_id: request.stamp(item) for item in items}
    return SourcePlan(items, stamps, TableFileReader(request, files, set(partition), partition_where))


class TableFileReader:
    """Reads the videos of a single-file source in the file's order, a chunk of rows at a time (a
    :class:`~affect_core.data.dataset.VideoReader`)."""

    def __init__(
        self, request: sv.SourceRequest, files: dict[str, tuple[int, str]], video_ids: set[str], partition: str
    ) -> None:
        self.request = request
        self.video_ids = video_ids  # the partition's
        self.partition = partition  # where the partition table is, for messages
        self.loc = request.location
        self.sizes = {name: size for name, (size, _) in files.items()}
        self.cache = SpillingCache(MEMORY_CACHE_BYTES)

    def read(self, items: Sequence[sv.SourceVideoFiles]) -> Iterator[sv.VideoSummary]:
        wanted = {item.video_id: item for item in items}
        features = _TableFile(self.loc, FEATURES, self.sizes[FEATURES])
        labels = _TableFile(self.loc, LABELS, self.sizes[LABELS]) if LABELS in self.sizes else None
        label_runs = _Lookahead(labels.videos() if labels is not None else iter(()))
        passed: set[str] = set()
        for video_id, rows in features.videos():
            if video_id in passed:
                raise AffectError(f"{features.where}: rows of video {video_id!r} are not contiguous")
            passed.add(video_id)
            label_rows = None
            pending = label_runs.peek()  # the labels' next video: this one, a later one, or out of order
            if pending is not None and pending[0] == video_id:
                label_rows = label_runs.take()[1]
            elif pending is not None and pending[0] in passed:
                raise AffectError(f"{self.loc.display(LABELS)}: videos not in {FEATURES}'s order")
            if video_id not in self.video_ids:
                raise AffectError(f"{features.where}: video {video_id!r} is not in the partition table")
            source_bytes = features.share(rows.num_rows)
            if labels is not None and label_rows is not None:
                source_bytes += labels.share(label_rows.num_rows)
            if video_id in wanted:
                yield self._read(wanted[video_id], rows, label_rows, source_bytes)
        pending = label_runs.peek()
        if pending is not None:
            raise AffectError(f"{self.loc.display(LABELS)}: labels of video {pending[0]!r} without its features")
        missing = [video_id for video_id in wanted if video_id not in passed]
        if missing:
            raise AffectError(f"{features.where}: no rows for video {missing[0]!r}")

    def _read(
        self, item: sv.SourceVideoFiles, rows: FileTable, label_rows: FileTable | None, source_bytes: int
    ) -> sv.VideoSummary:
        """Validate one video's rows with the parquet layout's reader, as the whole file's would be."""
        where = self.loc.display()
        videos, sets = parquet_table_videos(
            rows, lambda: label_rows, self.request.feature_set, {item.video_id: item.split}, self.partition, where
        )
        corpus = assemble_corpus(SourceRead(videos, sets), source=where, layout=LAYOUT, fps=self.request.fps)
        read = sv.VideoRead(
            video=corpus.videos[0],
            feature_names=list(corpus.feature_names),
            feature_sets=json.loads(corpus.metadata["feature_sets"]),
            fps=float(corpus.fps),
            source_bytes=source_bytes,
            fingerprint=item.fingerprint,
        )
        summary = read.summary(video_hash(read.video))
        self.cache.keep(read.video)
        return summary

    def load(self, item: sv.SourceVideoFiles) -> Video:
        video = self.cache.take(item.video_id)
        if video is None:
            raise AffectError(f"{self.request.where}: video {item.video_id!r} was not read; expected it to be")
        return video

    def close(self) -> None:
        """Let go of the videos still waiting (and of the temporary file)."""
        self.cache.close()


class _Lookahead:
    """The next item of an iterator, fetched only when asked for (so a file is read no further than needed)."""

    def __init__(self, items: Iterator[tuple[str, FileTable]]) -> None:
        self.items = items
        self.head: tuple[str, FileTable] | None = None
        self.fetched = False

    def peek(self) -> tuple[str, FileTable] | None:
        if not self.fetched:
            self.head, self.fetched = next(self.items, None), True
        return self.head

    def take(self) -> tuple[str, FileTable]:
        head = self.peek()
        assert head is not None
        self.fetched = False
        return head


class _TableFile:
    """One table file of the source, read in chunks: its videos' rows in file order, and each video's share of the
    file's bytes (by rows: the shares add up to the file's size)."""

    def __init__(self, loc: storage.Location, name: str, size: int) -> None:
        self.loc, self.name, self.size = loc, name, size
        self.where = loc.display(name)
        self.rows = 0
        self.done = 0
        self.counted = 0

    def share(self, rows: int) -> int:
        self.done += rows
        before, self.counted = self.counted, self.size * self.done // max(1, self.rows)
        return self.counted - before

    def videos(self) -> Iterator[tuple[str, FileTable]]:
        """(video id, its rows) of each contiguous run of rows, in file order, converted a chunk at a time as the
        layout's reader converts the whole file; AffectError for a file that is not a readable table with a video_id
        column, or that claims more rows than the readers take."""
        with self.loc.fs.open(storage.join(self.loc.path, self.name), "rb") as handle:
            try:
                parquet = pq.ParquetFile(handle, buffer_size=2**20, pre_buffer=False)
                self.rows = parquet.metadata.num_rows
                if self.rows > tables.MAX_ROWS:  # as the whole-file reader: a size claim beyond the limit is refused
                    raise AffectError(f"{self.where}: claims {self.rows} rows, more than {tables.MAX_ROWS}")
                schema = parquet.schema_arrow
                if "video_id" not in schema.names:
                    raise AffectError(f"{self.where}: missing attribute 'video_id'")
                batches = parquet.iter_batches(batch_size=CHUNK_ROWS, use_threads=False)
                yield from _runs((pa.Table.from_batches([b], schema=schema) for b in batches), self.where)
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise AffectError(f"{self.where}: unparseable Parquet file ({type(exc).__name__})") from None


def _runs(chunks: Iterator[pa.Table], where: str) -> Iterator[tuple[str, FileTable]]:
    """(video id, its rows as a FileTable) of each contiguous run of rows of ``chunks``."""
    current: str | None = None
    table: FileTable | None = None
    parts: list[dict[str, np.ndarray]] = []
    held = 0
    for chunk in chunks:
        table = arrow_file_table(chunk, where, string_columns=("video_id",))
        ids = table.columns["video_id"]
        bounds = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(ids)]
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            video_id = str(ids[start])
            if parts and video_id != current:
                yield _joined(current, table, parts)  # type: ignore[arg-type]
                parts, held = [], 0
            current = video_id
            parts.append({name: values[start:stop] for name, values in table.columns.items()})
            held += stop - start
            if held > tables.MAX_ROWS:
                raise AffectError(f"{where}: video {video_id!r} has more than {tables.MAX_ROWS} rows")
    if parts:
        yield _joined(current, table, parts)  # type: ignore[arg-type]


def _joined(video_id: str, table: FileTable, parts: list[dict[str, np.ndarray]]) -> tuple[str, FileTable]:
    """One video's rows, cut from one chunk or joined from several (``table``: the last, for its names)."""
    columns = parts[0] if len(parts) == 1 else {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return video_id, FileTable(table.where, table.names, columns, table.row_ref, table.metadata)


class SpillingCache(VideoCache):
    """A :class:`~affect_core.data.dataset.by_video.VideoCache` whose dropped videos go to a local temporary file
    (their arrays as they are, read back exactly), so every video kept can be taken back."""

    def __init__(self, cache_bytes: int | None = None) -> None:
        super().__init__(cache_bytes)
        self._file = tempfile.TemporaryFile(prefix="affect-ingest-")
        self._spilled: dict[str, tuple[str, float, int, tuple[tuple[str, str, tuple[int, ...]], ...]]] = {}

    def keep(self, video: Video) -> None:
        self._spilled.pop(video.video_id, None)
        super().keep(video)

    def drop(self, video: Video) -> None:
        arrays = {"features": video.features, "time_s": video.time_s}
        arrays.update({d: video.labels(d) for d in AFFECT_DIMENSIONS if video.labels(d) is not None})
        arrays.update({f"ratings/{name}": values for name, values in (video.ratings or {}).items()})
        offset = self._file.seek(0, io.SEEK_END)
        layout = []
        for name, values in arrays.items():
            values = np.ascontiguousarray(values)
            self._file.write(values.tobytes())
            layout.append((name, values.dtype.str, values.shape))
        self._spilled[video.video_id] = (video.split, video.fps, offset, tuple(layout))

    def take(self, video_id: str) -> Video | None:
        held = super().take(video_id)
        if held is not None or video_id not in self._spilled:
            return held
        split, fps, offset, layout = self._spilled.pop(video_id)
        self._file.seek(offset)
        arrays = {}
        for name, dtype, shape in layout:
            count = int(np.prod(shape)) * np.dtype(dtype).itemsize
            arrays[name] = np.frombuffer(bytearray(self._file.read(count)), dtype=dtype).reshape(shape)
        ratings = {name.split("/", 1)[1]: values for name, values in arrays.items() if name.startswith("ratings/")}
        labels = {d: arrays.get(d) for d in AFFECT_DIMENSIONS}
        return Video(video_id, split, arrays["features"], arrays["time_s"], fps, **labels, ratings=ratings or None)

    def close(self) -> None:
        self._file.close()
