"""Shared pieces of the input-layout readers: per-file tracks, the source folder, ids, splits and feature-set
selection. Each layout module (``affect_core.data.layouts.*``) turns its files into :class:`SourceRead`;
``affect_core.data.readers`` validates and assembles it into a Corpus."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from affect_core import storage
from affect_core.data.records import AFFECT_DIMENSIONS, SPLITS
from affect_core.data.tables import FileTable, read_csv_table, read_parquet_table
from affect_core.errors import AffectError

TIME_COLUMNS = ("frameTime", "time_s")
FRAME_COLUMN = "frame"
INSTANCE_NAME = "Instance_name"
GOLD_STANDARD = "GoldStandard"
# Frame steps further than this share from the median step are gaps (or doubled frames), not timing jitter.
STEP_TOLERANCE = 0.5
# A video whose own median frame step differs from the corpus's by more than this share has another frame
# rate.
FPS_TOLERANCE = 0.02
# Frame times are kept to the nanosecond, so that every layout of the same times gives the same numbers.
TIME_DECIMALS = 9
_VIDEO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


def fail(where: str, problem: str) -> AffectError:
    return AffectError(f"{where}: {problem}")


@dataclass
class Track:
    """Per-frame values read from one file, before validation.

    values: (T, k) float64 with the columns ``names``; time_s / frame: (T,) or None when the file lacks that
    axis."""

    where: str
    names: list[str]
    values: np.ndarray
    time_s: np.ndarray | None
    frame: np.ndarray | None
    row_ref: Any

    @property
    def num_rows(self) -> int:
        return int(self.values.shape[0])


@dataclass
class SourceVideo:
    """The tracks read for one video. features: feature-set key -> track; labels: dimension -> (track, column);
    ratings: "<dimension>/<rater>" -> (track, column), one annotator's trace each."""

    video_id: str
    split: str
    features: dict[str, Track] = field(default_factory=dict)
    labels: dict[str, tuple[Track, int]] = field(default_factory=dict)
    ratings: dict[str, tuple[Track, int]] = field(default_factory=dict)


@dataclass
class ReadOptions:
    """Options of ``read_source`` that some layouts use.

    fps: the frame rate of files that number frames and have no time column (py-feat's CSV, csv files with a
    frame column). min_face_confidence: OpenFace/py-feat rows below it are frames without a face."""

    fps: float | None = None
    min_face_confidence: float = 0.5


@dataclass
class SourceRead:
    """What a layout reader found, before the cross-file checks of ``assemble_corpus``.

    sets: feature-set keys in fusion order. set_info: key -> {"set": name, "dimension": "arousal"|"valence"}
    for sets that exist once per affect dimension (a model of a dimension reads only its own).
    labels_by_time: label tracks may have their own rate and offset and are put on the feature frames by
    time (``readers.labels_on_frames``); NaN labels are unlabelled frames. Otherwise every label track must
    share the feature frames and hold a label on every row. fps_from_span: the frame rate is frames over
    duration of each video (OpenFace prints times to the millisecond) instead of the median step.
    metadata: recorded in the Corpus (and the dataset). notes: lines for the user (e.g. skipped folders)."""

    videos: list[SourceVideo]
    sets: list[str]
    set_info: dict[str, dict[str, str]] = field(default_factory=dict)
    labels_by_time: bool = False
    fps_from_span: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def check_video_id(video_id: str, where: str) -> str:
    """Return ``video_id`` if it is a safe single path component; raise AffectError otherwise."""
    text = str(video_id)
    if "/" in text or "\\" in text or text.startswith(".") or ".." in text or text.startswith("~"):
        raise fail(
            where,
            f"video id {text[:80]!r} would escape the dataset root; expected a plain name without path "
            "separators, '..' or a leading '.'",
        )
    if not _VIDEO_ID.match(text):
        raise fail(
            where,
            f"video id {text[:80]!r} is not valid; expected letters, digits, '_', '-' or '.' "
            "(starting with a letter or digit, at most 200 characters)",
        )
    return text


def check_split(split: str, where: str) -> str:
    if split not in SPLITS:
        raise fail(where, f"unknown split {str(split)[:40]!r}; expected one of {', '.join(SPLITS)}")
    return split


def parse_feature_sets(feature_set: str | Sequence[str] | None) -> list[str] | None:
    """``"appearance"``, ``"appearance+geometric"``, ``"a,b"`` or a list -> list of names; None means all
    sets."""
    if feature_set is None:
        return None
    names = re.split(r"[+,]", feature_set) if isinstance(feature_set, str) else list(feature_set)
    names = [n.strip() for n in names if n and n.strip()]
    return names or None


def select_feature_sets(available: Sequence[str], feature_set: str | Sequence[str] | None, where: str) -> list[str]:
    wanted = parse_feature_sets(feature_set)
    if wanted is None:
        return list(available)
    for name in wanted:
        if name not in available:
            raise fail(where, f"unknown feature set {name!r}; available: {', '.join(available) or '(none)'}")
    return wanted


def _natural_key(text: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def video_sort_key(split: str, video_id: str) -> tuple[object, ...]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split, _natural_key(video_id))


