"""The ``avec2016`` layout: RECOLA as the AVEC2016 challenge release ships it, and the older flat variant.

Release (per-dimension)::

    ROOT/features_<name>/arousal/<video_id>.arff      one folder per modality: features_video_appearance,
    ROOT/features_<name>/valence/<video_id>.arff      features_video_geometric, features_audio, features_ECG, ...
    ROOT/ratings_gold_standard/{arousal,valence}/<video_id>.arff
    ROOT/ratings_individual_centred/{arousal,valence}/<video_id>.csv    ';'-separated: time, one column per rater

Flat: ROOT/features_<name>/<video_id>.arff (one version of each feature set for both dimensions).

A feature set's name is its folder's name without ``features_`` and ``video_`` (appearance, geometric, audio,
ECG). In the release each dimension has its own version of a set (pooled over 6 s for arousal, 4 s for
valence): the corpus keeps both, as sets ``arousal/<name>`` and ``valence/<name>``, and a model of one dimension
reads only its own (``Corpus.dimension_columns``). Release files mark a video frame without a face by zeros in
every attribute; such rows of a ``features_video_*`` set are read as frames without a face (NaN). Other folders
(recordings_*, ...) are skipped with a note."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from affect_core.data import tables
from affect_core.data.arff_format import NUMERIC_TYPES, read_arff
from affect_core.data.records import AFFECT_DIMENSIONS, SPLITS
from affect_core.data.tracks import (
    GOLD_STANDARD,
    INSTANCE_NAME,
    ReadOptions,
    SourceFiles,
    SourceRead,
    SourceVideo,
    Track,
    check_video_id,
    fail,
    select_feature_sets,
    stem,
)

GOLD_FOLDER = "ratings_gold_standard"
RATERS_FOLDER = "ratings_individual_centred"
RATINGS_SEPARATOR = ";"


def arff_track(data: bytes, where: str, video_id: str, *, labels: bool) -> Track:
    """One AVEC ARFF file as a track: frameTime and the numeric attributes; ``Instance_name``, where present,
    must be ``video_id`` on every row."""
    table = read_arff(data, where)
    kinds = dict(table.attributes)
    names = [n for n, _ in table.attributes]
    expected = "[Instance_name,] frameTime, GoldStandard" if labels else "[Instance_name,] frameTime, features"
    if "frameTime" not in kinds:
        raise fail(where, f"missing attribute 'frameTime'; expected attributes {expected}")
    if kinds["frameTime"] not in NUMERIC_TYPES:
        raise fail(where, f"attribute 'frameTime' is {kinds['frameTime']}; expected numeric (seconds)")
    if INSTANCE_NAME in kinds:
        instance = table.columns[INSTANCE_NAME]
        wrong = np.flatnonzero(np.asarray([str(v).strip().strip("'\"") for v in instance], dtype=object) != video_id)
        if wrong.size:
            row = int(wrong[0])
            raise fail(
                where,
                f"{table.row_ref(row)}, attribute 'Instance_name': {str(instance[row])[:60]!r} is not the file's "
                f"video id; expected {video_id!r}",
            )
    value_names = [n for n in names if n not in (INSTANCE_NAME, "frameTime")]
    for name in value_names:
        if kinds[name] not in NUMERIC_TYPES:
            kind = kinds[name] if isinstance(kinds[name], str) else "nominal"
            raise fail(where, f"attribute {name!r} is {kind}; expected numeric")
    if table.num_rows > tables.MAX_ROWS:
        raise fail(where, f"{table.num_rows} rows, more than the limit of {tables.MAX_ROWS} frames per video")
    if labels:
        if GOLD_STANDARD not in value_names:
            raise fail(where, f"missing attribute 'GoldStandard'; expected attributes {expected}")
        extra = [n for n in value_names if n != GOLD_STANDARD]
        if extra:
            raise fail(where, f"unexpected attribute {extra[0]!r}; expected attributes {expected}")
    elif not value_names:
        raise fail(where, "no feature attributes; expected numeric attributes after frameTime")
    values = np.column_stack([table.columns[n] for n in value_names])
    return Track(where, value_names, values, table.columns["frameTime"], None, table.row_ref)


def avec_split(video_id: str, where: str) -> str:
    prefix = video_id.split("_", 1)[0]
    if prefix not in SPLITS:
        raise fail(where, f"unknown split {prefix!r} in file name; expected names like train_1, dev_1, test_1")
    return prefix


def set_name(folder: str) -> str:
    """features_video_appearance -> appearance; features_audio -> audio; features_ECG -> ECG."""
    name = folder[len("features_") :]
    return name[len("video_") :] if name.startswith("video_") and len(name) > len("video_") else name


def _zero_rows_missing(track: Track) -> None:
    """Release video features: a row of zeros is a frame without a face."""
    zero = np.all(track.values == 0.0, axis=1)
    if zero.any():
        track.values[zero] = np.nan


def read_avec2016(files: SourceFiles, feature_set: str | Sequence[str] | None, options: ReadOptions) -> SourceRead:
    top = files.folders()
    folders = sorted(f for f in top if f.startswith("features_") and len(f) > len("features_"))
    if not folders:
        raise fail(
            files.loc.display(),
            "no features_* folder; expected ROOT/features_video_appearance/{arousal,valence}/*.arff (avec2016 layout)",
        )
    by_name: dict[str, str] = {}
    for folder in folders:
        name = set_name(folder)
        if name in by_name:
            raise fail(
                files.loc.display(folder),
                f"feature set name {name!r} also used by {by_name[name]}; expected one folder per feature set",
            )
        by_name[name] = folder
    per_dimension = {name: _layout_of(files, folder) for name, folder in by_name.items()}
    kinds = set(per_dimension.values())
    if len(kinds) > 1:
        flat = next(n for n, d in per_dimension.items() if not d)
        split = next(n for n, d in per_dimension.items() if d)
        raise fail(
            files.loc.display(by_name[flat]),
            f"*.arff directly in the folder while {by_name[split]} has arousal/ and valence/ folders; expected "
            "one layout: every features_* folder per dimension (the release) or every one flat",
        )
    release = kinds == {True}
    chosen = select_feature_sets(sorted(by_name), feature_set, files.loc.display())
    videos: dict[str, SourceVideo] = {}
    sets: list[str] = []
    set_info: dict[str, dict[str, str]] = {}
    for dimension in AFFECT_DIMENSIONS if release else (None,):
        for name in chosen:
            key = f"{dimension}/{name}" if dimension else name
            folder = f"{by_name[name]}/{dimension}" if dimension else by_name[name]
            sets.append(key)
            if dimension:
                set_info[key] = {"set": name, "dimension": dimension}
            arff = files.files(folder, ".arff")
            if not arff:
                raise fail(files.loc.display(folder), "no .arff files; expected one <video_id>.arff per video")
            for file_name in arff:
                where = files.loc.display(folder, file_name)
                video_id = check_video_id(stem(file_name, ".arff"), where)
                split = avec_split(video_id, where)
                video = videos.setdefault(video_id, SourceVideo(video_id, split))
                track = arff_track(files.read(folder, file_name), where, video_id, labels=False)
                if release and by_name[name].startswith("features_video_"):
                    _zero_rows_missing(track)
                video.features[key] = track
    first_folder = f"{by_name[chosen[0]]}/arousal" if release else by_name[chosen[0]]
    for dimension in AFFECT_DIMENSIONS:
        folder = f"{GOLD_FOLDER}/{dimension}"
        for file_name in files.files(folder, ".arff"):
            where = files.loc.display(folder, file_name)
            video_id = check_video_id(stem(file_name, ".arff"), where)
            if video_id not in videos:
                raise fail(
                    where,
                    f"labels for video {video_id!r} but no features file; expected {first_folder}/{video_id}.arff",
                )
            track = arff_track(files.read(folder, file_name), where, video_id, labels=True)
            videos[video_id].labels[dimension] = (track, 0)
        folder = f"{RATERS_FOLDER}/{dimension}"
        for file_name in files.files(folder, ".csv"):
            where = files.loc.display(folder, file_name)
            video_id = check_video_id(stem(file_name, ".csv"), where)
            if video_id not in videos:
                raise fail(
                    where,
                    f"ratings for video {video_id!r} but no features file; expected {first_folder}/{video_id}.arff",
                )
            track = ratings_track(files.read(folder, file_name), where)
            for column, rater in enumerate(track.names):
                videos[video_id].ratings[f"{dimension}/{rater}"] = (track, column)
    known = set(folders) | {GOLD_FOLDER, RATERS_FOLDER}
    skipped = sorted(f for f in top if f not in known and not f.startswith((".", "_")))
    notes = [f"skipped folders not read by the avec2016 layout: {', '.join(skipped)}"] if skipped else []
    return SourceRead(
        list(videos.values()),
        sets,
        set_info=set_info,
        metadata={"pooled": "true", "source_format": "avec2016-release" if release else "avec2016-flat"},
        notes=notes,
    )


def _layout_of(files: SourceFiles, folder: str) -> bool:
    """True when a features_* folder holds arousal/ and valence/ folders (the release), False when it holds
    the .arff files itself (flat)."""
    inner = set(files.folders(folder))
    dims = [d for d in AFFECT_DIMENSIONS if d in inner]
    if dims and len(dims) < len(AFFECT_DIMENSIONS):
        missing = next(d for d in AFFECT_DIMENSIONS if d not in inner)
        raise fail(
            files.loc.display(folder),
            f"has {dims[0]}/ but no {missing}/ folder; expected arousal/ and valence/ (one version of the feature "
            "set per dimension)",
        )
    return bool(dims)


def ratings_track(data: bytes, where: str) -> Track:
    """ratings_individual_centred/<dim>/<id>.csv: ';'-separated, a time column (seconds), then one column per
    rater (names stripped of the trailing spaces the release carries)."""
    text = data.replace(b"\r\n", b"\n")
    header = text.split(b"\n", 1)[0]
    if RATINGS_SEPARATOR.encode() not in header:
        raise fail(
            where,
            "line 1: no ';' in the header; expected ';'-separated columns (time;rater 1;rater 2;...)",
        )
    table = tables.read_csv_table(data, where, delimiter=RATINGS_SEPARATOR)
    if len(table.names) < 2:
        raise fail(where, "line 1: no rater columns; expected a time column then one column per rater")
    time_name, raters = table.names[0], table.names[1:]
    values = np.column_stack([table.columns[r] for r in raters])
    return Track(where, list(raters), values, table.columns[time_name], None, table.row_ref)
