"""The ``openface`` layout: facial features as OpenFace 2.x FeatureExtraction (or py-feat) writes them.

::

    ROOT/features/<video_id>.csv    OpenFace 2.x: frame, [face_id,] timestamp, confidence, success, gaze_*,
                                    [eye_lmk_*,] pose_*, x_*/y_*, X_*/Y_*/Z_*, p_*, AU*_r, AU*_c (',' or ', ')
                                    py-feat: frame, FaceRectX.., FaceScore, x_*/y_*, AU*, Pitch/Roll/Yaw, emotions
    ROOT/labels/<video_id>.csv      the csv layout's label files (frameTime or frame, arousal, valence), or
    ROOT/labels/<video_id>.txt      Aff-Wild2 VA files: 'valence,arousal', then one line per video frame
                                    (-5 = not annotated)
    ROOT/partition.csv              video_id, split

Which tool wrote a file is told by its header (OpenFace: timestamp and success; py-feat: FaceScore).

Frames without a face: OpenFace rows with success 0 or confidence below ``min_face_confidence`` (default 0.5);
py-feat rows whose FaceScore is empty or below it. Their features are NaN. Several faces in one frame (OpenFace's
multi-face tools write face_id, py-feat one row per face): the frame keeps the face with the highest confidence
(FaceScore), the first in the file on a tie. OpenFace's eye landmarks (eye_lmk_*) are not kept.

Feature sets (fused in the order given, every set by default): OpenFace au_r, au_c, gaze, pose, landmarks2d,
landmarks3d, pdm; py-feat au, emotion, pose, landmarks. Times: OpenFace's timestamp column (seconds); the frame
rate is frames over duration (30 and 29.97 fps files are normal). py-feat's CSV numbers frames only: pass the
video's ``fps``. Aff-Wild2 line n is the video's n-th frame; the file must have a line for every frame."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from affect_core.data.records import AFFECT_DIMENSIONS
from affect_core.data.tables import FileTable, read_csv_table
from affect_core.data.tracks import (
    ReadOptions,
    SourceFiles,
    SourceRead,
    SourceVideo,
    Track,
    check_video_id,
    fail,
    label_track,
    read_partition,
    select_feature_sets,
    stem,
)

AFFWILD_HEADER = ["valence", "arousal"]
AFFWILD_UNANNOTATED = -5.0
PYFEAT_STRING_COLUMNS = ("input", "approx_time", "Identity")
OPENFACE_REQUIRED = ("frame", "timestamp", "confidence", "success")

_Rule = Callable[[str], bool]


def _matcher(pattern: str) -> _Rule:
    regex = re.compile(pattern)
    return lambda name: regex.fullmatch(name) is not None


OPENFACE_SETS: dict[str, _Rule] = {
    "au_r": _matcher(r"AU\d+_r"),
    "au_c": _matcher(r"AU\d+_c"),
    "gaze": _matcher(r"gaze_(\d_[xyz]|angle_[xy])"),
    "pose": _matcher(r"pose_[TR][xyz]"),
    "landmarks2d": _matcher(r"[xy]_\d+"),
    "landmarks3d": _matcher(r"[XYZ]_\d+"),
    "pdm": _matcher(r"p_(scale|r[xyz]|t[xy]|\d+)"),
}
PYFEAT_EMOTIONS = (
    "anger",
    "disgust",
    "fear",
    "happiness",
    "sadness",
    "surprise",
    "neutral",
    "Neutral",
    "Happy",
    "Sad",
    "Surprise",
    "Fear",
    "Disgust",
    "Anger",
)
PYFEAT_SETS: dict[str, _Rule] = {
    "au": _matcher(r"AU\d+"),
    "emotion": lambda name: name in PYFEAT_EMOTIONS,
    "pose": lambda name: name in ("Pitch", "Roll", "Yaw", "X", "Y", "Z"),
    "landmarks": _matcher(r"[xy]_\d+"),
}


def _tool(table: FileTable) -> str:
    names = set(table.names)
    if "success" in names and "timestamp" in names:
        return "openface"
    if "FaceScore" in names:
        return "py-feat"
    missing = next(n for n in OPENFACE_REQUIRED if n not in names)
    raise fail(
        table.where,
        f"line 1: no {missing!r} column; expected an OpenFace 2.x FeatureExtraction CSV (frame, face_id, "
        "timestamp, confidence, success, ...) or a py-feat CSV (frame, FaceRectX, ..., FaceScore, ...)",
    )


def _read_features_file(data: bytes, where: str) -> FileTable:
    header = data.split(b"\n", 1)[0]
    if b"," not in header:
        separator = next((s for s in (";", "\t", "|") if s.encode() in header), None)
        found = f" ({separator!r} found)" if separator else ""
        raise fail(
            where,
            f"line 1: no ',' between column names{found}; expected OpenFace's comma-separated header "
            "(frame, face_id, timestamp, confidence, success, ...)",
        )
    return read_csv_table(data, where, string_columns=PYFEAT_STRING_COLUMNS)


def _one_face_per_frame(table: FileTable, score: np.ndarray) -> np.ndarray:
    """Row indices, one per frame in frame order: the row with the highest score (NaN lowest), first on ties."""
    frame = table.columns["frame"]
    bad = np.flatnonzero(~np.isfinite(frame) | (frame != np.round(frame)))
    if bad.size:
        raise fail(
            table.where,
            f"{table.row_ref(int(bad[0]))}, column 'frame': {frame[bad[0]]:g} is not a frame number; expected an "
            "integer",
        )
    ranked = np.where(np.isfinite(score), score, -np.inf)
    rows = np.arange(frame.shape[0])
    order = np.lexsort((rows, -ranked, frame))  # by frame, then best score, then file order
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = frame[order][1:] != frame[order][:-1]
    return order[first]


def _feature_tracks(table: FileTable, tool: str, options: ReadOptions) -> dict[str, Track]:
    """The file's feature sets, one row per frame; rows of frames without a face are NaN."""
    columns = table.columns
    if tool == "openface":
        success, confidence = columns["success"], columns["confidence"]
        bad = np.flatnonzero(~np.isin(success, (0.0, 1.0)))
        if bad.size:
            raise fail(
                table.where,
                f"{table.row_ref(int(bad[0]))}, column 'success': {success[bad[0]]:g}; expected 0 or 1",
            )
        bad = np.flatnonzero(~np.isfinite(confidence) | (confidence < 0) | (confidence > 1))
        if bad.size:
            raise fail(
                table.where,
                f"{table.row_ref(int(bad[0]))}, column 'confidence': {confidence[bad[0]]:g}; expected a number "
                "in [0, 1]",
            )
        score = np.where(success == 1.0, confidence, np.nan)
        rules, time_s = OPENFACE_SETS, columns["timestamp"]
    else:
        score = columns["FaceScore"]
        rules, time_s = PYFEAT_SETS, None
    keep = _one_face_per_frame(table, score)
    face = np.isfinite(score[keep]) & (score[keep] >= options.min_face_confidence)
    frame = columns["frame"][keep]
    tracks: dict[str, Track] = {}
    for name, rule in rules.items():
        names = [n for n in table.names if rule(n)]
        if not names:
            continue
        values = np.column_stack([columns[n][keep] for n in names])
        values[~face] = np.nan
        tracks[name] = Track(
            table.where,
            names,
            values,
            None if time_s is None else time_s[keep],
            frame,
            lambda i, keep=keep: table.row_ref(int(keep[i])),
        )
    if not tracks:
        expected = ", ".join(rules)
        raise fail(table.where, f"line 1: no feature columns of any set ({expected}); expected {tool}'s columns")
    return tracks


