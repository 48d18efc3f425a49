"""Versioned Parquet datasets on any fsspec store: ``ingest`` writes them; ``read_corpus``, ``iter_videos``
and ``dataset_info`` read them.

Layout (docs/data_formats.md)::

    DATASET_URL/_manifests/<version>.json                                      written last: makes it visible
    DATASET_URL/versions/<version>/split=<split>/video_id=<id>/part-0.parquet  one file per video

A version is visible only once its manifest exists; readers list ``_manifests/`` and read exactly the files a
manifest names, so a crashed writer (no manifest) leaves nothing visible. Re-ingesting input with the content
hash of the latest version is a no-op; changed input makes a new version and the older ones stay readable."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from affect_core import storage
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

FORMAT = "affect-dataset/1"
MANIFESTS = "_manifests"
VERSIONS = "versions"
PART_FILE = "part-0.parquet"
META_PREFIX = "affect."
RESERVED_COLUMNS = ("video_id", "split", "frame", "time_s", "features", *AFFECT_DIMENSIONS, "ratings")
# Corpus metadata kept in the dataset as affect.<key>: AVEC features come pooled; the tool that wrote the files.
SOURCE_METADATA = ("pooled", "source_format")


@dataclass
class IngestResult:
    """What an ingest did. ``unchanged`` is True when the input matched the latest version (nothing
    written)."""

    dataset_url: str
    version: str
    content_hash: str
    unchanged: bool
    rows: int
    videos: int
    seconds: float
    source_bytes: int
    mb_per_s: float
    notes: list[str] = field(default_factory=list)  # what the reader skipped, one line each

    def summary(self) -> str:
        """One line for the CLI."""
        if self.unchanged:
            return (
                f"unchanged: {self.dataset_url} version {self.version} already holds this input "
                f"({self.videos} videos, {self.rows} rows)"
            )
        return (
            f"ingested {self.dataset_url} version {self.version}: {self.videos} videos, {self.rows} rows, "
            f"{self.source_bytes / 1e6:.1f} MB in {self.seconds:.2f} s ({self.mb_per_s:.1f} MB/s)"
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

    @property
    def feature_dim(self) -> int:
        return len(self.feature_names)


# ------------------------------------------------------------------------------------------------- content
# hash
def content_hash(corpus: Corpus) -> str:
    """SHA-256 over what a dataset holds: feature names and sets, fps, and every video's ids, times, features
    and labels (NaN canonicalised). Source path and layout are not part of it: the same data from elsewhere is
    unchanged."""
    digest = hashlib.sha256()
    sets = [{"name": s["name"], "start": s["start"], "stop": s["stop"]} for s in set_ranges(corpus)]
    header = {
        "format": FORMAT,
        "feature_names": corpus.feature_names,
        "feature_sets": sets,
        "fps": corpus.fps,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for video in sorted(corpus.videos, key=lambda v: video_sort_key(v.split, v.video_id)):
        features = np.ascontiguousarray(video.features, dtype=np.float32)
        features = np.where(np.isnan(features), np.float32(np.nan), features)
        digest.update(json.dumps([video.video_id, video.split, list(features.shape)]).encode())
        digest.update(np.ascontiguousarray(np.round(video.time_s, TIME_DECIMALS), dtype=np.float64).tobytes())
        digest.update(features.tobytes())
        for dimension in AFFECT_DIMENSIONS:
            labels = video.labels(dimension)
            digest.update(b"none" if labels is None else np.ascontiguousarray(labels, dtype=np.float32).tobytes())
        if video.ratings:
            digest.update(_ratings_matrix(video, rating_names(corpus)).tobytes())
    return "sha256:" + digest.hexdigest()


# ------------------------------------------------------------------------------------------------------
# writing
def _frames(video: Video) -> np.ndarray:
    time_s = video.time_s
    if time_s.size == 0:
        return np.zeros(0, dtype=np.int32)
    start = int(np.rint(time_s[0] * video.fps))
    return (np.rint((time_s - time_s[0]) * video.fps).astype(np.int64) + start).astype(np.int32)


def dataset_schema(feature_dim: int, metadata: dict[str, str] | None = None, num_ratings: int = 0) -> pa.Schema:
    """The Parquet schema of a dataset file (DESIGN.md section 4); a ``ratings`` column (one value per rater
    named in ``affect.ratings``) when the corpus has per-rater ratings."""
    fields = [
        ("video_id", pa.string()),
        ("split", pa.string()),
        ("frame", pa.int32()),
        ("time_s", pa.float64()),
        ("features", pa.list_(pa.float32(), feature_dim)),
        ("arousal", pa.float32()),
        ("valence", pa.float32()),
    ]
    if num_ratings:
        fields.append(("ratings", pa.list_(pa.float32(), num_ratings)))
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
    dim = schema.field("features").type.list_size
    flat = pa.array(np.ascontiguousarray(video.features, dtype=np.float32).reshape(-1), pa.float32())
    columns = [
        pa.array([video.video_id] * frames, pa.string()),
        pa.array([video.split] * frames, pa.string()),
        pa.array(_frames(video), pa.int32()),
        pa.array(np.round(video.time_s, TIME_DECIMALS), pa.float64()),
        pa.FixedSizeListArray.from_arrays(flat, dim),
    ]
    for dimension in AFFECT_DIMENSIONS:
        labels = video.labels(dimension)
        if labels is None:
            columns.append(pa.nulls(frames, pa.float32()))
        else:
            columns.append(pa.array(np.asarray(labels, dtype=np.float32), pa.float32()))
    if "ratings" in schema.names:
        names = json.loads(schema.metadata[b"affect.ratings"])
        ratings = _ratings_matrix(video, names).reshape(-1)
        columns.append(pa.FixedSizeListArray.from_arrays(pa.array(ratings, pa.float32()), len(names)))
    return pa.Table.from_arrays(columns, schema=schema)


def dataset_metadata(corpus: Corpus, chash: str, layout: str, source: str) -> dict[str, str]:
    """The ``affect.*`` schema metadata keys of a dataset (also copied into the manifest)."""
    sets = [{k: v for k, v in s.items() if k != "names"} for s in set_ranges(corpus)]  # + set, dimension
    extra = {f"{META_PREFIX}{k}": corpus.metadata[k] for k in SOURCE_METADATA if k in corpus.metadata}
    if rating_names(corpus):
        extra[f"{META_PREFIX}ratings"] = json.dumps(rating_names(corpus))
    return {
        **extra,
        "affect.format": FORMAT,
        "affect.feature_set": corpus.feature_set,
        "affect.feature_sets": json.dumps(sets),
        "affect.feature_names": json.dumps(list(corpus.feature_names)),
        "affect.feature_dim": str(corpus.feature_dim),
        "affect.fps": repr(float(corpus.fps)),
        "affect.source": storage.redact(source),
        "affect.layout": layout,
        "affect.content_hash": chash,
    }


def _new_version_id(chash: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{chash.split(':')[-1][:12]}"


def _write_video_file(fs: Any, path: str, table: pa.Table) -> int:
    """Write one video's Parquet file; returns its size in bytes."""
    with fs.open(path, "wb") as handle:
        pq.write_table(table, handle, compression="zstd")
    return int(fs.size(path))


