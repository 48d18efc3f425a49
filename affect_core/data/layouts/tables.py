"""The ``csv`` and ``parquet`` layouts: ROOT/features/<video_id>.csv (or features_<set>/ folders, one per
feature set), ROOT/labels/<video_id>.csv and ROOT/partition.csv; for parquet the same tables as .parquet files,
or ROOT/features.parquet and ROOT/labels.parquet holding every video with a video_id column."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from affect_core.data import keys
from affect_core.data.records import AFFECT_DIMENSIONS
from affect_core.data.tables import FileTable, read_parquet_table, split_by_video
from affect_core.data.tracks import (
    ReadOptions,
    SourceFiles,
    SourceRead,
    SourceVideo,
    Track,
    check_video_id,
    fail,
    feature_track,
    label_track,
    read_partition,
    read_table_file,
    select_feature_sets,
    split_axes,
    stem,
)


def read_csv_layout(files: SourceFiles, feature_set: str | Sequence[str] | None, options: ReadOptions) -> SourceRead:
    return SourceRead(*_read_tables(files, feature_set, "csv"))


def read_parquet_layout(
    files: SourceFiles, feature_set: str | Sequence[str] | None, options: ReadOptions
) -> SourceRead:
    return SourceRead(*_read_tables(files, feature_set, "parquet"))


def _read_parquet_tables(
    reader: SourceFiles, feature_set: str | Sequence[str] | None, partition: dict[str, str], partition_where: str
) -> tuple[list[SourceVideo], list[str]]:
    """ROOT/features.parquet and ROOT/labels.parquet, each one table with a video_id column."""
    where = reader.loc.display("features.parquet")
    table = read_parquet_table(reader.read("features.parquet"), where, string_columns=("video_id",))

    def labels() -> FileTable | None:
        if not reader.loc.exists("labels.parquet"):
            return None
        where = reader.loc.display("labels.parquet")
        return read_parquet_table(reader.read("labels.parquet"), where, string_columns=("video_id",))

    return parquet_table_videos(table, labels, feature_set, partition, partition_where, reader.loc.display())


def parquet_table_videos(
    table: FileTable,
    labels: Callable[[], FileTable | None],
    feature_set: str | Sequence[str] | None,
    partition: dict[str, str],
    partition_where: str,
    root: str,
) -> tuple[list[SourceVideo], list[str]]:
    """The videos of a features table and a labels table holding many videos each (a video_id column; the whole of
    features.parquet and labels.parquet, or one video's rows of them), and the feature sets chosen. ``labels`` gives
    the labels table (None: there is none) once the features are checked."""
    where = table.where
    if "video_id" not in table.columns:
        raise fail(where, "missing attribute 'video_id'; expected columns video_id, frameTime, features")
    per_video = split_by_video(table)
    _, _, value_names = split_axes(next(iter(per_video.values())), "features")
    sets = _sets_from_metadata(table.metadata.get(keys.FEATURE_SETS), value_names)
    chosen = select_feature_sets(list(sets), feature_set, root)
    videos: dict[str, SourceVideo] = {}
    for video_id, video_table in per_video.items():
        ref = f"{where}: video {video_id[:80]!r}"
        check_video_id(video_id, ref)
        if video_id not in partition:
            raise fail(ref, f"not listed in {partition_where}; expected a split for every video")
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
        raise fail(
            where,
            f"no rows for video {missing[0]!r} listed in {partition_where}; expected features for every video",
        )
    label_table = labels()
    if label_table is not None:
        where = label_table.where
        if "video_id" not in label_table.columns:
            raise fail(where, "missing attribute 'video_id'; expected columns video_id, frameTime, arousal, valence")
        for video_id, video_table in split_by_video(label_table).items():
            ref = f"{where}: video {video_id[:80]!r}"
            check_video_id(video_id, ref)
            if video_id not in videos:
                raise fail(
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
    reader: SourceFiles, feature_set: str | Sequence[str] | None, table_format: str
) -> tuple[list[SourceVideo], list[str]]:
    suffix = "." + table_format
    partition, partition_where = read_partition(reader, table_format)
    if table_format == "parquet" and reader.loc.exists("features.parquet"):
        return _read_parquet_tables(reader, feature_set, partition, partition_where)
    folders = {
        ("features" if f == "features" else f[len("features_") :]): f
        for f in reader.folders()
        if f == "features" or (f.startswith("features_") and len(f) > 9)
    }
    if not folders:
        raise fail(
            reader.loc.display(),
            f"no features folder; expected ROOT/features/<video_id>{suffix} ({table_format} layout)",
        )
    chosen = select_feature_sets(sorted(folders), feature_set, reader.loc.display())
    videos: dict[str, SourceVideo] = {}
    for set_name in chosen:
        folder = folders[set_name]
        files = reader.files(folder, suffix)
        if not files:
            raise fail(reader.loc.display(folder), f"no {suffix} files; expected one <video_id>{suffix} per video")
        seen = set()
        for name in files:
            where = reader.loc.display(folder, name)
            video_id = check_video_id(stem(name, suffix), where)
            if video_id not in partition:
                raise fail(
                    where,
                    f"video {video_id!r} is not listed in {partition_where}; expected a split for every video",
                )
            seen.add(video_id)
            video = videos.setdefault(video_id, SourceVideo(video_id, partition[video_id]))
            video.features[set_name] = feature_track(read_table_file(reader, folder, name, table_format))
        missing = [v for v in partition if v not in seen]
        if missing:
            raise fail(
                reader.loc.display(folder),
                f"no features file for video {missing[0]!r} listed in "
                f"{partition_where}; expected {folder}/{missing[0]}{suffix}",
            )
    for name in reader.files("labels", suffix):
        where = reader.loc.display("labels", name)
        video_id = check_video_id(stem(name, suffix), where)
        if video_id not in videos:
            raise fail(
                where,
                f"labels for video {video_id!r} but no features file; expected {folders[chosen[0]]}/{video_id}{suffix}",
            )
        track = label_track(read_table_file(reader, "labels", name, table_format))
        for column, dimension in enumerate(AFFECT_DIMENSIONS):
            videos[video_id].labels[dimension] = (track, column)
    return list(videos.values()), chosen