def _affwild_track(data: bytes, where: str, frames: np.ndarray) -> Track:
    """An Aff-Wild2 VA file on the video's frames: (N, 2) arousal, valence; -5 read as unlabelled (NaN)."""
    first = data.split(b"\n", 1)[0].strip().decode("utf-8", "replace")
    if [n.strip() for n in first.split(",")] != AFFWILD_HEADER:
        raise fail(where, f"line 1: header {first[:60]!r}; expected 'valence,arousal' (an Aff-Wild2 VA file)")
    table = read_csv_table(data, where)
    valence, arousal = table.columns["valence"], table.columns["arousal"]
    count = frames[-1] - frames[0] + 1
    if table.num_rows != count:
        raise fail(
            where,
            f"{table.num_rows} label lines but the features have {count} frames (frame {int(frames[0])} to "
            f"{int(frames[-1])}); expected one 'valence,arousal' line per video frame",
        )
    values = np.column_stack([arousal, valence])
    missing = ~np.isfinite(values)
    if missing.any():
        row, col = (int(i) for i in np.argwhere(missing)[0])
        raise fail(
            where,
            f"{table.row_ref(row)}, column {('arousal', 'valence')[col]!r}: empty or not a number; expected a value "
            "in [-1, 1] or -5 (not annotated)",
        )
    values[values == AFFWILD_UNANNOTATED] = np.nan
    if np.isnan(values).all():
        raise fail(where, "every line is -5 (not annotated); expected at least one annotated frame")
    return Track(where, list(AFFECT_DIMENSIONS), values, None, frames[0] + np.arange(count), table.row_ref)


