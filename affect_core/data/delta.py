"""Delta Lake tables of whole videos: the storage under datasets and predictions.

A table is a Delta Lake table (``deltalake``) at any local path or S3 URL, partitioned by ``split``. Its Parquet files
are written here (not by delta-rs's writer) so that each holds many whole videos, rows sorted by (split, video, frame),
with row groups that end at video boundaries; a file closes at about ``target_file_bytes``. Each file's footer carries
an index of its videos (key ``affect.video_index``: an Arrow IPC stream of INDEX_SCHEMA, base64, after the prefix
``arrow-ipc-base64:``; columns video id, split, frames, row group, frames without a face, content hash, source stamp;
files of the first release hold a JSON list of objects under ``affect.videos``, still read), so a table's video list
costs one footer read per file, and one video is read from its row groups without reading the rest of its file. A
version's index is held as Arrow columns (about 100 bytes a video), never as an object
per video: :meth:`Snapshot.entries` makes the per-video records as it streams them, in split and natural id order (a
merge of the files' sorted indexes), so memory stays flat whatever the table holds.

Commits are delta-rs transactions: the files are uploaded first, then one commit adds and removes them together, so a
reader sees a version whole or not at all. Every commit carries the application transaction ``affect`` at the next
version: two writers that started from the same snapshot conflict, one commits and the other gets
:class:`CommitConflict` (it re-plans from the new snapshot or gives up cleanly). On S3 the log's files are written with
conditional puts (If-None-Match), which delta-rs 1.x uses by default and SeaweedFS honours.

Table-level metadata (feature names and sets, fps, source; or the model id and dataset version of predictions) is the
table's description, a JSON object, versioned with the data.
"""

from __future__ import annotations

import base64
import heapq
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from affect_core import storage
from affect_core.data import keys
from affect_core.data.tracks import video_sort_key
from affect_core.errors import AffectError

INDEX_KEY = keys.VIDEO_INDEX
INDEX_PREFIX = "arrow-ipc-base64:"
LIST_INDEX_KEY = keys.VIDEO_LIST  # the first release's index: a JSON list of one object per video
INDEX_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("split", pa.string()),
        ("frames", pa.int64()),
        ("row_group", pa.int32()),
        ("frames_without_face", pa.int64()),
        ("hash", pa.string()),
        ("source", pa.string()),
    ]
)
# Index rows turned into per-video records at a time while streaming (bounds the objects alive per file).
ENTRY_CHUNK = 2048
APP_ID = "affect"
DEFAULT_TARGET_FILE_BYTES = 256 * 2**20
# Footers read at once when a version's index is read: each full file's footer costs about 10 MB while it is parsed
# (10^5 videos, 6 files: 8 at once raised a process's peak by 48 MB over one at a time, 2 at once by 15 MB), and two
# overlap an object store's latency.
INDEX_READERS = 2
# Rows of one row group (whole videos only; a longer video is a row group of its own). Reading one video reads its
# row group: about 16k rows x 88 features is 6 MB.
ROW_GROUP_ROWS = 16_384
# Bytes of one part of a table file's multipart upload to an object store (S3's least is 5 MiB): the memory a file
# being written holds.
UPLOAD_PART_BYTES = 8 * 2**20
# Old versions' files are kept this long (``affect vacuum`` removes what is older and no longer referenced).
DEFAULT_RETENTION_HOURS = 168


class CommitConflict(AffectError):
    """Another writer committed to the table since this one read it."""


@dataclass(slots=True)
class VideoEntry:
    """One video of a table file: where its rows are and what they hold. Made while streaming a version's index
    (:meth:`Snapshot.entries`) and while writing; fields in INDEX_SCHEMA's order, then the file's path."""

    video_id: str
    split: str
    frames: int
    row_group: int = 0
    frames_without_face: int = 0
    hash: str = ""
    source: str = ""
    path: str = ""