def _check_destination(loc: storage.Location) -> None:
    if storage.exists(loc.fs, loc.path) and not storage.is_dir(loc.fs, loc.path):
        raise AffectError(f"{loc.display()}: exists and is a file; expected a dataset directory (or a new URL)")
    entries = [name for name, _ in storage.list_dir(loc.fs, loc.path) if not name.startswith(".")]
    if entries and MANIFESTS not in entries and VERSIONS not in entries:
        raise AffectError(
            f"{loc.display()}: directory holds {entries[0]!r} and is not an affect dataset (no "
            f"{MANIFESTS}/); "
            "expected an empty directory, a new URL or an existing dataset"
        )


def write_dataset(
    corpus: Corpus,
    dataset_url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    layout: str = "",
    source: str = "",
    progress: bool = True,
) -> tuple[str, str, bool]:
    """Write ``corpus`` as a new dataset version (manifest last). Returns (version, content hash,
    unchanged)."""
    loc = storage.resolve(dataset_url, storage_options)
    _check_destination(loc)
    chash = content_hash(corpus)
    latest = latest_manifest(loc)
    if latest is not None and latest.get("content_hash") == chash:
        return str(latest["version"]), chash, True
    version = _new_version_id(chash)
    metadata = dataset_metadata(corpus, chash, layout or corpus.metadata.get("layout", ""), source or corpus.source)
    schema = dataset_schema(corpus.feature_dim, metadata, len(rating_names(corpus)))
    data_dir = storage.join(loc.path, VERSIONS, version)
    files: list[dict[str, Any]] = []
    videos = sorted(corpus.videos, key=lambda v: video_sort_key(v.split, v.video_id))
    make_dirs = loc.is_local or loc.protocol == "memory"
    from tqdm import tqdm

    try:
        for video in tqdm(videos, desc="ingest", unit="video", disable=not progress, leave=False):
            relative = f"split={video.split}/video_id={video.video_id}/{PART_FILE}"
            path = storage.join(data_dir, relative)
            if make_dirs:
                loc.fs.makedirs(storage.join(data_dir, f"split={video.split}/video_id={video.video_id}"), exist_ok=True)
            size = _write_video_file(loc.fs, path, video_table(video, schema))
            files.append(
                {
                    "path": relative,
                    "video_id": video.video_id,
                    "split": video.split,
                    "rows": video.num_frames,
                    "bytes": size,
                    "labelled": video.labelled,
                }
            )
        manifest = {
            "format": FORMAT,
            "version": version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "content_hash": chash,
            "data_path": f"{VERSIONS}/{version}",
            "rows": int(sum(f["rows"] for f in files)),
            "videos": len(files),
            "metadata": metadata,
            "files": files,
        }
        storage.write_bytes_atomic(
            loc.fs,
            storage.join(loc.path, MANIFESTS, f"{version}.json"),
            json.dumps(manifest, indent=1).encode(),
        )
    except BaseException as exc:
        storage.remove_tree(loc.fs, data_dir)
        if storage.is_store_error(exc):
            raise AffectError(
                f"{loc.display()}: writing version {version} failed ({type(exc).__name__}: "
                f"{storage.redact(str(exc))[:200]}); nothing was published"
            ) from None
        raise
    return version, chash, False


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
    min_face_confidence: float = ReadOptions.min_face_confidence,
) -> IngestResult:
    """Read and validate ``source_root`` (a layout of ``readers.LAYOUTS``), then write it to
    ``dataset_url`` as a new dataset version, or do nothing if the latest version has the same content hash.

    storage_options apply to the dataset URL (and to the source when ``source_storage_options`` is None).
    Raises AffectError on bad input (nothing is written) or when the destination cannot take the dataset."""
    started = time.perf_counter()
    corpus = read_source(
        source_root,
        layout,
        feature_set=feature_set,
        storage_options=source_storage_options if source_storage_options is not None else storage_options,
        fps=fps,
        min_face_confidence=min_face_confidence,
    )
    version, chash, unchanged = write_dataset(
        corpus,
        dataset_url,
        storage_options=storage_options,
        layout=layout,
        source=source_root,
        progress=progress,
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
        mb_per_s=source_bytes / 1e6 / seconds if seconds > 0 else 0.0,
        notes=json.loads(corpus.metadata.get("notes", "[]")),
    )


