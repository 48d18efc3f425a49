"""Delta Lake tables of whole videos: the storage under datasets and predictions.

A table is a Delta Lake table (``deltalake``) at any local path or S3 URL, partitioned by ``split``. Its Parquet files
are written here (not by delta-rs's writer) so that each holds many whole videos, rows sorted by (split, video, frame),
with row groups that end at video boundaries; a file closes at about ``target_file_bytes``. Each file's footer carries
an index of its videos (key ``affect.videos``: video id, split, frames, frames without a face, content hash, row group),
so a table's video list costs one footer read per file, and one video is read from its row groups without reading the
rest of its file.

Commits are delta-rs transactions: the files are uploaded first, then one commit adds and removes them together, so a
reader sees a version whole or not at all. Every commit carries the application transaction ``affect`` at the next
version: two writers that started from the same snapshot conflict, one commits and the other gets
:class:`CommitConflict` (it re-plans from the new snapshot or gives up cleanly). On S3 the log's files are written with
conditional puts (If-None-Match), which delta-rs 1.x uses by default and SeaweedFS honours.

Table-level metadata (feature names and sets, fps, source; or the model id and dataset version of predictions) is the
table's description, a JSON object, versioned with the data.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from affect_core import storage
from affect_core.errors import AffectError

INDEX_KEY = "affect.videos"
APP_ID = "affect"
DEFAULT_TARGET_FILE_BYTES = 256 * 2**20
# Rows of one row group (whole videos only; a longer video is a row group of its own). Reading one video reads its
# row group: about 16k rows x 88 features is 6 MB.
ROW_GROUP_ROWS = 16_384
# Old versions' files are kept this long (``affect vacuum`` removes what is older and no longer referenced).
DEFAULT_RETENTION_HOURS = 168


class CommitConflict(AffectError):
    """Another writer committed to the table since this one read it."""


@dataclass(slots=True)
class VideoEntry:
    """One video of a table file: where its rows are and what they hold. A table version holds one per video, so it
    has slots (no per-object dict)."""

    video_id: str
    split: str
    frames: int
    row_group: int = 0
    frames_without_face: int = 0
    hash: str = ""
    source: str = ""
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"video_id": self.video_id, "split": self.split, "frames": self.frames}
        out["row_group"] = self.row_group
        if self.frames_without_face:
            out["frames_without_face"] = self.frames_without_face
        if self.hash:
            out["hash"] = self.hash
        if self.source:
            out["source"] = self.source
        return out


@dataclass
class DataFile:
    """A data file of a table version: its path relative to the table root, size and the videos it holds."""

    path: str
    split: str
    size: int
    rows: int = 0
    videos: list[VideoEntry] = field(default_factory=list)


@dataclass
class Snapshot:
    """One version of a table: its metadata (the description's JSON) and active files."""

    location: storage.Location
    version: int
    metadata: dict[str, Any]
    files: list[DataFile]

    def index(self) -> dict[str, VideoEntry]:
        """{video id: entry (with its file's path)} over every file (footers are read once, on first use)."""
        return {entry.video_id: entry for data_file in self.files for entry in data_file.videos}


# ------------------------------------------------------------------------------------------------------- location
def parse_versioned_url(url: str) -> tuple[str, int | None]:
    """``URL@VERSION`` -> (URL, VERSION); a URL without a numeric ``@`` suffix -> (URL, None)."""
    base, sep, tail = str(url).rpartition("@")
    if sep and tail.isdigit() and base and not base.endswith("/"):
        return base, int(tail)
    return str(url), None


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
    """Fill each file's video list from its footer (one ranged read per file, a few at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(data_file: DataFile) -> None:
        data_file.videos = read_footer_index(snap.location, data_file)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, [f for f in snap.files if not f.videos]))


def read_footer_index(loc: storage.Location, data_file: DataFile) -> list[VideoEntry]:
    where = loc.display(data_file.path)
    try:
        with loc.fs.open(storage.join(loc.path, data_file.path), "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
    except FileNotFoundError:
        raise AffectError(f"{where}: listed in the table's log but missing; the table is damaged") from None
    except (OSError, pa.ArrowException) as exc:
        raise AffectError(f"{where}: unreadable Parquet footer ({type(exc).__name__})") from None
    raw = (metadata.metadata or {}).get(INDEX_KEY.encode())
    if raw is None:
        raise AffectError(f"{where}: no video index ({INDEX_KEY}) in the footer; not a file written by affect")
    entries = []
    for item in json.loads(raw):
        entries.append(
            VideoEntry(
                video_id=str(item["video_id"]),
                split=str(item["split"]),
                frames=int(item["frames"]),
                row_group=int(item.get("row_group", 0)),
                frames_without_face=int(item.get("frames_without_face", 0)),
                hash=str(item.get("hash", "")),
                source=str(item.get("source", "")),
                path=data_file.path,
            )
        )
    return entries


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
    """(entry, its rows) for each of ``entries`` in the given order. The file of the last entry stays open (its footer
    parsed once) and the last row group read is kept, so consecutive entries of one file or row group share reads."""
    opened: TableFile | None = None
    cached: tuple[tuple[str, int], pa.Table, dict[str, tuple[int, int]]] | None = None
    try:
        for entry in entries:
            key = (entry.path, entry.row_group)
            if cached is None or cached[0] != key:
                if opened is None or opened.path != entry.path:
                    if opened is not None:
                        opened.close()
                    opened = TableFile(loc, entry.path)
                table = opened.read([entry.row_group], columns)
                cached = (key, table, video_slices(table))
            _, table, slices = cached
            if entry.video_id not in slices:
                raise AffectError(
                    f"{loc.display(entry.path)}: row group {entry.row_group} has no rows of video "
                    f"{entry.video_id!r}; the file's index is damaged"
                )
            start, length = slices[entry.video_id]
            yield entry, table.slice(start, length)
    finally:
        if opened is not None:
            opened.close()


def video_slices(table: pa.Table) -> dict[str, tuple[int, int]]:
    """{video id: (first row, rows)} of a table whose rows are grouped by video."""
    import numpy as np

    ids = table.column("video_id").to_numpy(zero_copy_only=False).astype(str)
    if ids.size == 0:
        return {}
    bounds = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(ids)]
    return {ids[a]: (a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)}


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
        self.written: list[DataFile] = []

    def add(self, table: pa.Table, entry: VideoEntry) -> list[DataFile]:
        """Append one video's rows (``table`` in the writer's schema, frames in order)."""
        current = self._open.get(entry.split)
        if current is None:
            current = self._open[entry.split] = _OpenFile(self, entry.split)
        current.add(table, entry)
        if current.estimated_bytes() >= self.target_file_bytes:
            return [self._close(entry.split)]
        return []

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

    def _close(self, split: str) -> DataFile:
        data_file = self._open.pop(split).close()
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
        self.handle = owner.loc.fs.open(self.path, "wb")
        self.writer = pq.ParquetWriter(
            self.handle,
            owner.schema,
            compression="zstd",
            use_dictionary=owner.dictionary_columns,
            write_statistics=[c for c in ("video_id", "frame") if c in owner.schema.names],
        )
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.row_groups = 0
        self.rows = 0
        self.entries: list[VideoEntry] = []

    def add(self, table: pa.Table, entry: VideoEntry) -> None:
        if self.pending_rows and self.pending_rows + table.num_rows > self.owner.row_group_rows:
            self._write_row_group()
        entry.row_group = self.row_groups
        entry.path = self.relative
        self.entries.append(entry)
        self.pending.append(table)
        self.pending_rows += table.num_rows

    def estimated_bytes(self) -> int:
        """Bytes written so far plus the buffered row group at a guessed 3:1 compression (zstd on features)."""
        return int(self.handle.tell()) + sum(t.nbytes for t in self.pending) // 3

    def _write_row_group(self) -> None:
        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        self.writer.write_table(table, row_group_size=table.num_rows)
        self.rows += table.num_rows
        self.row_groups += 1
        self.pending, self.pending_rows = [], 0

    def close(self) -> DataFile:
        self._write_row_group()
        self.writer.add_key_value_metadata({INDEX_KEY: json.dumps([e.to_json() for e in self.entries])})
        self.writer.close()
        self.handle.close()
        size = int(self.owner.loc.fs.size(self.path))
        return DataFile(self.relative, self.split, size, self.rows, self.entries)

    def abort(self) -> None:
        try:
            self.writer.close()
            self.handle.close()
        finally:
            storage.remove_tree(self.owner.loc.fs, self.path)


def _stats(data_file: DataFile) -> str:
    ids = [e.video_id for e in data_file.videos]
    stats: dict[str, Any] = {"numRecords": data_file.rows}
    if ids:
        stats["minValues"] = {"video_id": min(ids)}
        stats["maxValues"] = {"video_id": max(ids)}
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
        custom_metadata={"affect.operation": operation} if operation else None,
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