@dataclass
class DataFile:
    """A data file of a table version: its path relative to the table root, size, rows, and the index of the videos
    it holds (INDEX_SCHEMA, in the file's row order, which is split and natural id order; None until read)."""

    path: str
    split: str
    size: int
    rows: int = 0
    index: pa.Table | None = None
    full: bool = False  # closed because it reached the target size (not because its split ended or the job did)

    @property
    def video_count(self) -> int:
        return self.index.num_rows if self.index is not None else 0

    def entries(self, *, splits: Sequence[str] | None = None, video_ids: Any = None) -> Iterator[VideoEntry]:
        """Per-video records of this file (those of ``splits`` / ``video_ids`` only), in row order, made a chunk at a
        time."""
        if self.index is None:
            return
        table = select_index(self.index, splits, video_ids)
        for start in range(0, table.num_rows, ENTRY_CHUNK):
            chunk = table.slice(start, ENTRY_CHUNK).to_pydict()
            for values in zip(*(chunk[name] for name in INDEX_SCHEMA.names), strict=True):
                yield VideoEntry(*values, path=self.path)


def select_index(index: pa.Table, splits: Sequence[str] | None, video_ids: Any) -> pa.Table:
    """The rows of an index table whose split is one of ``splits`` and id one of ``video_ids`` (None: any)."""
    mask = None
    if splits is not None:
        mask = pc.is_in(index.column("split"), value_set=pa.array(list(splits), pa.string()))
    if video_ids is not None:
        wanted = (
            video_ids if isinstance(video_ids, pa.Array | pa.ChunkedArray) else pa.array(list(video_ids), pa.string())
        )
        if isinstance(wanted, pa.ChunkedArray):
            wanted = wanted.combine_chunks()
        condition = pc.is_in(index.column("video_id"), value_set=wanted)
        mask = condition if mask is None else pc.and_(mask, condition)
    return index if mask is None else index.filter(mask)


def _entry_key(entry: VideoEntry) -> tuple[object, ...]:
    return video_sort_key(entry.split, entry.video_id)


@dataclass
class Snapshot:
    """One version of a table: its metadata (the description's JSON) and active files."""

    location: storage.Location
    version: int
    metadata: dict[str, Any]
    files: list[DataFile]

    @property
    def video_count(self) -> int:
        return sum(f.video_count for f in self.files)

    def entries(self, *, splits: Sequence[str] | None = None, video_ids: Any = None) -> Iterator[VideoEntry]:
        """Per-video records (of ``splits`` / ``video_ids`` only; ids as any sequence or an Arrow array) in split and
        natural id order: a streaming merge of the files' sorted indexes, so records exist only while consumed."""
        if video_ids is not None and not isinstance(video_ids, pa.Array | pa.ChunkedArray):
            video_ids = pa.array(list(video_ids), pa.string())
        streams = [f.entries(splits=splits, video_ids=video_ids) for f in self.files if f.video_count]
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams, key=_entry_key)

    def video_ids(self) -> pa.ChunkedArray:
        """Every video id of the version (file by file), as one Arrow column."""
        chunks = [f.index.column("video_id") for f in self.files if f.index is not None]
        return pa.chunked_array([c for chunked in chunks for c in chunked.chunks], pa.string())

    def column_map(self, column: str) -> dict[str, Any]:
        """{video id: that video's ``column`` value} over the version (a lookup table for ingest's comparisons)."""
        out: dict[str, Any] = {}
        for f in self.files:
            if f.index is not None:
                out.update(zip(f.index.column("video_id").to_pylist(), f.index.column(column).to_pylist(), strict=True))
        return out


# ------------------------------------------------------------------------------------------------------- location
def parse_versioned_url(url: str) -> tuple[str, int | None]:
    """``URL@VERSION`` -> (URL, VERSION); a URL without a numeric ``@`` suffix -> (URL, None)."""
    base, sep, tail = str(url).rpartition("@")
    if sep and tail.isdigit() and base and not base.endswith("/"):
        return base, int(tail)
    return str(url), None


@dataclass(frozen=True)
class VersionedLocation:
    """A table's location and the version its URL pinned (``URL@VERSION``; None: the URL pinned none): a
    ``URL@VERSION`` parsed and resolved once, where a job entered the library."""

    loc: storage.Location
    version: int | None = None


