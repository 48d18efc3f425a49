"""Readers for the input layouts of DESIGN.md section 4: ``avec2016`` (ARFF), ``csv`` and ``parquet``.

``read_source`` reads and validates a whole corpus into a :class:`~affect_core.data.records.Corpus`; nothing
is written. Every problem is an AffectError naming the file, the row or attribute and what was expected."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from affect_core import storage
from affect_core.data.arff_format import NUMERIC_TYPES, read_arff
from affect_core.data.records import AFFECT_DIMENSIONS, SPLITS, Corpus, Video
from affect_core.data.tables import MAX_ROWS, FileTable, read_csv_table, read_parquet_table, split_by_video
from affect_core.errors import AffectError

LAYOUTS = ("avec2016", "csv", "parquet", "video")
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


def _fail(where: str, problem: str) -> AffectError:
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
    video_id: str
    split: str
    features: dict[str, Track] = field(default_factory=dict)
    labels: dict[str, tuple[Track, int]] = field(default_factory=dict)


def check_video_id(video_id: str, where: str) -> str:
    """Return ``video_id`` if it is a safe single path component; raise AffectError otherwise."""
    text = str(video_id)
    if "/" in text or "\\" in text or text.startswith(".") or ".." in text or text.startswith("~"):
        raise _fail(
            where,
            f"video id {text[:80]!r} would escape the dataset root; expected a plain name without path "
            "separators, '..' or a leading '.'",
        )
    if not _VIDEO_ID.match(text):
        raise _fail(
            where,
            f"video id {text[:80]!r} is not valid; expected letters, digits, '_', '-' or '.' "
            "(starting with a letter or digit, at most 200 characters)",
        )
    return text


def check_split(split: str, where: str) -> str:
    if split not in SPLITS:
        raise _fail(where, f"unknown split {str(split)[:40]!r}; expected one of {', '.join(SPLITS)}")
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
            raise _fail(where, f"unknown feature set {name!r}; available: {', '.join(available) or '(none)'}")
    return wanted


def _natural_key(text: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def video_sort_key(split: str, video_id: str) -> tuple[object, ...]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split, _natural_key(video_id))


# ---------------------------------------------------------------------------------------------------------
# tracks
def _split_axes(table: FileTable, kind: str) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """Pull the time / frame columns out of a table; the rest are value columns."""
    time_names = [n for n in TIME_COLUMNS if n in table.columns]
    if len(time_names) > 1:
        raise _fail(table.where, f"both {time_names[0]!r} and {time_names[1]!r} columns; expected one time column")
    time_s = table.columns[time_names[0]] if time_names else None
    frame = table.columns.get(FRAME_COLUMN)
    if time_s is None and frame is None:
        raise _fail(
            table.where,
            f"missing attribute 'frameTime' (or 'frame'); expected a time axis column in every {kind} file",
        )
    rest = [n for n in table.names if n not in TIME_COLUMNS and n != FRAME_COLUMN]
    return time_s, frame, rest


def feature_track(table: FileTable) -> Track:
    time_s, frame, names = _split_axes(table, "features")
    if not names:
        raise _fail(table.where, "no feature columns; expected numeric feature columns after the time axis")
    values = np.column_stack([table.columns[n] for n in names]) if names else np.zeros((table.num_rows, 0))
    return Track(table.where, names, values, time_s, frame, table.row_ref)


def label_track(table: FileTable) -> Track:
    time_s, frame, names = _split_axes(table, "labels")
    expected = list(AFFECT_DIMENSIONS)
    missing = [n for n in expected if n not in names]
    extra = [n for n in names if n not in expected]
    if missing:
        raise _fail(
            table.where,
            f"missing attribute {missing[0]!r}; expected columns frameTime (or frame), arousal, valence",
        )
    if extra:
        raise _fail(
            table.where,
            f"unexpected attribute {extra[0]!r}; expected columns frameTime (or frame), arousal, valence",
        )
    values = np.column_stack([table.columns[n] for n in expected])
    return Track(table.where, expected, values, time_s, frame, table.row_ref)


def _arff_track(data: bytes, where: str, *, labels: bool) -> Track:
    table = read_arff(data, where)
    kinds = dict(table.attributes)
    names = [n for n, _ in table.attributes]
    for required in (INSTANCE_NAME, "frameTime"):
        if required not in kinds:
            expected = "Instance_name, frameTime, GoldStandard" if labels else "Instance_name, frameTime, features"
            raise _fail(where, f"missing attribute {required!r}; expected attributes {expected}")
    if kinds["frameTime"] not in NUMERIC_TYPES:
        raise _fail(where, f"attribute 'frameTime' is {kinds['frameTime']}; expected numeric (seconds)")
    value_names = [n for n in names if n not in (INSTANCE_NAME, "frameTime")]
    for name in value_names:
        if kinds[name] not in NUMERIC_TYPES:
            raise _fail(
                where,
                f"attribute {name!r} is {kinds[name] if isinstance(kinds[name], str) else 'nominal'}; expected numeric",
            )
    if table.num_rows > MAX_ROWS:
        raise _fail(where, f"{table.num_rows} rows, more than the limit of {MAX_ROWS} frames per video")
    if labels:
        if GOLD_STANDARD not in value_names:
            raise _fail(
                where,
                "missing attribute 'GoldStandard'; expected attributes Instance_name, frameTime, GoldStandard",
            )
        extra = [n for n in value_names if n != GOLD_STANDARD]
        if extra:
            raise _fail(
                where,
                f"unexpected attribute {extra[0]!r}; expected attributes Instance_name, frameTime, GoldStandard",
            )
    elif not value_names:
        raise _fail(where, "no feature attributes; expected numeric attributes after frameTime")
    values = np.column_stack([table.columns[n] for n in value_names])
    return Track(where, value_names, values, table.columns["frameTime"], None, table.row_ref)


# --------------------------------------------------------------------------------------------------------
# layouts
@dataclass
class _Reader:
    loc: storage.Location
    bytes_read: int = 0

    def read(self, *parts: str) -> bytes:
        path = storage.join(self.loc.path, *parts)
        try:
            data = storage.read_bytes(self.loc.fs, path)
        except FileNotFoundError:
            raise _fail(self.loc.display(*parts), "file not found") from None
        except (IsADirectoryError, PermissionError) as exc:
            raise _fail(self.loc.display(*parts), f"cannot be read ({type(exc).__name__})") from None
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


def _stem(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if name.endswith(suffix) else name


def _avec_split(video_id: str, where: str) -> str:
    prefix = video_id.split("_", 1)[0]
    if prefix not in SPLITS:
        raise _fail(where, f"unknown split {prefix!r} in file name; expected names like train_1, dev_1, test_1")
    return prefix


def _set_name_avec(folder: str) -> str:
    name = folder[len("features_") :]
    return name[len("video_") :] if name.startswith("video_") and len(name) > len("video_") else name


def _read_avec2016(reader: _Reader, feature_set: str | Sequence[str] | None) -> tuple[list[SourceVideo], list[str]]:
    folders = [f for f in reader.folders() if f.startswith("features_") and len(f) > len("features_")]
    if not folders:
        raise _fail(
            reader.loc.display(),
            "no features_* folder; expected ROOT/features_video_appearance/*.arff (avec2016 layout)",
        )
    by_name: dict[str, str] = {}
    for folder in folders:
        name = _set_name_avec(folder)
        if name in by_name:
            raise _fail(
                reader.loc.display(folder),
                f"feature set name {name!r} also used by {by_name[name]}; expected one folder per feature set",
            )
        by_name[name] = folder
    chosen = select_feature_sets(sorted(by_name), feature_set, reader.loc.display())
    videos: dict[str, SourceVideo] = {}
    for set_name in chosen:
        folder = by_name[set_name]
        files = reader.files(folder, ".arff")
        if not files:
            raise _fail(reader.loc.display(folder), "no .arff files; expected one <video_id>.arff per video")
        for name in files:
            where = reader.loc.display(folder, name)
            video_id = check_video_id(_stem(name, ".arff"), where)
            split = _avec_split(video_id, where)
            video = videos.setdefault(video_id, SourceVideo(video_id, split))
            video.features[set_name] = _arff_track(reader.read(folder, name), where, labels=False)
    for dimension in AFFECT_DIMENSIONS:
        folder = f"ratings_gold_standard/{dimension}"
        for name in reader.files(folder, ".arff"):
            where = reader.loc.display(folder, name)
            video_id = check_video_id(_stem(name, ".arff"), where)
            if video_id not in videos:
                raise _fail(
                    where,
                    f"labels for video {video_id!r} but no features file; expected "
                    f"{by_name[chosen[0]]}/{video_id}.arff",
                )
            videos[video_id].labels[dimension] = (
                _arff_track(reader.read(folder, name), where, labels=True),
                0,
            )
    return list(videos.values()), chosen


def _read_partition(reader: _Reader, table_format: str) -> tuple[dict[str, str], str]:
    """video id -> split from ROOT/partition.csv (or partition.parquet for the parquet layout)."""
    candidates = ["partition.csv"] if table_format == "csv" else ["partition.parquet", "partition.csv"]
    name = next((c for c in candidates if reader.loc.exists(c)), None)
    if name is None:
        raise _fail(
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
            raise _fail(where, f"missing attribute {column!r}; expected columns video_id, split")
    extra = [n for n in table.names if n not in columns]
    if extra:
        raise _fail(where, f"unexpected attribute {extra[0]!r}; expected columns video_id, split")
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
        raise _fail(where, "no videos; expected one row per video")
    return partition, where


def _read_table_file(reader: _Reader, folder: str, name: str, table_format: str) -> FileTable:
    where = reader.loc.display(folder, name)
    data = reader.read(folder, name)
    return read_csv_table(data, where) if table_format == "csv" else read_parquet_table(data, where)


def _read_parquet_tables(
    reader: _Reader, feature_set: str | Sequence[str] | None, partition: dict[str, str], partition_where: str
) -> tuple[list[SourceVideo], list[str]]:
    """ROOT/features.parquet and ROOT/labels.parquet, each one table with a video_id column."""
    where = reader.loc.display("features.parquet")
    table = read_parquet_table(reader.read("features.parquet"), where, string_columns=("video_id",))
    if "video_id" not in table.columns:
        raise _fail(where, "missing attribute 'video_id'; expected columns video_id, frameTime, features")
    per_video = split_by_video(table)
    _, _, value_names = _split_axes(next(iter(per_video.values())), "features")
    sets = _sets_from_metadata(table.metadata.get("affect.feature_sets"), value_names)
    chosen = select_feature_sets(list(sets), feature_set, reader.loc.display())
    videos: dict[str, SourceVideo] = {}
    for video_id, video_table in per_video.items():
        ref = f"{where}: video {video_id[:80]!r}"
        check_video_id(video_id, ref)
        if video_id not in partition:
            raise _fail(ref, f"not listed in {partition_where}; expected a split for every video")
        track = feature_track(video_table)
        video = videos.setdefault(video_id, SourceVideo(video_id, partition[video_id]))
        for set_name in chosen:
            start, stop = sets[set_name]
            video.features[set_name] = Track(
                track.where,
                track.names[start:stop],
                track.values[:, start:stop],
                track.time_s,
                track.frame,
                track.row_ref,
            )
    missing = [v for v in partition if v not in videos]
    if missing:
        raise _fail(
            where,
            f"no rows for video {missing[0]!r} listed in {partition_where}; expected features for every video",
        )
    if reader.loc.exists("labels.parquet"):
        where = reader.loc.display("labels.parquet")
        labels = read_parquet_table(reader.read("labels.parquet"), where, string_columns=("video_id",))
        if "video_id" not in labels.columns:
            raise _fail(where, "missing attribute 'video_id'; expected columns video_id, frameTime, arousal, valence")
        for video_id, video_table in split_by_video(labels).items():
            ref = f"{where}: video {video_id[:80]!r}"
            check_video_id(video_id, ref)
            if video_id not in videos:
                raise _fail(
                    ref,
                    "labels but no features in features.parquet; expected features for every labelled video",
                )
            track = label_track(video_table)
            for column, dimension in enumerate(AFFECT_DIMENSIONS):
                videos[video_id].labels[dimension] = (track, column)
    return list(videos.values()), chosen


def _sets_from_metadata(raw: str | None, names: list[str]) -> dict[str, tuple[int, int]]:
    """Feature sets recorded in features.parquet's ``affect.feature_sets`` ({name: dim} in column order), when
    they add up to the feature columns; otherwise one set named "features"."""
    if raw:
        try:
            dims = json.loads(raw)
            if (
                isinstance(dims, dict)
                and all(isinstance(d, int) and d > 0 for d in dims.values())
                and sum(dims.values()) == len(names)
            ):
                out, start = {}, 0
                for name, dim in dims.items():
                    out[str(name)] = (start, start + dim)
                    start += dim
                return out
        except ValueError:
            pass
    return {"features": (0, len(names))}


def _read_tables(
    reader: _Reader, feature_set: str | Sequence[str] | None, table_format: str
) -> tuple[list[SourceVideo], list[str]]:
    suffix = "." + table_format
    partition, partition_where = _read_partition(reader, table_format)
    if table_format == "parquet" and reader.loc.exists("features.parquet"):
        return _read_parquet_tables(reader, feature_set, partition, partition_where)
    folders = {
        ("features" if f == "features" else f[len("features_") :]): f
        for f in reader.folders()
        if f == "features" or (f.startswith("features_") and len(f) > 9)
    }
    if not folders:
        raise _fail(
            reader.loc.display(),
            f"no features folder; expected ROOT/features/<video_id>{suffix} ({table_format} layout)",
        )
    chosen = select_feature_sets(sorted(folders), feature_set, reader.loc.display())
    videos: dict[str, SourceVideo] = {}
    for set_name in chosen:
        folder = folders[set_name]
        files = reader.files(folder, suffix)
        if not files:
            raise _fail(reader.loc.display(folder), f"no {suffix} files; expected one <video_id>{suffix} per video")
        seen = set()
        for name in files:
            where = reader.loc.display(folder, name)
            video_id = check_video_id(_stem(name, suffix), where)
            if video_id not in partition:
                raise _fail(
                    where,
                    f"video {video_id!r} is not listed in {partition_where}; expected a split for every video",
                )
            seen.add(video_id)
            video = videos.setdefault(video_id, SourceVideo(video_id, partition[video_id]))
            video.features[set_name] = feature_track(_read_table_file(reader, folder, name, table_format))
        missing = [v for v in partition if v not in seen]
        if missing:
            raise _fail(
                reader.loc.display(folder),
                f"no features file for video {missing[0]!r} listed in "
                f"{partition_where}; expected {folder}/{missing[0]}{suffix}",
            )
    for name in reader.files("labels", suffix):
        where = reader.loc.display("labels", name)
        video_id = check_video_id(_stem(name, suffix), where)
        if video_id not in videos:
            raise _fail(
                where,
                f"labels for video {video_id!r} but no features file; expected {folders[chosen[0]]}/{video_id}{suffix}",
            )
        track = label_track(_read_table_file(reader, "labels", name, table_format))
        for column, dimension in enumerate(AFFECT_DIMENSIONS):
            videos[video_id].labels[dimension] = (track, column)
    return list(videos.values()), chosen


# ------------------------------------------------------------------------------------------------------
# validation
def _check_raw_axis(track: Track) -> None:
    """Finite, strictly increasing time and frame columns."""
    for name, axis in (("frameTime", track.time_s), ("frame", track.frame)):
        if axis is None:
            continue
        bad = np.flatnonzero(~np.isfinite(axis))
        if bad.size:
            raise _fail(
                track.where,
                f"{track.row_ref(bad[0])}, attribute {name!r}: missing or non-finite value; expected a number",
            )
        if name == "frame":
            if np.any(axis != np.round(axis)) or np.any(np.abs(axis) > np.iinfo(np.int32).max):
                row = int(np.flatnonzero((axis != np.round(axis)) | (np.abs(axis) > np.iinfo(np.int32).max))[0])
                raise _fail(
                    track.where,
                    f"{track.row_ref(row)}, attribute 'frame': {axis[row]!r} is not a frame "
                    "number; expected an integer below 2^31",
                )
        steps = np.diff(axis)
        bad = np.flatnonzero(steps <= 0)
        if bad.size:
            row = int(bad[0]) + 1
            what = "duplicated" if steps[bad[0]] == 0 else "decreasing"
            raise _fail(
                track.where,
                f"{track.row_ref(row)}, attribute {name!r}: {what} {name} {axis[row]:g} after "
                f"{axis[row - 1]:g}; expected strictly increasing values",
            )


def _frames(track: Track, fps: float) -> np.ndarray:
    """Integer frame numbers of a track at ``fps`` (given frames, else times rounded relative to the
    first)."""
    if track.frame is not None:
        return track.frame.astype(np.int64)
    assert track.time_s is not None
    start = int(np.rint(track.time_s[0] * fps))
    return np.rint((track.time_s - track.time_s[0]) * fps).astype(np.int64) + start


def _check_frames(track: Track, frames: np.ndarray, fps: float) -> None:
    steps = np.diff(frames)
    bad = np.flatnonzero(steps != 1)
    if not bad.size:
        return
    row = int(bad[0]) + 1
    times = track.time_s if track.time_s is not None else frames / fps
    if steps[bad[0]] > 1:
        problem = (
            f"gap in the time axis: frameTime jumps from {times[row - 1]:g} to {times[row]:g} s "
            f"({int(steps[bad[0]]) - 1} frame(s) missing at {fps:g} fps)"
        )
    else:
        problem = f"frameTime {times[row]:g} repeats the frame of {times[row - 1]:g} at {fps:g} fps (duplicated)"
    raise _fail(track.where, f"{track.row_ref(row)}: {problem}; expected one row every {1 / fps:g} s")


def _corpus_fps(tracks: list[Track], fps: float | None, where: str) -> float:
    """The corpus frame rate: from the time axes (frameTime) when the files have them, else the given ``fps``. A
    given rate must be a positive number and, where the files have time axes, agree with them."""
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise _fail(where, f"fps={fps:g}: expected a positive frame rate in frames per second (e.g. 25)")
    steps = [np.diff(t.time_s) for t in tracks if t.time_s is not None and t.num_rows > 1]
    if not steps:
        if any(t.time_s is not None for t in tracks) or fps is None:
            raise _fail(
                where,
                "cannot determine the frame rate: no video has a time axis with two or more frames "
                "(frameTime in seconds); expected frameTime columns, or pass fps= for frame-numbered files",
            )
        return float(fps)
    median = float(np.median(np.concatenate(steps)))
    measured = float(round(1.0 / median, 6))
    if fps is not None and abs(fps / measured - 1.0) > FPS_TOLERANCE:
        raise _fail(
            where,
            f"fps={fps:g} contradicts the files' time axes ({measured:g} fps from the median frameTime step "
            f"{median:g} s); leave fps out for files with frameTime, or fix the files",
        )
    return measured


def _check_track_rate(track: Track, fps: float) -> None:
    if track.time_s is None or track.num_rows < 3:
        return
    own = float(np.median(np.diff(track.time_s)))
    if abs(own * fps - 1.0) > FPS_TOLERANCE:
        raise _fail(
            track.where,
            f"frame rate {1 / own:g} fps (median frameTime step {own:g} s) differs from the "
            f"corpus frame rate {fps:g} fps; expected one frame rate per corpus",
        )


def _check_values(track: Track, *, labels: bool, column: int | None = None) -> None:
    values = track.values if column is None else track.values[:, column : column + 1]
    names = track.names if column is None else [track.names[column]]
    if labels:
        bad = ~np.isfinite(values) | (np.abs(values) > 1.0)
    else:
        bad = np.isinf(values) | (np.isfinite(values) & (np.abs(values) > np.finfo(np.float32).max))
    if not bad.any():
        return
    row, col = (int(i) for i in np.argwhere(bad)[0])
    value = values[row, col]
    name = names[col] if not labels or column is not None else track.names[col]
    if labels:
        expected = "expected a label in [-1, 1]"
        what = (
            "missing (NaN/'?')"
            if np.isnan(value)
            else ("infinite" if np.isinf(value) else f"{value:g} is outside [-1, 1]")
        )
    else:
        expected = "expected a finite number, or '?'/NaN for a frame without a face"
        what = f"{value:g} is not finite in float32"
    raise _fail(track.where, f"{track.row_ref(row)}, attribute {name!r}: {what}; {expected}")


def assemble_corpus(
    videos: list[SourceVideo],
    sets: list[str],
    *,
    source: str,
    layout: str,
    fps: float | None = None,
) -> Corpus:
    """Validate the tracks of every video against each other and build the Corpus (features of ``sets``
    fused)."""
    if not videos:
        raise _fail(source, "empty corpus: no videos found; expected feature files for at least one video")
    videos = sorted(videos, key=lambda v: video_sort_key(v.split, v.video_id))
    # Every video has every chosen set; each set has one attribute list across videos.
    reference: dict[str, Track] = {}
    for video in videos:
        for set_name in sets:
            track = video.features.get(set_name)
            if track is None:
                other = next(iter(video.features.values()))
                raise _fail(
                    other.where,
                    f"video {video.video_id!r} has no file in feature set {set_name!r}; "
                    "expected every video in every feature set",
                )
            ref = reference.setdefault(set_name, track)
            if track.names != ref.names:
                missing = [n for n in ref.names if n not in track.names]
                extra = [n for n in track.names if n not in ref.names]
                if len(track.names) != len(ref.names):
                    detail = f"feature dimension {len(track.names)} differs from {len(ref.names)} in {ref.where}"
                else:
                    detail = "attributes differ from " + ref.where
                if missing:
                    detail += f"; missing attribute {missing[0]!r}"
                if extra:
                    detail += f"; extra attribute {extra[0]!r}"
                if not missing and not extra:
                    detail += "; attributes are in a different order"
                raise _fail(track.where, f"{detail}; expected the same attributes in every video")
    tracks = [t for v in videos for t in v.features.values()] + [t for v in videos for t, _ in v.labels.values()]
    for track in tracks:
        _check_raw_axis(track)
    fps_value = _corpus_fps([v.features[sets[0]] for v in videos], fps, source)
    out: list[Video] = []
    for video in videos:
        main = video.features[sets[0]]
        _check_track_rate(main, fps_value)
        frames = _frames(main, fps_value)
        _check_frames(main, frames, fps_value)
        for set_name in sets[1:]:
            other = video.features[set_name]
            _check_track_rate(other, fps_value)
            _check_same_axis(other, _frames(other, fps_value), main, frames, "features")
        blocks = []
        for set_name in sets:
            track = video.features[set_name]
            _check_values(track, labels=False)
            blocks.append(track.values)
        labels: dict[str, np.ndarray | None] = {d: None for d in AFFECT_DIMENSIONS}
        for dimension, (track, column) in video.labels.items():
            if track.names != [GOLD_STANDARD] and np.isnan(track.values[:, column]).all():
                continue  # a table layout writes NaN for the whole track of a dimension the video lacks
            _check_track_rate(track, fps_value)
            _check_same_axis(track, _frames(track, fps_value), main, frames, "labels")
            _check_values(track, labels=True, column=column)
            labels[dimension] = track.values[:, column].astype(np.float32)
        time_s = main.time_s.astype(np.float64) if main.time_s is not None else frames / fps_value
        # Text and binary layouts of the same times differ in the last bits (0.12 vs 0.12000000000000001).
        time_s = np.round(time_s, TIME_DECIMALS)
        features = np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)
        out.append(
            Video(
                video.video_id,
                video.split,
                features,
                np.asarray(time_s, dtype=np.float64),
                fps_value,
                arousal=labels["arousal"],
                valence=labels["valence"],
            )
        )
    all_names = [n for set_name in sets for n in reference[set_name].names]
    qualify = len(set(all_names)) != len(all_names)  # sets sharing attribute names: prefix them with the set
    feature_names, ranges, start = [], [], 0
    for set_name in sets:
        names = reference[set_name].names
        feature_names += [f"{set_name}:{n}" for n in names] if qualify else list(names)
        ranges.append({"name": set_name, "start": start, "stop": start + len(names), "names": list(names)})
        start += len(names)
    metadata = {"feature_sets": json.dumps(ranges), "layout": layout, "source": source}
    return Corpus(out, feature_names, fps_value, feature_set="+".join(sets), source=source, metadata=metadata)


def _check_same_axis(track: Track, frames: np.ndarray, main: Track, main_frames: np.ndarray, kind: str) -> None:
    if track.num_rows != main.num_rows:
        raise _fail(
            track.where,
            f"{track.num_rows} {kind} rows but {main.num_rows} feature rows in {main.where}; "
            "expected one row per feature frame on the same time axis",
        )
    bad = np.flatnonzero(frames != main_frames)
    if bad.size:
        row = int(bad[0])
        mine = track.time_s[row] if track.time_s is not None else frames[row]
        theirs = main.time_s[row] if main.time_s is not None else main_frames[row]
        raise _fail(
            track.where,
            f"{track.row_ref(row)}: frameTime {mine:g} disagrees with {theirs:g} in "
            f"{main.where}; expected the same time axis as the features",
        )


def read_source(
    root: str,
    layout: str,
    *,
    feature_set: str | Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    fps: float | None = None,
) -> Corpus:
    """Read and validate a corpus in one of the input layouts (``avec2016``, ``csv``, ``parquet``).

    root: a local path or fsspec URL. feature_set: a set name (``"appearance"``), several joined by ``+`` or a
    list (concatenated in that order: early fusion), or None for every set. fps: only for files that have a
    frame column and no frameTime; otherwise the frame rate is the median frame step of the data. Returns a
    Corpus whose ``metadata`` holds ``feature_sets`` (JSON list of {name, start, stop, names}), ``layout``,
    ``source`` and ``source_bytes``. Raises AffectError on any bad input."""
    if layout not in LAYOUTS:
        raise AffectError(f"layout {layout!r}: unknown input layout; expected one of {', '.join(LAYOUTS)}")
    if layout == "video":
        from affect_core.video.layout import read_video_source

        return read_video_source(root, storage_options=storage_options)
    loc = storage.resolve(root, storage_options)
    if not storage.is_dir(loc.fs, loc.path):
        problem = "is a file" if storage.exists(loc.fs, loc.path) else "does not exist"
        raise _fail(loc.display(), f"source {problem}; expected a directory in the {layout} layout")
    reader = _Reader(loc)
    if layout == "avec2016":
        videos, sets = _read_avec2016(reader, feature_set)
    else:
        videos, sets = _read_tables(reader, feature_set, layout)
    corpus = assemble_corpus(videos, sets, source=loc.display(), layout=layout, fps=fps)
    corpus.metadata["source_bytes"] = str(reader.bytes_read)
    return corpus


def set_ranges(corpus: Corpus) -> list[dict[str, Any]]:
    """The feature sets of a corpus as [{name, start, stop, names}] (one set spanning everything if
    unrecorded)."""
    raw = corpus.metadata.get("feature_sets")
    if raw:
        return list(json.loads(raw))
    return [
        {
            "name": corpus.feature_set,
            "start": 0,
            "stop": corpus.feature_dim,
            "names": list(corpus.feature_names),
        }
    ]
