"""The checks across a corpus's files and the one time grid, after a layout reader found the tracks
(:func:`assemble_corpus`): used by :func:`affect_core.data.readers.read_source` and by the video layout.

Time grid: the corpus's frames are the frames of its first feature set (every other feature set must have the
same frames). Where a layout's labels have their own rate or offset (``SourceRead.labels_by_time``: openface,
muse), a label track is put on the feature frames by time with :func:`labels_on_frames`; label tracks that
number frames instead (Aff-Wild2) are matched frame by frame."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from affect_core.data.records import AFFECT_DIMENSIONS, Corpus, Video
from affect_core.data.tracks import (
    FPS_TOLERANCE,
    GOLD_STANDARD,
    STEP_TOLERANCE,
    TIME_DECIMALS,
    SourceRead,
    SourceVideo,
    Track,
    fail,
    video_sort_key,
)

# Common video frame rates: a rate measured from millisecond timestamps snaps to one of these when it is this
# close (29.97 and 30 differ by 0.1%).
STANDARD_FPS = (23.976, 24.0, 25.0, 29.97, 30.0, 48.0, 50.0, 59.94, 60.0)
SNAP_TOLERANCE = 3e-4


# ------------------------------------------------------------------------------------------------------
# validation
def _check_raw_axis(track: Track) -> None:
    """Finite, strictly increasing time and frame columns."""
    for name, axis in (("frameTime", track.time_s), ("frame", track.frame)):
        if axis is None:
            continue
        bad = np.flatnonzero(~np.isfinite(axis))
        if bad.size:
            raise fail(
                track.where,
                f"{track.row_ref(bad[0])}, attribute {name!r}: missing or non-finite value; expected a number",
            )
        if name == "frame":
            if np.any(axis != np.round(axis)) or np.any(np.abs(axis) > np.iinfo(np.int32).max):
                row = int(np.flatnonzero((axis != np.round(axis)) | (np.abs(axis) > np.iinfo(np.int32).max))[0])
                raise fail(
                    track.where,
                    f"{track.row_ref(row)}, attribute 'frame': {axis[row]!r} is not a frame "
                    "number; expected an integer below 2^31",
                )
        steps = np.diff(axis)
        bad = np.flatnonzero(steps <= 0)
        if bad.size:
            row = int(bad[0]) + 1
            what = "duplicated" if steps[bad[0]] == 0 else "decreasing"
            raise fail(
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
    raise fail(track.where, f"{track.row_ref(row)}: {problem}; expected one row every {1 / fps:g} s")


def _corpus_fps(tracks: list[Track], fps: float | None, where: str) -> float:
    """The corpus frame rate: from the time axes (frameTime) when the files have them, else the given ``fps``. A
    given rate must be a positive number and, where the files have time axes, agree with them."""
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise fail(where, f"fps={fps:g}: expected a positive frame rate in frames per second (e.g. 25)")
    steps = [np.diff(t.time_s) for t in tracks if t.time_s is not None and t.num_rows > 1]
    if not steps:
        if any(t.time_s is not None for t in tracks) or fps is None:
            raise fail(
                where,
                "cannot determine the frame rate: no video has a time axis with two or more frames "
                "(frameTime in seconds); expected frameTime columns, or pass fps= for frame-numbered files",
            )
        return float(fps)
    median = float(np.median(np.concatenate(steps)))
    measured = snap_fps(float(round(1.0 / median, 6)))
    if fps is not None and abs(fps / measured - 1.0) > FPS_TOLERANCE:
        raise fail(
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
        raise fail(
            track.where,
            f"frame rate {1 / own:g} fps (median frameTime step {own:g} s) differs from the "
            f"corpus frame rate {fps:g} fps; expected one frame rate per corpus",
        )


def _check_values(track: Track, *, labels: bool, column: int | None = None, unlabelled: bool = False) -> None:
    """Features finite in float32 (NaN = no face); labels in [-1, 1], NaN allowed only where ``unlabelled``."""
    values = track.values if column is None else track.values[:, column : column + 1]
    names = track.names if column is None else [track.names[column]]
    if labels:
        bad = (np.isinf(values) if unlabelled else ~np.isfinite(values)) | (np.abs(values) > 1.0)
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
    raise fail(track.where, f"{track.row_ref(row)}, attribute {name!r}: {what}; {expected}")


def labels_on_frames(
    label_time: np.ndarray, values: np.ndarray, frame_time: np.ndarray, *, step: float | None = None
) -> np.ndarray:
    """Put a label track on the feature frames by time.

    label_time: (N,) strictly increasing seconds; values: (N,) or (N, k) with NaN where unlabelled; frame_time:
    (T,). Returns (T,) or (T, k) float64 (the video layout puts feature rows on the model's grid with it too).
    The rule: a frame takes the label sample within 1 ms of its time (a quarter of a label
    step at rates above 250 Hz) where there is one, else the linear interpolation of the label samples just
    before and just after its time; it is unlabelled (NaN) when either of those
    samples is unlabelled, when they lie more than 1.5 label steps apart (a gap in the labels), or when the
    frame lies more than half a label step before the first or after the last sample. The label step is the
    median step of the track, or ``step`` when given (a variable-rate video's frames on a coarser grid: a hole is
    measured against the grid's step)."""
    n = label_time.shape[0]
    if n == 0:
        return np.full((frame_time.shape[0], *values.shape[1:]), np.nan)
    if values.ndim == 2:  # (N, k): the same placement for every column
        rows = labels_on_frames(label_time, np.arange(n, dtype=np.float64), frame_time, step=step)
        return _placed_rows(rows, values)
    if step is None:
        step = float(np.median(np.diff(label_time))) if n > 1 else 0.0
    eps = 1e-9
    idx = np.searchsorted(label_time, frame_time + eps, side="right")
    lo = np.clip(idx - 1, 0, n - 1)
    hi = np.clip(idx, 0, n - 1)
    t_lo, t_hi = label_time[lo], label_time[hi]
    span = t_hi - t_lo
    weight = np.clip((frame_time - t_lo) / np.where(span > 0, span, 1.0), 0.0, 1.0)
    mixed = values[lo] * (1.0 - weight) + values[hi] * weight
    match = min(1e-3, step / 4) + eps if n > 1 else eps
    near_lo, near_hi = np.abs(frame_time - t_lo), np.abs(frame_time - t_hi)
    matched = (near_lo <= match) | (near_hi <= match)
    out = np.where((near_lo <= match) & (near_lo <= near_hi), values[lo], np.where(near_hi <= match, values[hi], mixed))
    gap = span > (1.0 + STEP_TOLERANCE) * step + eps
    before = frame_time < label_time[0] - step / 2 - eps
    after = frame_time > label_time[-1] + step / 2 + eps
    edge = (idx == 0) | (idx == n)  # outside the track: the nearest end sample, within half a step
    out = np.where(edge, np.where(idx == 0, values[0], values[-1]), out)
    out[(gap & ~edge & ~matched) | before | after] = np.nan
    return out


def _placed_rows(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(T, k) rows of ``values`` (N, k) at fractional row positions ``rows`` (T,) (NaN: none), interpolated."""
    out = np.full((rows.shape[0], values.shape[1]), np.nan)
    placed = np.isfinite(rows)
    lo = np.floor(rows[placed]).astype(np.int64)
    hi = np.minimum(lo + 1, values.shape[0] - 1)
    weight = (rows[placed] - lo)[:, None]
    out[placed] = values[lo] * (1.0 - weight) + np.where(weight > 0, values[hi], 0.0) * weight
    return out


def _labels_by_frame(track_frames: np.ndarray, values: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Labels numbered by video frame (Aff-Wild2 lines) matched to the feature frames; NaN where none."""
    idx = np.clip(np.searchsorted(track_frames, frames), 0, max(track_frames.shape[0] - 1, 0))
    found = track_frames[idx] == frames if track_frames.size else np.zeros(frames.shape, bool)
    return np.where(found, values[idx] if values.size else np.nan, np.nan)


def _on_frames(track: Track, column: int, time_s: np.ndarray, frames: np.ndarray) -> np.ndarray:
    values = track.values[:, column]
    if track.time_s is not None:
        return labels_on_frames(track.time_s, values, time_s)
    assert track.frame is not None
    return _labels_by_frame(track.frame.astype(np.int64), values, frames)


def _span_fps(track: Track) -> float | None:
    """Frames over duration of a track that has frame numbers (or one row per frame) and times."""
    if track.time_s is None or track.num_rows < 2:
        return None
    frames = track.frame if track.frame is not None else np.arange(track.num_rows)
    duration = float(track.time_s[-1] - track.time_s[0])
    return float(frames[-1] - frames[0]) / duration if duration > 0 else None


def snap_fps(fps: float, tolerance: float = SNAP_TOLERANCE) -> float:
    """A measured rate as the nearest common video rate (29.97, 30, 25, ...) within ``tolerance`` (relative),
    else unchanged."""
    nearest = min(STANDARD_FPS, key=lambda rate: abs(fps / rate - 1.0))
    return nearest if abs(fps / nearest - 1.0) <= tolerance else fps


def _span_corpus_fps(tracks: list[Track], fps: float | None, where: str) -> float:
    """Corpus rate from each video's frames over duration; one rate per corpus, one rate within each video."""
    rates = {id(t): _span_fps(t) for t in tracks}
    measured = [r for r in rates.values() if r is not None]
    if not measured:
        return _corpus_fps(tracks, fps, where)
    # Timestamps printed to the millisecond put up to 1 ms of error on a video's duration.
    durations = [float(t.time_s[-1] - t.time_s[0]) for t in tracks if rates[id(t)] is not None]  # type: ignore[index]
    tolerance = max(SNAP_TOLERANCE, 1e-3 / float(np.median(durations)))
    corpus_fps = snap_fps(float(round(float(np.median(measured)), 3)), tolerance)
    if fps is not None and abs(fps / corpus_fps - 1.0) > FPS_TOLERANCE:
        raise fail(
            where,
            f"fps={fps:g} contradicts the files' timestamps ({corpus_fps:g} fps: frames over duration); leave "
            "fps out for files with timestamps, or fix the files",
        )
    for track in tracks:
        own = rates[id(track)]
        if own is None:
            continue
        if track.frame is None:
            _check_no_gap(track)
        if abs(own / corpus_fps - 1.0) > FPS_TOLERANCE:
            raise fail(
                track.where,
                f"frame rate {snap_fps(own):g} fps (frames over duration) differs from the corpus frame rate "
                f"{corpus_fps:g} fps; expected one frame rate per corpus",
            )
        frames = track.frame if track.frame is not None else np.arange(track.num_rows)
        assert track.time_s is not None
        expected = track.time_s[0] + (frames - frames[0]) / own
        off = np.abs(track.time_s - expected) > 0.5 / own + 1e-3
        if off.any():
            row = int(np.flatnonzero(off)[0])
            raise fail(
                track.where,
                f"{track.row_ref(row)}: timestamp {track.time_s[row]:g} s is not frame {int(frames[row])}'s time "
                f"({expected[row]:g} s at the video's {own:.3f} fps); expected one frame rate within a video "
                "(mixed frame rates?)",
            )
    return corpus_fps


def _check_no_gap(track: Track) -> None:
    """Rows without frame numbers: no step longer than 1.5 median steps (a missing row), before the rate is
    taken as rows over duration."""
    assert track.time_s is not None
    steps = np.diff(track.time_s)
    median = float(np.median(steps))
    bad = np.flatnonzero(steps > (1.0 + STEP_TOLERANCE) * median)
    if bad.size:
        row = int(bad[0]) + 1
        raise fail(
            track.where,
            f"{track.row_ref(row)}: gap in the time axis: time jumps from {track.time_s[row - 1]:g} to "
            f"{track.time_s[row]:g} s; expected one row every {median:g} s",
        )


def assemble_corpus(
    read: SourceRead,
    *,
    source: str,
    layout: str,
    fps: float | None = None,
) -> Corpus:
    """Validate the tracks of every video against each other, put labels and ratings on the feature frames and
    build the Corpus (features of ``read.sets`` fused in that order)."""
    videos, sets = read.videos, read.sets
    if not videos:
        raise fail(source, "empty corpus: no videos found; expected feature files for at least one video")
    videos = sorted(videos, key=lambda v: video_sort_key(v.split, v.video_id))
    reference = _check_same_attributes(videos, sets)
    tracks = [t for v in videos for t in v.features.values()]
    tracks += [t for v in videos for t, _ in (*v.labels.values(), *v.ratings.values())]
    for track in tracks:
        _check_raw_axis(track)
    main_tracks = [v.features[sets[0]] for v in videos]
    if read.fps_from_span:
        fps_value = _span_corpus_fps(main_tracks, fps, source)
    else:
        fps_value = _corpus_fps(main_tracks, fps, source)
    out = [_assemble_video(video, sets, fps_value, read) for video in videos]
    all_names = [n for set_name in sets for n in reference[set_name].names]
    qualify = len(set(all_names)) != len(all_names)  # sets sharing attribute names: prefix them with the set
    feature_names, ranges, start = [], [], 0
    for set_name in sets:
        names = reference[set_name].names
        feature_names += [f"{set_name}:{n}" for n in names] if qualify else list(names)
        entry: dict[str, Any] = {"name": set_name, "start": start, "stop": start + len(names), "names": list(names)}
        entry.update(read.set_info.get(set_name, {}))
        ranges.append(entry)
        start += len(names)
    metadata = {"feature_sets": json.dumps(ranges), "layout": layout, "source": source, **read.metadata}
    raters = sorted({name for v in out for name in (v.ratings or {})})  # one order, however the videos are read
    if raters:
        metadata["ratings"] = json.dumps(raters)
    if read.notes:
        metadata["notes"] = json.dumps(read.notes)
    label = "+".join(dict.fromkeys(read.set_info.get(s, {}).get("set", s) for s in sets))
    return Corpus(out, feature_names, fps_value, feature_set=label, source=source, metadata=metadata)


def _check_same_attributes(videos: list[SourceVideo], sets: list[str]) -> dict[str, Track]:
    """Every video has every chosen set; each set has one attribute list across videos."""
    reference: dict[str, Track] = {}
    for video in videos:
        for set_name in sets:
            track = video.features.get(set_name)
            if track is None:
                other = next(iter(video.features.values()))
                raise fail(
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
                raise fail(track.where, f"{detail}; expected the same attributes in every video")
    return reference


def _assemble_video(video: SourceVideo, sets: list[str], fps: float, read: SourceRead) -> Video:
    main = video.features[sets[0]]
    if not read.fps_from_span:
        _check_track_rate(main, fps)
    frames = _frames(main, fps)
    _check_frames(main, frames, fps)
    for set_name in sets[1:]:
        other = video.features[set_name]
        if not read.fps_from_span:
            _check_track_rate(other, fps)
        _check_same_axis(other, _frames(other, fps), main, frames, "features")
    blocks = []
    for set_name in sets:
        track = video.features[set_name]
        _check_values(track, labels=False)
        blocks.append(track.values)
    time_s = main.time_s.astype(np.float64) if main.time_s is not None else frames / fps
    # Text and binary layouts of the same times differ in the last bits (0.12 vs 0.12000000000000001).
    time_s = np.round(time_s, TIME_DECIMALS)
    labels: dict[str, np.ndarray | None] = {d: None for d in AFFECT_DIMENSIONS}
    for dimension, (track, column) in video.labels.items():
        if track.names != [GOLD_STANDARD] and np.isnan(track.values[:, column]).all():
            continue  # a table layout writes NaN for the whole track of a dimension the video lacks
        if read.labels_by_time:
            _check_values(track, labels=True, column=column, unlabelled=True)
            on_frames = _on_frames(track, column, time_s, frames)
            if np.isnan(on_frames).all():
                first, last = _span_text(track)
                raise fail(
                    track.where,
                    f"no {dimension} label falls on a feature frame (labels {first} to {last}, features "
                    f"{time_s[0]:g} s to {time_s[-1]:g} s); expected labels over the video's frames",
                )
            labels[dimension] = on_frames.astype(np.float32)
            continue
        _check_track_rate(track, fps)
        _check_same_axis(track, _frames(track, fps), main, frames, "labels")
        _check_values(track, labels=True, column=column)
        labels[dimension] = track.values[:, column].astype(np.float32)
    ratings: dict[str, np.ndarray] = {}
    for name, (track, column) in video.ratings.items():
        bad = np.flatnonzero(np.isinf(track.values[:, column]))
        if bad.size:
            raise fail(
                track.where,
                f"{track.row_ref(int(bad[0]))}, attribute {track.names[column]!r}: infinite rating; expected a "
                "number (or empty where the rater gave none)",
            )
        ratings[name] = _on_frames(track, column, time_s, frames).astype(np.float32)
    features = np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)
    return Video(
        video.video_id,
        video.split,
        features,
        np.asarray(time_s, dtype=np.float64),
        fps,
        arousal=labels["arousal"],
        valence=labels["valence"],
        ratings=ratings or None,
    )


def _span_text(track: Track) -> tuple[str, str]:
    if track.time_s is not None:
        return f"{track.time_s[0]:g} s", f"{track.time_s[-1]:g} s"
    assert track.frame is not None
    return f"frame {int(track.frame[0])}", f"frame {int(track.frame[-1])}"


def _check_same_axis(track: Track, frames: np.ndarray, main: Track, main_frames: np.ndarray, kind: str) -> None:
    if track.num_rows != main.num_rows:
        raise fail(
            track.where,
            f"{track.num_rows} {kind} rows but {main.num_rows} feature rows in {main.where}; "
            "expected one row per feature frame on the same time axis",
        )
    bad = np.flatnonzero(frames != main_frames)
    if bad.size:
        row = int(bad[0])
        mine = track.time_s[row] if track.time_s is not None else frames[row]
        theirs = main.time_s[row] if main.time_s is not None else main_frames[row]
        raise fail(
            track.where,
            f"{track.row_ref(row)}: frameTime {mine:g} disagrees with {theirs:g} in "
            f"{main.where}; expected the same time axis as the features",
        )