def resolve_versioned(
    url: str | storage.Location | VersionedLocation, storage_options: dict[str, Any] | None = None
) -> VersionedLocation:
    """``URL@VERSION`` (or a plain URL) parsed and resolved; a Location or VersionedLocation is returned as it is
    (``storage_options`` are then not looked at), so an entry point can call this whatever it was given."""
    if isinstance(url, VersionedLocation):
        return url
    if isinstance(url, storage.Location):
        return VersionedLocation(url)
    base, pinned = parse_versioned_url(url)
    return VersionedLocation(storage.resolve(base, storage_options), pinned)


def parse_version(version: str | int | None, where: str) -> int | None:
    """A version given by a user (int, digits, or None for the latest)."""
    if version is None or version == "":
        return None
    text = str(version).strip()
    if not text.isdigit():
        raise AffectError(f"{where}: version {version!r} is not a table version; expected a number (0, 1, 2, ...)")
    return int(text)


def table_uri(loc: storage.Location) -> str:
    """The URL delta-rs opens for ``loc``; refuses stores it cannot share with fsspec (memory://)."""
    if loc.is_local:
        return loc.path
    if loc.protocol in ("s3", "s3a"):
        return "s3://" + loc.path
    if loc.protocol in ("gs", "gcs"):
        return "gs://" + loc.path
    if loc.protocol in ("az", "abfs", "abfss"):
        return "az://" + loc.path
    raise AffectError(
        f"{loc.display()}: tables need a store that Delta Lake can commit to (a local path, s3://, gs://, az://); "
        f"{loc.protocol}:// is not one"
    )


def delta_storage_options(loc: storage.Location) -> dict[str, str]:
    """delta-rs storage options for ``loc``: the S3 endpoint and keys made explicit (delta-rs reads neither
    AFFECT_S3_ENDPOINT nor AWS_ENDPOINT_URL_S3, so the endpoint the fsspec side uses is passed on)."""
    if loc.protocol not in ("s3", "s3a"):
        return {}
    fs = loc.fs
    options: dict[str, str] = {}
    client_kwargs = dict(getattr(fs, "client_kwargs", None) or {})
    endpoint = client_kwargs.get("endpoint_url") or getattr(fs, "endpoint_url", None)
    if endpoint:
        options["AWS_ENDPOINT_URL"] = str(endpoint)
        if str(endpoint).startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    region = client_kwargs.get("region_name") or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    options["AWS_REGION"] = str(region or "us-east-1")
    key = getattr(fs, "key", None) or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = getattr(fs, "secret", None) or os.environ.get("AWS_SECRET_ACCESS_KEY")
    token = getattr(fs, "token", None) or os.environ.get("AWS_SESSION_TOKEN")
    if key and secret:
        options["AWS_ACCESS_KEY_ID"] = str(key)
        options["AWS_SECRET_ACCESS_KEY"] = str(secret)
    if token:
        options["AWS_SESSION_TOKEN"] = str(token)
    return options


def _delta_error(loc: storage.Location, exc: BaseException, doing: str) -> AffectError:
    message = " ".join(storage.redact(str(exc)).split())[:300]
    return AffectError(f"{loc.display()}: {doing} failed ({type(exc).__name__}: {message})")


def is_table(loc: storage.Location) -> bool:
    """Whether ``loc`` holds a Delta table (a ``_delta_log`` with a commit)."""
    return bool(storage.list_dir(loc.fs, storage.join(loc.path, "_delta_log")))


def _open_delta(loc: storage.Location, version: int | None) -> Any:
    from deltalake import DeltaTable

    try:
        return DeltaTable(table_uri(loc), version=version, storage_options=delta_storage_options(loc))
    except AffectError:
        raise
    except Exception as exc:  # noqa: BLE001 - delta-rs raises its own types and OSError alike
        if version is not None and "version" in str(exc).lower():
            raise AffectError(f"{loc.display()}: no version {version} in this table") from None
        raise _delta_error(loc, exc, "opening the table") from None