def read_openface(files: SourceFiles, feature_set: str | Sequence[str] | None, options: ReadOptions) -> SourceRead:
    partition, partition_where = read_partition(files, "csv")
    names = files.files("features", ".csv")
    if not names:
        raise fail(
            files.loc.display("features"),
            "no .csv files; expected one OpenFace/py-feat <video_id>.csv per video (openface layout)",
        )
    videos: dict[str, SourceVideo] = {}
    chosen: list[str] | None = None
    tools: set[str] = set()
    first_where = ""
    for name in names:
        where = files.loc.display("features", name)
        video_id = check_video_id(stem(name, ".csv"), where)
        if video_id not in partition:
            raise fail(
                where, f"video {video_id!r} is not listed in {partition_where}; expected a split for every video"
            )
        table = _read_features_file(files.read("features", name), where)
        tool = _tool(table)
        tools.add(tool)
        if len(tools) > 1:
            other = next(t for t in tools if t != tool)
            raise fail(where, f"a {tool} CSV among {other} CSVs; expected every file from one tool")
        if tool == "py-feat" and options.fps is None:
            raise fail(
                where,
                "a py-feat CSV numbers frames and has no timestamps; pass the videos' frame rate (--fps)",
            )
        tracks = _feature_tracks(table, tool, options)
        if chosen is None:
            chosen = select_feature_sets(list(tracks), feature_set, files.loc.display())
            first_where = where
        missing = [s for s in chosen if s not in tracks]
        if missing:
            raise fail(
                where,
                f"no columns of feature set {missing[0]!r} (present in {first_where}); expected the same columns "
                "in every video",
            )
        video = videos.setdefault(video_id, SourceVideo(video_id, partition[video_id]))
        video.features = {s: tracks[s] for s in chosen}
    absent = [v for v in partition if v not in videos]
    if absent:
        raise fail(
            partition_where,
            f"video {absent[0]!r} has no features file; expected features/{absent[0]}.csv for every listed video",
        )
    _read_labels(files, videos)
    assert chosen is not None
    return SourceRead(
        list(videos.values()),
        chosen,
        labels_by_time=True,
        fps_from_span=True,
        metadata={"pooled": "false", "source_format": tools.pop()},
    )


def _read_labels(files: SourceFiles, videos: dict[str, SourceVideo]) -> None:
    seen: dict[str, str] = {}
    for suffix in (".csv", ".txt"):
        for name in files.files("labels", suffix):
            where = files.loc.display("labels", name)
            video_id = check_video_id(stem(name, suffix), where)
            if video_id in seen:
                raise fail(where, f"labels for video {video_id!r} also in {seen[video_id]}; expected one label file")
            seen[video_id] = where
            if video_id not in videos:
                raise fail(
                    where, f"labels for video {video_id!r} but no features file; expected features/{video_id}.csv"
                )
            data = files.read("labels", name)
            main = next(iter(videos[video_id].features.values()))
            assert main.frame is not None
            if suffix == ".txt":
                track = _affwild_track(data, where, main.frame.astype(np.int64))
            else:
                track = label_track(read_csv_table(data, where))
            for column, dimension in enumerate(AFFECT_DIMENSIONS):
                videos[video_id].labels[dimension] = (track, column)
