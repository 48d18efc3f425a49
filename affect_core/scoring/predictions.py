"""The predictions table: its schema, who its rows are from, the writer a scoring job commits through, and the lazy
reader that evaluation and reports use.

Predictions are a table (:mod:`affect_core.data.delta`, Delta Lake) at PRED_URL: columns PREDICTION_SCHEMA, files of
many whole videos partitioned by split, frames in order. The table's metadata names the model (``model_id``: a hash of
its weights and configuration) and the dataset URL and version it scored; every row carries both too. A job commits
what it has scored each time a file fills (or every COMMIT_SECONDS), so a crashed job resumes by skipping the videos
committed by the same model on the same dataset version. Scoring into a URL that holds another model's or another
version's predictions replaces them in the job's first commit (one transaction: readers see the old rows or the new,
never both), or with ``replace=False`` refuses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from affect_core.data import delta, keys
from affect_core.data.dataset.format import PREDICTIONS_KIND
from affect_core.data.records import Video
from affect_core.errors import AffectError
from affect_core.storage import Location, list_dir

PREDICTION_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("split", pa.string()),
        ("frame", pa.int32()),
        ("time_s", pa.float64()),
        ("arousal", pa.float32()),
        ("valence", pa.float32()),
        ("arousal_var", pa.float32()),
        ("valence_var", pa.float32()),
        ("face", pa.bool_()),
        ("face_id", pa.int32()),
        ("model_id", pa.string()),
        ("dataset_version", pa.string()),
    ]
)
# A running job commits what it has scored at least this often (a crash loses at most this much work).
COMMIT_SECONDS = 300.0

# The column that says whether a frame had a face; tables written before it existed lack it and are still read.
FACE = "face"
# Which person's face a row is of (0: the principal face, the only one unless scored with --faces all); tables
# written before it existed lack it and are still read (every row is then the principal face's).
FACE_ID = "face_id"

Tracks = dict[str, tuple[np.ndarray, np.ndarray]]
"""{dimension: (level (T,), variance (T,))} of one video."""


@dataclass
class GridVideo(Video):
    """A video the model scores on its own time grid whose predictions are written on its decoded frames.

    features, time_s: the video on the model's grid (G rows at ``fps``); frame_time_s: (N,) the decoded frames'
    presentation timestamps; frame_face: (N,) bool, whether each decoded frame had a face. Its prediction rows are
    one per decoded frame (frame = decode index, time_s = timestamp), each the model's output at that time,
    interpolated between the two nearest grid steps (:func:`affect_core.video.timegrid.on_frames`).

    face_id, faces: this is the track of person ``face_id`` of the ``faces`` tracks of its video (``--faces all``);
    the tracks of one video come one after another, face_id 0 first, and their rows are written as one video."""

    frame_time_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    frame_face: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    face_id: int = 0
    faces: int = 1

    @property
    def written_frames(self) -> int:
        return int(self.frame_time_s.shape[0])


def written_frames(video: Video) -> int:
    """Prediction rows a scored video writes: its decoded frames (a GridVideo) or its frames."""
    return video.written_frames if isinstance(video, GridVideo) else video.num_frames


def has_face(features: np.ndarray) -> np.ndarray:
    """(T,) bool: the frames of ``features`` (T, d) that had a face (a frame without one is a row of NaN)."""
    return ~np.isnan(features).all(axis=1) if features.shape[1] else np.ones(features.shape[0], bool)


def _written(video: Video, tracks: Tracks) -> tuple[np.ndarray, np.ndarray, Tracks]:
    """(times (N,), face (N,), tracks on those N rows) of one scored video."""
    if not isinstance(video, GridVideo):
        return np.asarray(video.time_s, np.float64), has_face(video.features), tracks
    from affect_core.video.timegrid import on_frames

    grid, frames = np.asarray(video.time_s, np.float64), video.frame_time_s
    placed = {
        dim: (on_frames(grid, level, frames), on_frames(grid, var, frames)) for dim, (level, var) in tracks.items()
    }
    return frames, video.frame_face, placed


@dataclass
class PredictionTarget:
    """Who the predictions at a URL are from: the model and the dataset (URL and version) it scored."""

    model_id: str
    dataset_url: str = ""
    dataset_version: str = ""

    def metadata(self) -> dict[str, str]:
        return {
            keys.KIND: PREDICTIONS_KIND,
            keys.MODEL_ID: self.model_id,
            keys.DATASET_URL: self.dataset_url,
            keys.DATASET_VERSION: self.dataset_version,
            keys.FACE_COUNTS: "1",
        }

    @classmethod
    def of(cls, snapshot: delta.Snapshot) -> PredictionTarget:
        meta = snapshot.metadata
        return cls(
            str(meta.get(keys.MODEL_ID, "")),
            str(meta.get(keys.DATASET_URL, "")),
            str(meta.get(keys.DATASET_VERSION, "")),
        )


def open_predictions(out: Location, *, version: int | None = None) -> delta.Snapshot | None:
    """The predictions table at ``out`` (None if there is none yet); refuses a URL holding something else."""
    snap = delta.snapshot(out, version)
    if snap is None:
        # split=... folders without a log are a crashed first job's uncommitted files: the next job may write here
        entries = [n for n, _ in _list(out) if not n.startswith((".", "_", "split="))]
        if entries:
            raise AffectError(
                f"{out.display()}: holds {entries[0]!r} and is not a predictions table (no _delta_log/); "
                "score into an empty directory or a new URL"
            )
        return None
    if snap.metadata.get(keys.KIND) != PREDICTIONS_KIND:
        raise AffectError(
            f"{out.display()}: a table of {snap.metadata.get(keys.KIND, 'dataset')} rows, not of predictions; "
            "score into another URL"
        )
    return snap


def _list(out: Location) -> list[tuple[str, str]]:
    return list_dir(out.fs, out.path)


def finished_videos(out: Location) -> set[str]:
    """Video ids whose predictions are committed under ``out``."""
    snap = open_predictions(out)
    return set(snap.video_ids().to_pylist()) if snap is not None else set()


def plan_scoring(
    out: Location, target: PredictionTarget, *, replace: bool = True
) -> tuple[delta.Snapshot | None, set[str], bool]:
    """(table snapshot, videos already done, whether the first commit replaces the table) for a job scoring
    ``target`` into ``out``. Predictions of another model or dataset version are replaced (``replace``) or refused."""
    snap = open_predictions(out)
    if snap is None:
        return None, set(), False
    held = PredictionTarget.of(snap)
    if held == target:
        return snap, set(snap.video_ids().to_pylist()), False
    if not replace:
        raise AffectError(
            f"{out.display()}: holds predictions of model {held.model_id} on {held.dataset_url} version "
            f"{held.dataset_version or '-'}, not of model {target.model_id} on {target.dataset_url} version "
            f"{target.dataset_version or '-'}; score into another URL, or allow replacing them"
        )
    return snap, set(), True


def write_predicted(
    files: delta.FileWriter, videos: Sequence[Video], tracks: Sequence[Tracks], model_id: str, dataset_version: str
) -> list[delta.DataFile]:
    """Append the prediction rows of consecutive videos to table files; returns the files this closed."""
    table = prediction_rows(videos, tracks, model_id, dataset_version)
    lengths = np.array([written_frames(v) for v in videos], dtype=np.int64)
    no_face = (~table.column(FACE).to_numpy(zero_copy_only=False)).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    missing = np.add.reduceat(no_face, starts) if len(no_face) else np.zeros(len(videos), np.int64)
    missing = np.where(lengths > 0, missing, 0)
    entries: list[delta.VideoEntry] = []
    for n, (v, rows, m) in enumerate(zip(videos, lengths, missing, strict=True)):
        if n and videos[n - 1].video_id == v.video_id:  # another face track of the same video: one entry
            last = entries[-1]
            entries[-1] = delta.VideoEntry(
                v.video_id, v.split, last.frames + int(rows), frames_without_face=last.frames_without_face + int(m)
            )
        else:
            entries.append(delta.VideoEntry(v.video_id, v.split, int(rows), frames_without_face=int(m)))
    return files.add_videos(table, entries)


def prediction_rows(
    videos: Sequence[Video], tracks: Sequence[Tracks], model_id: str, dataset_version: str = ""
) -> pa.Table:
    """The predicted tracks of consecutive videos as one table in PREDICTION_SCHEMA, a video's rows together and in
    frame order (a dimension missing from a video's tracks is null; a GridVideo's rows are its decoded frames). Built
    column by column for the whole batch."""
    written = [_written(v, t) for v, t in zip(videos, tracks, strict=True)]
    tracks = [t for _, _, t in written]
    lengths = np.array([len(times) for times, _, _ in written], dtype=np.int64)
    total = int(lengths.sum())
    owner = pa.array(np.repeat(np.arange(len(videos), dtype=np.int64), lengths))
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    columns: dict[str, Any] = {
        "video_id": pa.array([v.video_id for v in videos], pa.string()).take(owner),
        "split": pa.array([v.split for v in videos], pa.string()).take(owner),
        "frame": pa.array((np.arange(total, dtype=np.int64) - starts).astype(np.int32)),
        "time_s": pa.array(_joined([times for times, _, _ in written], np.float64)),
    }
    for dim in ("arousal", "valence"):
        levels = [np.asarray(t[dim][0], np.float32) if dim in t else None for t in tracks]
        variances = [np.asarray(t[dim][1], np.float32) if dim in t else None for t in tracks]
        missing = np.repeat(np.array([x is None for x in levels]), lengths)
        filled = [x if x is not None else np.full(n, np.nan, np.float32) for x, n in zip(levels, lengths, strict=True)]
        columns[dim] = pa.array(_joined(filled, np.float32), mask=missing if missing.any() else None)
        filled = [
            x if x is not None else np.full(n, np.nan, np.float32) for x, n in zip(variances, lengths, strict=True)
        ]
        columns[f"{dim}_var"] = pa.array(_joined(filled, np.float32), from_pandas=True)
    columns[FACE] = pa.array(_joined([face for _, face, _ in written], np.bool_))
    face_ids = np.array([getattr(v, "face_id", 0) for v in videos], np.int32)
    columns[FACE_ID] = pa.array(np.repeat(face_ids, lengths))
    columns["model_id"] = pa.repeat(pa.scalar(model_id, pa.string()), total)
    columns["dataset_version"] = pa.repeat(pa.scalar(dataset_version, pa.string()), total)
    return pa.table(columns, schema=PREDICTION_SCHEMA)


def _joined(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


class PredictionWriter:
    """Packs predicted videos into table files and commits them: when a file fills, every COMMIT_SECONDS, and at
    :meth:`close`. The first commit replaces the table when ``replace``. Called from one thread."""

    def __init__(
        self,
        out: Location,
        target: PredictionTarget,
        *,
        snapshot: delta.Snapshot | None,
        replace: bool,
        target_file_bytes: int = delta.DEFAULT_TARGET_FILE_BYTES,
        commit_seconds: float = COMMIT_SECONDS,
    ) -> None:
        self.out = out
        self.target = target
        self.model_id = target.model_id
        self.read_version = snapshot.version if snapshot is not None else None
        self.replace = replace
        self.commit_seconds = commit_seconds
        self.files = delta.FileWriter(out, PREDICTION_SCHEMA, target_file_bytes=target_file_bytes)
        self.ready: list[delta.DataFile] = []
        self.last_commit = time.monotonic()
        self.commits = 0
        self.failed = False
        self.held: tuple[list[Video], list[Tracks]] = ([], [])

    def _whole_videos(self, videos: Sequence[Video], tracks: Sequence[Tracks]) -> tuple[list[Video], list[Tracks]]:
        """The videos of this batch and those held back from the last one, less the face tracks of a video whose
        other tracks are still to come (held back: a video's rows are written together)."""
        held_videos, held_tracks = self.held
        videos, tracks = [*held_videos, *videos], [*held_tracks, *tracks]
        cut = len(videos)
        if videos and isinstance(videos[-1], GridVideo) and videos[-1].face_id < videos[-1].faces - 1:
            cut -= 1
            while cut and videos[cut - 1].video_id == videos[-1].video_id:
                cut -= 1
        self.held = (videos[cut:], tracks[cut:])
        return videos[:cut], tracks[:cut]

    def add_batch(self, videos: Sequence[Video], tracks: Sequence[Tracks]) -> None:
        """Write the predicted tracks of consecutive videos (commits as files fill, or every commit_seconds)."""
        if self.failed:  # a batch before this one failed: the job stops committing
            return
        try:
            videos, tracks = self._whole_videos(videos, tracks)
            if not videos:
                return
            self.ready += write_predicted(self.files, videos, tracks, self.model_id, self.target.dataset_version)
            if self._due():
                self.commit(flush=not self.ready)
        except BaseException:
            self.failed = True
            raise

    def add_files(self, files: Sequence[delta.DataFile]) -> None:
        """Commit table files of predictions that a scorer elsewhere (a Ray actor) wrote: with the next commit, which
        is now. They are deleted by :meth:`abort` until committed."""
        self.files.written += files
        self.ready += files
        self.commit(flush=False)

    def _due(self) -> bool:
        """Whether to commit now: a file filled up, or commit_seconds passed since the last commit."""
        return any(f.full for f in self.ready) or time.monotonic() - self.last_commit >= self.commit_seconds

    def commit(self, *, flush: bool = True) -> None:
        if flush:
            self.ready += self.files.flush()
        if not self.ready and not (self.replace or self.read_version is None):
            return
        try:
            self.read_version = delta.commit(
                self.out,
                PREDICTION_SCHEMA,
                added=self.ready,
                read_version=self.read_version,
                metadata=self.target.metadata(),
                replace=self.replace,
                operation="score",
            )
        except delta.CommitConflict as exc:
            self.abort()
            raise AffectError(
                f"{exc}. Another scoring job wrote into this URL at the same time; run this one again to resume"
            ) from None
        self.files.written = [f for f in self.files.written if f not in self.ready]
        self.ready = []
        self.replace = False
        self.commits += 1
        self.last_commit = time.monotonic()

    def close(self) -> None:
        if self.held[0]:
            raise AffectError(
                f"{self.out.display()}: video {self.held[0][0].video_id} ended before all of its face tracks were "
                "scored"
            )
        self.commit(flush=True)

    def abort(self) -> None:
        """Delete the files not yet committed."""
        self.files.abort()
        self.ready = []


class PredictionStore(Mapping[str, pa.Table]):
    """The predictions of one table version as a read-only mapping {video id: its rows (PREDICTION_SCHEMA)}, in the
    table's order (split, then natural id). Memory stays flat whatever the table holds: the index is the snapshot's
    Arrow columns, and rows are read on access, one row group at a time (the last one read is kept).

    Lookups in the table's order (what evaluation does) walk a cursor forward through the index: each costs O(1)
    and consecutive videos of a row group one read. A lookup behind the cursor restarts the walk from the first
    video (O(videos) for that lookup)."""

    def __init__(self, out: Location, snapshot: delta.Snapshot) -> None:
        self.out = out
        self.snapshot = snapshot
        self.target = PredictionTarget.of(snapshot)
        self._cursor: Iterator[delta.VideoEntry] = iter(())
        self._cached: tuple[tuple[str, int], pa.Table] | None = None
        self._file: Any = None

    def _find(self, video_id: str) -> delta.VideoEntry | None:
        for entry in self._cursor:
            if entry.video_id == video_id:
                return entry
        self._cursor = self.snapshot.entries()  # behind the cursor, or absent: one walk from the start
        for entry in self._cursor:
            if entry.video_id == video_id:
                return entry
        return None

    def __getitem__(self, video_id: str) -> pa.Table:
        entry = self._find(video_id)
        if entry is None:
            raise KeyError(video_id)
        key = (entry.path, entry.row_group)
        if self._cached is None or self._cached[0] != key:
            if self._file is None or self._file.path != entry.path:
                self.close()
                self._file = delta.TableFile(self.out, entry.path)  # the footer is parsed once per file
            self._cached = (key, self._file.read([entry.row_group]))
        table = self._cached[1]
        mask = pc.equal(table.column("video_id"), video_id)
        return table.filter(mask)

    def close(self) -> None:
        """Close the file held open (reading again reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __iter__(self) -> Iterator[str]:
        return (entry.video_id for entry in self.snapshot.entries())

    def __len__(self) -> int:
        return self.snapshot.video_count

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and bool(
            delta.select_index(pa.table({"video_id": self.snapshot.video_ids()}), None, [video_id]).num_rows
        )

    def video_ids(self) -> pa.ChunkedArray:
        """The ids of every video with predictions (an Arrow column: no object per video)."""
        return self.snapshot.video_ids()

    def frames(self) -> int:
        """Predicted frames over the table."""
        return sum(int(pc.sum(f.index.column("frames")).as_py() or 0) for f in self.snapshot.files if f.video_count)


def read_predictions(
    pred_url: str | Location | delta.VersionedLocation,
    storage_options: dict[str, Any] | None = None,
    *,
    version: int | str | None = None,
) -> PredictionStore:
    """The predictions at PRED_URL (``URL@VERSION`` or ``version`` pins a version; a URL is resolved here, a
    Location was resolved before) as a lazy mapping {video id: table}; the table's ``target`` names the model and
    dataset version they are from."""
    where = delta.resolve_versioned(pred_url, storage_options)
    loc, pinned = where.loc, where.version
    wanted = pinned if pinned is not None else delta.parse_version(version, loc.display())
    snap = open_predictions(loc, version=wanted)
    if snap is None:
        raise AffectError(f"{loc.display()}: no predictions here")
    store = PredictionStore(loc, snap)
    if not len(store):
        raise AffectError(f"{loc.display()}: the predictions table holds no video")
    return store


def scored_version(predictions: PredictionStore, dataset: delta.VersionedLocation) -> str | None:
    """The version of ``dataset`` to read beside ``predictions``: the one they were scored from when it is that
    table and its URL pins no version itself; else None (the URL's own version, or the latest)."""
    target = predictions.target
    if dataset.version is not None or not target.dataset_version or not target.dataset_url:
        return None
    if dataset.loc.display() != target.dataset_url:
        return None
    return target.dataset_version