def versions(loc: storage.Location) -> list[int]:
    """Versions of the table at ``loc`` that can still be read, oldest first (empty when there is none)."""
    if not is_table(loc):
        return []
    table = _open_delta(loc, None)
    latest = table.version()
    names = [name for name, kind in storage.list_dir(loc.fs, storage.join(loc.path, "_delta_log")) if kind == "file"]
    found = sorted({int(n.split(".")[0]) for n in names if n.endswith(".json") and n.split(".")[0].isdigit()})
    return [v for v in found if v <= latest] or [latest]


def snapshot(loc: storage.Location, version: int | None = None, *, read_index: bool = True) -> Snapshot | None:
    """The table at ``loc`` at ``version`` (latest by default), or None when ``loc`` holds no table."""
    if not is_table(loc):
        if version is not None:
            raise AffectError(f"{loc.display()}: no table here, so no version {version}")
        return None
    table = _open_delta(loc, version)
    try:
        description = table.metadata().description or "{}"
        actions = pa.table(table.get_add_actions(flatten=True))
    except Exception as exc:  # noqa: BLE001
        raise _delta_error(loc, exc, "reading the table's log") from None
    try:
        metadata = json.loads(description)
    except ValueError:
        metadata = {}
    paths = actions.column("path").to_pylist()
    sizes = actions.column("size_bytes").to_pylist()
    split_column = "partition.split" if "partition.split" in actions.column_names else None
    splits = actions.column(split_column).to_pylist() if split_column else [""] * len(paths)
    rows = actions.column("num_records").to_pylist() if "num_records" in actions.column_names else [0] * len(paths)
    files = [
        DataFile(path=str(p), split=str(s or ""), size=int(z), rows=int(r or 0))
        for p, s, z, r in zip(paths, splits, sizes, rows, strict=True)
    ]
    files.sort(key=lambda f: f.path)
    snap = Snapshot(loc, int(table.version()), metadata if isinstance(metadata, dict) else {}, files)
    if read_index:
        read_indexes(snap)
    return snap


def read_indexes(snap: Snapshot) -> None:
    """Fill each file's video list from its footer (one ranged read per file, INDEX_READERS at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(data_file: DataFile) -> None:
        data_file.index = read_footer_index(snap.location, data_file)

    with ThreadPoolExecutor(max_workers=INDEX_READERS) as pool:
        list(pool.map(one, [f for f in snap.files if f.index is None]))


def read_footer_index(loc: storage.Location, data_file: DataFile) -> pa.Table:
    where = loc.display(data_file.path)
    try:
        with loc.fs.open(storage.join(loc.path, data_file.path), "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
    except FileNotFoundError:
        raise AffectError(f"{where}: listed in the table's log but missing; the table is damaged") from None
    except (OSError, pa.ArrowException) as exc:
        raise AffectError(f"{where}: unreadable Parquet footer ({type(exc).__name__})") from None
    kv = metadata.metadata or {}
    raw = kv.get(INDEX_KEY.encode())
    if raw is not None:
        return decode_index(raw, where)
    raw = kv.get(LIST_INDEX_KEY.encode())
    if raw is None:
        raise AffectError(f"{where}: no video index ({INDEX_KEY}) in the footer; not a file written by affect")
    items = json.loads(raw)
    columns: dict[str, list[Any]] = {name: [] for name in INDEX_SCHEMA.names}
    for item in items:
        for name in INDEX_SCHEMA.names:
            columns[name].append(item.get(name, 0 if name in ("row_group", "frames_without_face") else ""))
    return index_from_columns(columns, where)


def encode_index(index: pa.Table) -> str:
    """A file's video index as footer text: no object per video is made to write or read it."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, INDEX_SCHEMA) as writer:
        writer.write_table(index)
    return INDEX_PREFIX + base64.b64encode(sink.getvalue().to_pybytes()).decode("ascii")


def decode_index(raw: bytes, where: str) -> pa.Table:
    if not raw.startswith(INDEX_PREFIX.encode()):
        raise AffectError(f"{where}: the footer's video index is not in a known encoding; the file is damaged")
    try:
        table = pa.ipc.open_stream(base64.b64decode(memoryview(raw)[len(INDEX_PREFIX) :])).read_all()
    except (ValueError, pa.ArrowException) as exc:
        raise AffectError(f"{where}: unreadable video index in the footer ({type(exc).__name__})") from None
    if not table.schema.equals(INDEX_SCHEMA):
        raise AffectError(
            f"{where}: the footer's video index has columns {table.schema.names}; expected {INDEX_SCHEMA.names}"
        )
    return table


