"""The ``muse`` layout: the MuSe 2021-2023 challenge data as its baseline's data parser reads it.

::

    ROOT/feature_segments/<feature_set>/<id>.csv    timestamp (ms), segment_id, then the features
    ROOT/label_segments/arousal/<id>.csv            timestamp (ms), value[, segment_id]
    ROOT/label_segments/valence/<id>.csv
    ROOT/metadata/partition.csv                     Id, Partition (train, devel, test; devel is the dev split)

Feature sets are the folders of feature_segments (egemaps, vggface2, ...), fused in the order given (every set
by default); every set must have the same timestamps in a video. Labels (2-4 Hz) are put on the feature frames by
time; frames outside the labelled segments are unlabelled. segment_id is not kept. Other label folders
(physio-arousal, ...) are skipped with a note."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from affect_core.data.records import AFFECT_DIMENSIONS
from affect_core.data.tables import FileTable, read_csv_table
from affect_core.data.tracks import (
    ReadOptions,
    SourceFiles,
    SourceRead,
    SourceVideo,
    Track,
    check_split,
    check_video_id,
    fail,
    select_feature_sets,
    stem,
)

FEATURES = "feature_segments"
LABELS = "label_segments"
PARTITION = "metadata/partition.csv"
SPLIT_NAMES = {"train": "train", "devel": "dev", "dev": "dev", "test": "test"}


def read_muse_partition(files: SourceFiles) -> dict[str, str]:
    """Id -> split from ROOT/metadata/partition.csv (devel is the dev split)."""
    where = files.loc.display(PARTITION)
    if not files.loc.exists(PARTITION):
        raise fail(where, "file not found; expected the partition table (columns Id, Partition) of the muse layout")
    data = files.read(PARTITION)
    header = data.split(b"\n", 1)[0].decode("utf-8", "replace").lstrip("\ufeff")
    names = tuple(name.strip() for name in header.split(","))  # every column as text: ids may be numbers
    table = read_csv_table(data, where, string_columns=names)
    for column in ("Id", "Partition"):
        if column not in table.columns:
            raise fail(where, f"missing column {column!r}; expected columns Id, Partition")
    out: dict[str, str] = {}
    for row, (video_id, split) in enumerate(zip(table.columns["Id"], table.columns["Partition"], strict=True)):
        ref = f"{where}: {table.row_ref(row)}"
        video_id = check_video_id(str(video_id).strip(), ref)
        name = str(split).strip()
        if name not in SPLIT_NAMES:
            raise fail(ref, f"unknown partition {name[:40]!r}; expected train, devel or test")
        if video_id in out:
            raise fail(ref, f"duplicate Id {video_id!r}; expected each video once")
        out[video_id] = check_split(SPLIT_NAMES[name], ref)
    if not out:
        raise fail(where, "no videos; expected one row per video")
    return out


def _times(table: FileTable) -> np.ndarray:
    if "timestamp" not in table.columns:
        raise fail(table.where, "line 1: missing column 'timestamp'; expected timestamp (ms) as the first column")
    return table.columns["timestamp"] / 1000.0


def _feature_track(data: bytes, where: str) -> Track:
    table = read_csv_table(data, where)
    time_s = _times(table)
    if "segment_id" not in table.columns:
        raise fail(where, "line 1: missing column 'segment_id'; expected timestamp, segment_id, then features")
    names = [n for n in table.names if n not in ("timestamp", "segment_id")]
    if not names:
        raise fail(where, "line 1: no feature columns; expected feature columns after timestamp and segment_id")
    values = np.column_stack([table.columns[n] for n in names])
    return Track(where, names, values, time_s, None, table.row_ref)


def _label_track(data: bytes, where: str) -> Track:
    table = read_csv_table(data, where)
    time_s = _times(table)
    if "value" not in table.columns:
        raise fail(where, "line 1: missing column 'value'; expected timestamp, value, segment_id")
    extra = [n for n in table.names if n not in ("timestamp", "value", "segment_id")]
    if extra:
        raise fail(where, f"line 1: unexpected column {extra[0]!r}; expected timestamp, value, segment_id")
    return Track(where, ["value"], table.columns["value"][:, None], time_s, None, table.row_ref)


def read_muse(files: SourceFiles, feature_set: str | Sequence[str] | None, options: ReadOptions) -> SourceRead:
    partition = read_muse_partition(files)
    available = sorted(files.folders(FEATURES))
    if not available:
        raise fail(
            files.loc.display(FEATURES),
            "no feature set folders; expected feature_segments/<feature_set>/<id>.csv (muse layout)",
        )
    chosen = select_feature_sets(available, feature_set, files.loc.display())
    videos: dict[str, SourceVideo] = {}
    for set_name in chosen:
        folder = f"{FEATURES}/{set_name}"
        seen = set()
        for name in files.files(folder, ".csv"):
            where = files.loc.display(folder, name)
            video_id = check_video_id(stem(name, ".csv"), where)
            if video_id not in partition:
                raise fail(where, f"video {video_id!r} is not listed in {PARTITION}; expected an Id for every video")
            seen.add(video_id)
            video = videos.setdefault(video_id, SourceVideo(video_id, partition[video_id]))
            video.features[set_name] = _feature_track(files.read(folder, name), where)
        absent = [v for v in partition if v not in seen]
        if absent:
            raise fail(
                files.loc.display(PARTITION),
                f"video {absent[0]!r} has no features in {folder}; expected {folder}/{absent[0]}.csv for every Id",
            )
    for dimension in AFFECT_DIMENSIONS:
        folder = f"{LABELS}/{dimension}"
        for name in files.files(folder, ".csv"):
            where = files.loc.display(folder, name)
            video_id = check_video_id(stem(name, ".csv"), where)
            if video_id not in videos:
                raise fail(where, f"labels for video {video_id!r} but no features; expected an Id in {PARTITION}")
            videos[video_id].labels[dimension] = (_label_track(files.read(folder, name), where), 0)
    skipped = sorted(f for f in files.folders(LABELS) if f not in AFFECT_DIMENSIONS and not f.startswith("."))
    notes = [f"skipped label folders not read by the muse layout: {', '.join(skipped)}"] if skipped else []
    return SourceRead(
        list(videos.values()),
        chosen,
        labels_by_time=True,
        fps_from_span=True,
        metadata={"pooled": "false", "source_format": "muse"},
        notes=notes,
    )