# ---------------------------------------------------------------------------------------------------------
# tracks
def split_axes(table: FileTable, kind: str) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """Pull the time / frame columns out of a table; the rest are value columns."""
    time_names = [n for n in TIME_COLUMNS if n in table.columns]
    if len(time_names) > 1:
        raise fail(table.where, f"both {time_names[0]!r} and {time_names[1]!r} columns; expected one time column")
    time_s = table.columns[time_names[0]] if time_names else None
    frame = table.columns.get(FRAME_COLUMN)
    if time_s is None and frame is None:
        raise fail(
            table.where,
            f"missing attribute 'frameTime' (or 'frame'); expected a time axis column in every {kind} file",
        )
    rest = [n for n in table.names if n not in TIME_COLUMNS and n != FRAME_COLUMN]
    return time_s, frame, rest


def feature_track(table: FileTable) -> Track:
    time_s, frame, names = split_axes(table, "features")
    if not names:
        raise fail(table.where, "no feature columns; expected numeric feature columns after the time axis")
    values = np.column_stack([table.columns[n] for n in names]) if names else np.zeros((table.num_rows, 0))
    return Track(table.where, names, values, time_s, frame, table.row_ref)


def label_track(table: FileTable) -> Track:
    time_s, frame, names = split_axes(table, "labels")
    expected = list(AFFECT_DIMENSIONS)
    missing = [n for n in expected if n not in names]
    extra = [n for n in names if n not in expected]
    if missing:
        raise fail(
            table.where,
            f"missing attribute {missing[0]!r}; expected columns frameTime (or frame), arousal, valence",
        )
    if extra:
        raise fail(
            table.where,
            f"unexpected attribute {extra[0]!r}; expected columns frameTime (or frame), arousal, valence",
        )
    values = np.column_stack([table.columns[n] for n in expected])
    return Track(table.where, expected, values, time_s, frame, table.row_ref)


@dataclass
class SourceFiles:
    """The source folder a layout reader reads: files by relative path, counting the bytes read."""

    loc: storage.Location
    bytes_read: int = 0

    def read(self, *parts: str) -> bytes:
        path = storage.join(self.loc.path, *parts)
        try:
            data = storage.read_bytes(self.loc.fs, path)
        except FileNotFoundError:
            raise fail(self.loc.display(*parts), "file not found") from None
        except (IsADirectoryError, PermissionError) as exc:
            raise fail(self.loc.display(*parts), f"cannot be read ({type(exc).__name__})") from None
        self.bytes_read += len(data)
        return data

    def files(self, folder: str, suffix: str) -> list[str]:
        """Names of the files ending in ``suffix`` directly in ``folder`` (hidden files skipped)."""
        entries = storage.list_dir(self.loc.fs, storage.join(self.loc.path, folder))
        return sorted(
            name
            for name, kind in entries
            if kind == "file" and name.endswith(suffix) and not name.startswith((".", "_"))
        )

    def folders(self, folder: str = "") -> list[str]:
        entries = storage.list_dir(self.loc.fs, storage.join(self.loc.path, folder) if folder else self.loc.path)
        return [name for name, kind in entries if kind == "directory"]


def stem(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if name.endswith(suffix) else name


def read_partition(reader: SourceFiles, table_format: str) -> tuple[dict[str, str], str]:
    """video id -> split from ROOT/partition.csv (or partition.parquet for the parquet layout)."""
    candidates = ["partition.csv"] if table_format == "csv" else ["partition.parquet", "partition.csv"]
    name = next((c for c in candidates if reader.loc.exists(c)), None)
    if name is None:
        raise fail(
            reader.loc.display(candidates[0]),
            "file not found; expected a partition table with columns video_id, split",
        )
    where = reader.loc.display(name)
    data = reader.read(name)
    columns = ("video_id", "split")
    if name.endswith(".csv"):
        table = read_csv_table(data, where, string_columns=columns)
    else:
        table = read_parquet_table(data, where, string_columns=columns)
    for column in columns:
        if column not in table.columns:
            raise fail(where, f"missing attribute {column!r}; expected columns video_id, split")
    extra = [n for n in table.names if n not in columns]
    if extra:
        raise fail(where, f"unexpected attribute {extra[0]!r}; expected columns video_id, split")
    partition: dict[str, str] = {}
    first_row: dict[str, int] = {}
    for row, (video_id, split) in enumerate(zip(table.columns["video_id"], table.columns["split"], strict=False)):
        ref = f"{where}: {table.row_ref(row)}"
        if not str(split).strip():
            raise AffectError(f"{ref}: missing split for video {str(video_id)[:80]!r}; expected train, dev or test")
        check_video_id(str(video_id), ref)
        check_split(str(split), ref)
        if video_id in partition:
            raise AffectError(
                f"{ref}: duplicate video id {video_id!r} (already in split {partition[video_id]!r} at "
                f"{table.row_ref(first_row[video_id])}); expected each video once"
            )
        partition[str(video_id)] = str(split)
        first_row[str(video_id)] = row
    if not partition:
        raise fail(where, "no videos; expected one row per video")
    return partition, where


def read_table_file(reader: SourceFiles, folder: str, name: str, table_format: str) -> FileTable:
    where = reader.loc.display(folder, name)
    data = reader.read(folder, name)
    return read_csv_table(data, where) if table_format == "csv" else read_parquet_table(data, where)