# The columns that describe written, uncommitted table files handed from the process that wrote them to the one that
# commits them (a Ray actor to its driver): one row per file, its index as footer text.
FILES_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("split", pa.string()),
        ("size", pa.int64()),
        ("rows", pa.int64()),
        ("full", pa.bool_()),
        ("index", pa.string()),
    ]
)


def files_table(files: Sequence[DataFile]) -> pa.Table:
    """Written files (with their indexes) as a FILES_SCHEMA table."""
    return pa.table(
        {
            "path": [f.path for f in files],
            "split": [f.split for f in files],
            "size": [f.size for f in files],
            "rows": [f.rows for f in files],
            "full": [f.full for f in files],
            "index": [encode_index(f.index if f.index is not None else INDEX_SCHEMA.empty_table()) for f in files],
        },
        schema=FILES_SCHEMA,
    )


def table_files(table: pa.Table, where: str) -> list[DataFile]:
    """The files a :func:`files_table` describes."""
    rows = table.select(FILES_SCHEMA.names).to_pylist()
    return [
        DataFile(r["path"], r["split"], r["size"], r["rows"], decode_index(r["index"].encode(), where), r["full"])
        for r in rows
    ]


def index_from_columns(columns: dict[str, list[Any]], where: str) -> pa.Table:
    """An index table (INDEX_SCHEMA) from its columns as lists; an absent optional column is zeros or empty."""
    count = len(columns.get("video_id", []))
    arrays = []
    for field_ in INDEX_SCHEMA:
        values = columns.get(field_.name)
        if values is None:
            if field_.name in ("video_id", "split", "frames"):
                raise AffectError(f"{where}: the footer's video index has no {field_.name!r}; the file is damaged")
            values = [0] * count if pa.types.is_integer(field_.type) else [""] * count
        if len(values) != count:
            raise AffectError(
                f"{where}: the footer's video index has columns of different lengths; the file is damaged"
            )
        arrays.append(pa.array(values, field_.type))
    return pa.Table.from_arrays(arrays, schema=INDEX_SCHEMA)


# -------------------------------------------------------------------------------------------------------- reading
def read_row_groups(loc: storage.Location, path: str, row_groups: Sequence[int], columns: list[str] | None = None):
    """The rows of ``row_groups`` of one table file (a pyarrow Table)."""
    with TableFile(loc, path) as opened:
        return opened.read(row_groups, columns)