# ------------------------------------------------------------------------------------------------------
# reading
def list_versions(dataset_url: str, *, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Visible (complete) versions of a dataset, oldest first."""
    return _versions(storage.resolve(dataset_url, storage_options))


def _versions(loc: storage.Location) -> list[str]:
    entries = storage.list_dir(loc.fs, storage.join(loc.path, MANIFESTS))
    return sorted(
        name[: -len(".json")]
        for name, kind in entries
        if kind == "file" and name.endswith(".json") and not name.startswith(".")
    )


def _read_manifest(loc: storage.Location, version: str) -> dict[str, Any]:
    where = loc.display(MANIFESTS, f"{version}.json")
    try:
        manifest = json.loads(storage.read_bytes(loc.fs, storage.join(loc.path, MANIFESTS, f"{version}.json")))
    except FileNotFoundError:
        raise AffectError(f"{where}: manifest not found") from None
    except (ValueError, UnicodeDecodeError):
        raise AffectError(f"{where}: unreadable manifest; expected JSON written by affect ingest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "files" not in manifest:
        raise AffectError(f"{where}: not a manifest of format {FORMAT}")
    return manifest


def latest_manifest(loc: storage.Location) -> dict[str, Any] | None:
    versions = _versions(loc)
    return _read_manifest(loc, versions[-1]) if versions else None


@dataclass
class _Source:
    """A resolved dataset version (manifest) or a bare Parquet features URL (manifest None)."""

    loc: storage.Location
    manifest: dict[str, Any] | None
    versions: list[str]


def _open(dataset_url: str, version: str | None, storage_options: dict[str, Any] | None) -> _Source:
    loc = storage.resolve(dataset_url, storage_options)
    versions = _versions(loc)
    if versions:
        if version is None:
            chosen = versions[-1]
        else:
            matches = [v for v in versions if v == version] or [v for v in versions if v.startswith(version)]
            if len(matches) != 1:
                raise AffectError(
                    f"{loc.display()}: version {version!r} "
                    f"{'is ambiguous' if matches else 'not found'}; available: {', '.join(versions)}"
                )
            chosen = matches[0]
        return _Source(loc, _read_manifest(loc, chosen), versions)
    if version is not None:
        raise AffectError(f"{loc.display()}: no dataset versions (no {MANIFESTS}/); cannot select {version!r}")
    if not storage.exists(loc.fs, loc.path):
        raise AffectError(f"{loc.display()}: does not exist; expected a dataset written by affect ingest")
    if storage.is_dir(loc.fs, loc.path) and storage.exists(loc.fs, storage.join(loc.path, VERSIONS)):
        raise AffectError(
            f"{loc.display()}: no complete dataset version (no manifest in {MANIFESTS}/); an ingest may have "
            "failed before finishing: run it again"
        )
    return _Source(loc, None, [])


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
    ratings = None
    if "ratings" in table.column_names and table.schema.metadata and b"affect.ratings" in table.schema.metadata:
        names = json.loads(table.schema.metadata[b"affect.ratings"])
        matrix = table.column("ratings").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        matrix = matrix.astype(np.float32).reshape(-1, len(names))
        ratings = {name: matrix[:, j].copy() for j, name in enumerate(names) if not np.isnan(matrix[:, j]).all()}
    video = Video(video_id, split, np.ascontiguousarray(features, dtype=np.float32), time_s, fps, **labels)
    video.ratings = ratings or None
    return video


def _feature_matrix(table: pa.Table, where: str) -> np.ndarray:
    if "features" in table.column_names:
        column = table.column("features").combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            dim = column.type.list_size
            values = column.flatten().to_numpy(zero_copy_only=False)
            return values.astype(np.float32, copy=False).reshape(-1, dim)
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


def iter_videos(
    dataset_url: str,
    *,
    splits: Sequence[str] | None = None,
    feature_set: str | Sequence[str] | None = None,
    version: str | None = None,
    storage_options: dict[str, Any] | None = None,
    video_ids: Sequence[str] | None = None,
) -> Iterator[Video]:
    """Stream the videos of a dataset version one at a time (bounded memory), in split then natural id order.

    dataset_url may also be a bare Parquet file or directory in the dataset schema (a "features URL", no
    manifest); its rows must be grouped by video. Labels are None for a video without labels."""
    source = _open(dataset_url, version, storage_options)
    if source.manifest is None:
        yield from _iter_bare(source.loc, splits, feature_set, video_ids)
        return
    manifest = source.manifest
    metadata = manifest["metadata"]
    where = source.loc.display()
    ranges, _, _, _ = _selected_columns(metadata, feature_set, where)
    fps = float(_meta(metadata, "fps"))
    wanted_splits = set(splits) if splits is not None else None
    wanted_ids = set(video_ids) if video_ids is not None else None
    entries = [
        e
        for e in manifest["files"]
        if (wanted_splits is None or e["split"] in wanted_splits)
        and (wanted_ids is None or e["video_id"] in wanted_ids)
    ]
    entries.sort(key=lambda e: video_sort_key(e["split"], e["video_id"]))
    base = storage.join(source.loc.path, manifest["data_path"])
    for entry in entries:
        path = storage.join(base, entry["path"])
        file_where = source.loc.display(manifest["data_path"], entry["path"])
        try:
            with source.loc.fs.open(path, "rb") as handle:
                table = pq.read_table(handle)
        except FileNotFoundError:
            raise AffectError(f"{file_where}: listed in the manifest but missing; the dataset is damaged") from None
        except (OSError, pa.ArrowException) as exc:
            raise AffectError(f"{file_where}: unreadable ({type(exc).__name__})") from None
        yield _to_video(table, ranges, fps, file_where)


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
    version: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Corpus:
    """Read a dataset version (the latest by default) into memory.

    Frames are sorted; features are (T, d) float32 with NaN rows for frames without a face; labels are None
    for unlabelled videos. Raises AffectError for unknown versions, feature sets or splits."""
    info = dataset_info(dataset_url, version=version, storage_options=storage_options)
    if splits is not None:
        unknown = [s for s in splits if s not in info.videos]
        if unknown:
            raise AffectError(
                f"{info.url}: no split {unknown[0]!r} in version {info.version}; available: {', '.join(info.videos)}"
            )
    videos = list(
        iter_videos(
            dataset_url,
            splits=splits,
            feature_set=feature_set,
            version=info.version,
            storage_options=storage_options,
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
    dataset_url: str, *, version: str | None = None, storage_options: dict[str, Any] | None = None
) -> DatasetInfo:
    """Metadata of a dataset version (latest by default): versions, fps, feature sets, video ids per split."""
    source = _open(dataset_url, version, storage_options)
    where = source.loc.display()
    if source.manifest is None:
        return _bare_info(source.loc)
    manifest = source.manifest
    metadata = dict(manifest["metadata"])
    videos: dict[str, list[str]] = {}
    for entry in sorted(manifest["files"], key=lambda e: video_sort_key(e["split"], e["video_id"])):
        videos.setdefault(entry["split"], []).append(entry["video_id"])
    sets = json.loads(_meta(metadata, "feature_sets", "[]"))
    return DatasetInfo(
        url=where,
        version=manifest["version"],
        versions=source.versions,
        content_hash=manifest["content_hash"],
        created_at=manifest.get("created_at", ""),
        fps=float(_meta(metadata, "fps", "nan")),
        feature_set=_meta(metadata, "feature_set"),
        feature_sets={s["name"]: (int(s["start"]), int(s["stop"])) for s in sets},
        feature_names=json.loads(_meta(metadata, "feature_names", "[]")),
        source=_meta(metadata, "source"),
        layout=_meta(metadata, "layout"),
        rows=int(manifest.get("rows", 0)),
        videos=videos,
        metadata=metadata,
    )


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