class TableFile:
    """One table file held open, its footer parsed once, for reading several of its row groups."""

    def __init__(self, loc: storage.Location, path: str) -> None:
        self.loc, self.path = loc, path
        self.where = loc.display(path)
        try:
            self.handle = loc.fs.open(storage.join(loc.path, path), "rb", cache_type="none")
            self.file = pq.ParquetFile(self.handle)
        except FileNotFoundError:
            raise AffectError(f"{self.where}: listed in the table's log but missing; the table is damaged") from None
        except (OSError, pa.ArrowException) as exc:
            raise AffectError(f"{self.where}: unreadable ({type(exc).__name__})") from None

    def read(self, row_groups: Sequence[int], columns: list[str] | None = None) -> pa.Table:
        try:
            return self.file.read_row_groups(sorted(set(row_groups)), columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise AffectError(f"{self.where}: unreadable ({type(exc).__name__})") from None

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> TableFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def iter_entry_tables(
    loc: storage.Location, entries: Iterable[VideoEntry], columns: list[str] | None = None
) -> Iterator[tuple[VideoEntry, pa.Table]]:
    """(entry, its rows) for each of ``entries`` in the given order (see :func:`iter_row_groups`)."""
    for table, picks in iter_row_groups(loc, entries, columns):
        for entry, start, length in picks:
            yield entry, table.slice(start, length)


def iter_row_groups(
    loc: storage.Location, entries: Iterable[VideoEntry], columns: list[str] | None = None
) -> Iterator[tuple[pa.Table, list[tuple[VideoEntry, int, int]]]]:
    """The row groups that hold ``entries``, in the entries' order: (the row group's rows, [(entry, first row, rows)]
    of the consecutive entries it holds). The file of the last entry stays open (its footer parsed once), so
    consecutive entries of one file or row group share reads; a reader may convert a row group's videos at once."""
    opened: TableFile | None = None
    current: tuple[str, int] | None = None
    table: pa.Table | None = None
    slices: dict[str, tuple[int, int]] = {}
    picks: list[tuple[VideoEntry, int, int]] = []
    try:
        for entry in entries:
            key = (entry.path, entry.row_group)
            if key != current:
                if picks:
                    yield table, picks
                    picks = []
                if opened is None or opened.path != entry.path:
                    if opened is not None:
                        opened.close()
                    opened = TableFile(loc, entry.path)
                table = opened.read([entry.row_group], columns)
                slices, current = video_slices(table), key
            if entry.video_id not in slices:
                raise AffectError(
                    f"{loc.display(entry.path)}: row group {entry.row_group} has no rows of video "
                    f"{entry.video_id!r}; the file's index is damaged"
                )
            start, length = slices[entry.video_id]
            picks.append((entry, start, length))
        if picks:
            yield table, picks
    finally:
        if opened is not None:
            opened.close()


def video_slices(table: pa.Table) -> dict[str, tuple[int, int]]:
    """{video id: (first row, rows)} of a table whose rows are grouped by video (found with Arrow compute: only the
    ids at the boundaries become Python strings)."""
    import numpy as np

    ids = table.column("video_id")
    count = len(ids)
    if count == 0:
        return {}
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    change = pc.not_equal(ids.slice(1), ids.slice(0, count - 1)).to_numpy(zero_copy_only=False)
    bounds = [0, *(np.flatnonzero(change) + 1).tolist(), count]
    names = ids.take(pa.array(bounds[:-1], pa.int64())).to_pylist()
    return {str(name): (a, b - a) for name, a, b in zip(names, bounds[:-1], bounds[1:], strict=True)}


# -------------------------------------------------------------------------------------------------------- writing
class FileWriter:
    """Packs whole videos into table files: one open file per split, row groups of whole videos, a file closed at
    about ``target_file_bytes``. Videos must arrive in the order their rows should have in a file (sorted).

    Closed files are returned by :meth:`add` and :meth:`close` (uploaded, not yet committed)."""

    def __init__(
        self,
        loc: storage.Location,
        schema: pa.Schema,
        *,
        target_file_bytes: int = DEFAULT_TARGET_FILE_BYTES,
        row_group_rows: int = ROW_GROUP_ROWS,
        dictionary_columns: Sequence[str] = ("video_id", "split", "model_id"),
    ) -> None:
        self.loc = loc
        self.schema = schema
        self.target_file_bytes = max(1, int(target_file_bytes))
        self.row_group_rows = max(1, int(row_group_rows))
        self.dictionary_columns = [c for c in dictionary_columns if c in schema.names]
        self._open: dict[str, _OpenFile] = {}
        self._last_split: str | None = None
        self.written: list[DataFile] = []

    def add(self, table: pa.Table, entry: VideoEntry, *, nbytes: int | None = None) -> list[DataFile]:
        """Append one video's rows (``table`` in the writer's schema, frames in order; ``nbytes``: its size in
        memory when the caller knows it)."""
        closed = []
        if self._last_split is not None and self._last_split != entry.split and self._last_split in self._open:
            # rows come in split order: the split before is done, its file closes (one open upload at a time)
            closed.append(self._close(self._last_split))
        self._last_split = entry.split
        current = self._open.get(entry.split)
        if current is None:
            current = self._open[entry.split] = _OpenFile(self, entry.split)
        current.add(table, entry, table.nbytes if nbytes is None else nbytes)
        if current.estimated_bytes() >= self.target_file_bytes:
            closed.append(self._close(entry.split, full=True))
        return closed

    def add_videos(self, table: pa.Table, entries: Sequence[VideoEntry]) -> list[DataFile]:
        """Append the rows of consecutive whole videos (``entries`` in the order of their rows in ``table``)."""
        closed: list[DataFile] = []
        share = table.nbytes / max(1, table.num_rows)
        start = 0
        for entry in entries:
            closed += self.add(table.slice(start, entry.frames), entry, nbytes=int(share * entry.frames))
            start += entry.frames
        if start != table.num_rows:
            raise AffectError(f"{self.loc.display()}: {table.num_rows} rows for videos of {start} frames")
        return closed

    def flush(self) -> list[DataFile]:
        """Close every open file now (e.g. to commit what is done so far)."""
        return [self._close(split) for split in list(self._open)]

    def close(self) -> list[DataFile]:
        return self.flush()

    def abort(self) -> None:
        """Drop open files and delete every file written (nothing of them was committed)."""
        for current in self._open.values():
            current.abort()
        self._open.clear()
        for data_file in self.written:
            storage.remove_tree(self.loc.fs, storage.join(self.loc.path, data_file.path))
        self.written.clear()

    def _close(self, split: str, *, full: bool = False) -> DataFile:
        data_file = self._open.pop(split).close()
        data_file.full = full
        self.written.append(data_file)
        return data_file


class _OpenFile:
    def __init__(self, owner: FileWriter, split: str) -> None:
        self.owner = owner
        self.split = split
        self.relative = f"split={split}/part-{uuid.uuid4().hex}.parquet"
        self.path = storage.join(owner.loc.path, self.relative)
        if owner.loc.is_local:
            owner.loc.fs.makedirs(storage.join(owner.loc.path, f"split={split}"), exist_ok=True)
        # an object store's upload buffers a part of UPLOAD_PART_BYTES (s3fs's default is 50 MB) before sending it
        self.handle = owner.loc.fs.open(self.path, "wb", block_size=None if owner.loc.is_local else UPLOAD_PART_BYTES)
        self.writer = pq.ParquetWriter(
            self.handle,
            owner.schema,
            compression="zstd",
            use_dictionary=owner.dictionary_columns,
            write_statistics=[c for c in ("video_id", "frame") if c in owner.schema.names],
        )
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.pending_bytes = 0  # kept as videos come (a table's nbytes walks its buffers: not once per add)
        self.row_groups = 0
        self.rows = 0
        self.index: dict[str, list[Any]] = {name: [] for name in INDEX_SCHEMA.names}
        self.last_key: tuple[object, ...] | None = None

    def add(self, table: pa.Table, entry: VideoEntry, nbytes: int) -> None:
        key = _entry_key(entry)
        if self.last_key is not None and key <= self.last_key:
            raise AffectError(
                f"{self.owner.loc.display(self.relative)}: video {entry.video_id!r} ({entry.split}) comes after a "
                "video it sorts before (or is repeated); table files hold videos in split and natural id order"
            )
        self.last_key = key
        if self.pending_rows and self.pending_rows + table.num_rows > self.owner.row_group_rows:
            self._write_row_group()
        entry.row_group = self.row_groups
        entry.path = self.relative
        for name in INDEX_SCHEMA.names:
            self.index[name].append(getattr(entry, name))
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.pending_bytes += nbytes

    def estimated_bytes(self) -> int:
        """Bytes written so far plus the buffered row group at a guessed 3:1 compression (zstd on features)."""
        return int(self.handle.tell()) + self.pending_bytes // 3

    def _write_row_group(self) -> None:
        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        self.writer.write_table(table, row_group_size=table.num_rows)
        self.rows += table.num_rows
        self.row_groups += 1
        self.pending, self.pending_rows, self.pending_bytes = [], 0, 0

    def close(self) -> DataFile:
        self._write_row_group()
        index = index_from_columns(self.index, self.owner.loc.display(self.relative))
        self.index = {}
        self.writer.add_key_value_metadata({INDEX_KEY: encode_index(index)})
        self.writer.close()
        self.handle.close()
        size = int(self.owner.loc.fs.size(self.path))
        return DataFile(self.relative, self.split, size, self.rows, index)

    def abort(self) -> None:
        try:
            self.writer.close()
            self.handle.close()
        finally:
            storage.remove_tree(self.owner.loc.fs, self.path)


def _stats(data_file: DataFile) -> str:
    stats: dict[str, Any] = {"numRecords": data_file.rows}
    if data_file.video_count:
        bounds = pc.min_max(data_file.index.column("video_id"))
        stats["minValues"] = {"video_id": bounds["min"].as_py()}
        stats["maxValues"] = {"video_id": bounds["max"].as_py()}
        stats["nullCount"] = {"video_id": 0}
    return json.dumps(stats)


def commit(
    loc: storage.Location,
    schema: pa.Schema,
    *,
    added: Sequence[DataFile],
    removed: Sequence[DataFile] = (),
    read_version: int | None,
    metadata: dict[str, Any] | None = None,
    replace: bool = False,
    operation: str = "",
) -> int:
    """Commit ``added`` and ``removed`` files in one transaction on top of ``read_version`` (None: the table does
    not exist yet). ``replace``: the commit replaces every file of the table (and its metadata) instead.

    Returns the new version. Raises CommitConflict when another writer committed since ``read_version`` (or
    created the table first), AffectError for any other failure; the caller deletes its uncommitted files."""
    from deltalake import DeltaTable, Schema
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import (
        AddAction,
        CommitProperties,
        RemoveAction,
        Transaction,
        create_table_with_add_actions,
    )

    now = int(time.time() * 1000)
    adds = [AddAction(f.path, f.size, {"split": f.split}, now, True, _stats(f)) for f in added]
    removes = [RemoveAction(f.path, True, now, f.size, {"split": f.split}) for f in removed]
    next_version = 0 if read_version is None else read_version + 1
    properties = CommitProperties(
        custom_metadata={keys.OPERATION: operation} if operation else None,
        app_transactions=[Transaction(APP_ID, next_version)],
        max_commit_retries=0,
    )
    uri, options = table_uri(loc), delta_storage_options(loc)
    try:
        if read_version is None or replace:
            if read_version is not None and _open_delta(loc, None).version() != read_version:
                raise CommitFailedError(f"the table moved on from version {read_version}")
            create_table_with_add_actions(
                uri,
                Schema.from_arrow(schema),
                adds,
                mode="error" if read_version is None else "overwrite",
                partition_by=["split"],
                description=json.dumps(metadata or {}, sort_keys=True),
                storage_options=options,
                commit_properties=properties,
            )
        else:
            table = DeltaTable(uri, version=read_version, storage_options=options)
            table.create_write_transaction(
                [*adds, *removes], "append", schema, partition_by=["split"], commit_properties=properties
            )
    except CommitFailedError as exc:
        raise CommitConflict(
            f"{loc.display()}: another writer committed first ({' '.join(str(exc).split())[:160]}); "
            "nothing of this write was published"
        ) from None
    except Exception as exc:  # noqa: BLE001
        text = str(exc).lower()
        if read_version is None and ("already exists" in text or "exists" in text):
            raise CommitConflict(f"{loc.display()}: another writer created the table first") from None
        raise _delta_error(loc, exc, "committing") from None
    # No retries: the commit landed at exactly the next version or failed. (Asking the table for its latest version
    # could name a version another writer committed just after, and hide a conflict from this writer's next commit.)
    return next_version


def vacuum(loc: storage.Location, *, retention_hours: float, dry_run: bool) -> list[str]:
    """Delete files no version within ``retention_hours`` needs (and never-committed leftovers of crashed writers
    older than that), then expired log entries. Returns the files deleted (or that would be, with ``dry_run``)."""
    if not is_table(loc):
        raise AffectError(f"{loc.display()}: no table here (no _delta_log/)")
    table = _open_delta(loc, None)
    try:
        removed = table.vacuum(
            retention_hours=int(retention_hours),
            dry_run=dry_run,
            enforce_retention_duration=False,
        )
        if not dry_run:
            table.cleanup_metadata()
    except Exception as exc:  # noqa: BLE001
        raise _delta_error(loc, exc, "vacuum") from None
    return sorted(str(r) for r in removed)
