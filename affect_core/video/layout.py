"""The ``video`` input layout: video files in, the same Corpus / Video records as every other layout out.

    ROOT/videos/<video_id>.<mp4|mkv|avi|mov|webm>   one file per video (any frame rate, constant or variable)
    ROOT/partition.csv                              video_id,split (every video)
    ROOT/labels/<video_id>.csv                      optional: frameTime (seconds) or frame (decoded frame number),
                                                    arousal, valence; at any rate (NaN or empty: unlabelled)

Time: each decoded frame keeps its presentation timestamp (rotation metadata applied, :mod:`affect_core.video.decode`);
the dataset's rows are a time grid at one frame rate per corpus (``fps`` when the ingest is given one, else the median
of the rates the containers declare, :func:`grid_fps`), the features placed on it by timestamp
(:mod:`affect_core.video.timegrid`), and the labels placed on it by time as the openface layout's are (a label row that
numbers a decoded frame takes that frame's timestamp).

Every video goes through :func:`affect_core.video.extract.extract_video`. The PCA is fitted first, on frames sampled
evenly from the train videos (at most ``pca_frames``), then every video is extracted and reduced with the fitted
:class:`~affect_core.video.transform.VideoTransform`. ``mapper`` runs the per-video work: the builtin ``map`` (one
process, the default) or Ray (``tuning.video_extract.ray_mapper``: one task per video, only features leave the
workers).

The layout sits above ``affect_core.data`` and registers itself there when this module is imported
(:class:`VideoLayout`, :mod:`affect_core.data.layouts.provided`): ``read_source(ROOT, "video")`` reads a whole corpus
(:func:`read_video_source`), and ``affect_core.data.dataset.ingest(ROOT, DATASET, layout="video")`` ingests it through
the one ingest entrance, one video at a time (:func:`video_plan`), the fitted transform stored with the version
inside the same commit (:mod:`affect_core.video.stored`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from affect_core import storage
from affect_core.data import source_videos as sv
from affect_core.data.assemble import assemble_corpus, snap_fps
from affect_core.data.dataset.by_video import SourcePlan, VideoCache, check_reread
from affect_core.data.dataset.hashing import video_hash
from affect_core.data.layouts.provided import LayoutOptions, register
from affect_core.data.records import AFFECT_DIMENSIONS, Corpus, Video
from affect_core.data.tables import read_csv_table
from affect_core.data.tracks import (
    SourceRead,
    SourceVideo,
    Track,
    check_split,
    check_video_id,
    label_track,
    video_sort_key,
)
from affect_core.errors import AffectError, fail
from affect_core.video.config import VideoConfig
from affect_core.video.decode import VIDEO_SUFFIXES, check_readable, probe
from affect_core.video.extract import VideoFeatures, extract_video, sample_video
from affect_core.video.stored import transform_file
from affect_core.video.timegrid import features_on_grid
from affect_core.video.transform import FEATURE_SET, VideoTransform, fit_transform

LAYOUT = "video"
VIDEOS_DIR = "videos"
LABELS_DIR = "labels"
PARTITION = "partition.csv"
# The grid's frame rate when no video's container declares one (and no fps is given): RECOLA's.
DEFAULT_FPS = 25.0

T = TypeVar("T")
Mapper = Callable[[Callable[[Any], T], Iterable[Any]], Iterator[T]]
"""Runs a function over jobs and yields the results in the jobs' order (the builtin ``map`` is one). A mapper with an
attribute ``segment_frames`` (Ray's) gets a video longer than 1.5 times that as several jobs of that many frames."""


@dataclass(frozen=True)
class VideoJob:
    """One video file to read: ``url`` (fsspec URL or local path) and how to name it in messages."""

    video_id: str
    split: str
    url: str
    where: str
    storage_options: dict[str, Any] | None = None
    start: int = 0
    stop: int | None = None

    def open(self) -> Any:
        loc = storage.resolve(self.url, self.storage_options)
        if loc.is_local:
            return loc.path
        return loc.fs.open(loc.path, "rb")


@dataclass
class VideoCorpus(Corpus):
    """A Corpus read from videos, with the fitted video transform that produced its features."""

    video_transform: VideoTransform | None = field(default=None, repr=False)


def _checked_source(job: VideoJob) -> Any:
    try:
        return job.open()
    except (OSError, ValueError) as exc:
        raise fail(job.where, f"cannot be opened ({type(exc).__name__})") from None


@dataclass(frozen=True)
class VideoFailure:
    """A video that could not be read: its id, its file and why (``problem``: the one line, naming the file)."""

    video_id: str
    where: str
    problem: str

    def to_dict(self) -> dict[str, str]:
        return {"video_id": self.video_id, "file": self.where, "problem": self.problem}


def probe_job(job: VideoJob) -> VideoFailure | None:
    """None when the video opens, has a video stream and decodes a first frame; else why not (before any
    extraction: a truly unreadable file costs no detection)."""
    try:
        source = _checked_source(job)
        try:
            check_readable(source, job.where)
        finally:
            if hasattr(source, "close"):
                source.close()
    except AffectError as exc:
        return VideoFailure(job.video_id, job.where, str(exc))
    return None


def extract_or_fail(
    job: VideoJob, transform: VideoTransform, device: str | None = None
) -> VideoFeatures | VideoFailure:
    """:func:`extract_job`, its bad input returned as a VideoFailure instead of raised (one bad video of many)."""
    try:
        return extract_job(job, transform, device)
    except AffectError as exc:
        return VideoFailure(job.video_id, job.where, str(exc))


def extract_job(job: VideoJob, transform: VideoTransform, device: str | None = None) -> VideoFeatures:
    """The PCA-reduced features of one video (a picklable unit of work for a mapper)."""
    source = _checked_source(job)
    try:
        return extract_video(source, job.where, transform, device=device, start=job.start, stop=job.stop)
    finally:
        if hasattr(source, "close"):
            source.close()


def sample_job(job: VideoJob, config: VideoConfig, every: int, limit: int, device: str | None = None) -> np.ndarray:
    """Raw LGBP-TOP rows of every ``every``-th frame with a face of one video, at most ``limit`` (for the PCA)."""
    source = _checked_source(job)
    try:
        return sample_video(source, job.where, config, every=every, limit=limit, device=device)
    finally:
        if hasattr(source, "close"):
            source.close()


def _estimated_frames(job: VideoJob) -> int:
    source = _checked_source(job)
    try:
        info = probe(source, job.where)
    finally:
        if hasattr(source, "close"):
            source.close()
    return max(1, info.frames)


def segment_jobs(jobs: list[VideoJob], segment_frames: int | None) -> list[VideoJob]:
    """``jobs`` with every video longer than 1.5 ``segment_frames`` (by its container's frame count) split into
    segments of ``segment_frames`` frames, in order; the last segment runs to the end of the video."""
    if not segment_frames:
        return jobs
    out: list[VideoJob] = []
    for job in jobs:
        frames = _estimated_frames(job)
        if frames <= 1.5 * segment_frames:
            out.append(job)
            continue
        starts = list(range(0, frames - segment_frames // 2, segment_frames))
        for start, stop in zip(starts, [*starts[1:], None], strict=True):
            out.append(dataclasses.replace(job, start=start, stop=stop))
    return out


def merge_segments(
    jobs: list[VideoJob], results: Iterable[VideoFeatures | VideoFailure]
) -> Iterator[tuple[VideoJob, VideoFeatures | VideoFailure]]:
    """(whole-video job, features) per video from the results of :func:`segment_jobs`' jobs, in order; a video one of
    whose segments failed gives that VideoFailure."""
    current: VideoJob | None = None
    parts: list[VideoFeatures | VideoFailure] = []

    def whole() -> tuple[VideoJob, VideoFeatures | VideoFailure]:
        assert current is not None
        job = dataclasses.replace(current, start=0, stop=None)
        failed = [p for p in parts if isinstance(p, VideoFailure)]
        if failed:
            return job, failed[0]
        done = [p for p in parts if isinstance(p, VideoFeatures)]
        features = VideoFeatures(
            np.concatenate([p.time_s for p in done]),
            np.concatenate([p.features for p in done]),
            np.concatenate([p.boxes for p in done]),
            done[0].fps,
        )
        return job, features

    for job, result in zip(jobs, results, strict=True):
        if current is not None and job.video_id != current.video_id:
            yield whole()
            parts = []
        current = job
        parts.append(result)
    if parts:
        yield whole()


def extract_jobs(
    jobs: list[VideoJob],
    transform: VideoTransform,
    *,
    mapper: Mapper = map,
    device: str | None = None,
    keep_going: bool = False,
) -> Iterator[tuple[VideoJob, Any]]:
    """(job, features) of every video of ``jobs``, in order; long videos in segments where the mapper asks for them.
    keep_going: a video that cannot be read gives (job, VideoFailure) instead of raising (the others go on)."""
    work = segment_jobs(jobs, getattr(mapper, "segment_frames", None))
    extract = extract_or_fail if keep_going else extract_job
    extracted = mapper(functools.partial(extract, transform=transform, device=device), work)
    return merge_segments(work, extracted)


def is_video_file(name: str) -> bool:
    """Whether a file name has one of VIDEO_SUFFIXES (any case) and is not hidden."""
    stem, dot, suffix = name.rpartition(".")
    return bool(dot and stem) and not name.startswith((".", "_")) and "." + suffix.lower() in VIDEO_SUFFIXES


def videos_subfolder(loc: storage.Location) -> str:
    """Where ROOT's videos are: "videos" (the video layout), or "" for a plain folder of video files (what a user
    points `affect score` at: ROOT/<video_id>.mp4 with no videos/ folder)."""
    if storage.is_dir(loc.fs, loc.join(VIDEOS_DIR).path):
        return VIDEOS_DIR
    plain = storage.is_dir(loc.fs, loc.path) and any(
        kind == "file" and is_video_file(name) for name, kind in storage.list_dir(loc.fs, loc.path)
    )
    return "" if plain else VIDEOS_DIR


def list_video_files(loc: storage.Location, subfolder: str = VIDEOS_DIR) -> dict[str, str]:
    """video id -> file name of every video in ROOT/<subfolder>/ (ROOT itself for ""; hidden files skipped). In a plain
    folder other files (notes, CSVs) are left out; in videos/ they are refused."""
    folder = storage.join(loc.path, subfolder)
    if not storage.is_dir(loc.fs, folder):
        raise fail(loc.display(VIDEOS_DIR), "folder not found; expected ROOT/videos/<video_id>.mp4 (video layout)")
    files: dict[str, str] = {}
    for name, kind in storage.list_dir(loc.fs, folder):
        if kind != "file" or name.startswith((".", "_")):
            continue
        if not is_video_file(name):
            if not subfolder:  # a plain folder's other files are left alone
                continue
            raise fail(
                loc.display(subfolder, name),
                f"unexpected file; expected video files named <video_id>{'|'.join(VIDEO_SUFFIXES)}",
            )
        stem = name.rpartition(".")[0]
        check_video_id(stem, loc.display(subfolder, name))
        if stem in files:
            raise fail(
                loc.display(subfolder, name),
                f"video {stem!r} also in {files[stem]}; expected one file per video id",
            )
        files[stem] = name
    if not files:
        raise fail(loc.display(subfolder), "no video files; expected ROOT/videos/<video_id>.mp4")
    return files


def read_partition(loc: storage.Location, *, required: bool = True) -> dict[str, str] | None:
    """video id -> split from ROOT/partition.csv (None when absent and not required)."""
    where = loc.display(PARTITION)
    if not storage.exists(loc.fs, loc.join(PARTITION).path):
        if required:
            raise fail(where, "file not found; expected a partition table with columns video_id, split")
        return None
    data = storage.read_bytes(loc.fs, loc.join(PARTITION).path)
    table = read_csv_table(data, where, string_columns=("video_id", "split"))
    if table.names != ["video_id", "split"]:
        raise fail(where, f"columns {', '.join(table.names)}; expected columns video_id, split")
    partition: dict[str, str] = {}
    for row, (video_id, split) in enumerate(zip(table.columns["video_id"], table.columns["split"], strict=True)):
        ref = f"{where}: {table.row_ref(row)}"
        check_video_id(str(video_id), ref)
        check_split(str(split), ref)
        if video_id in partition:
            raise AffectError(f"{ref}: duplicate video id {video_id!r}; expected each video once")
        partition[str(video_id)] = str(split)
    if not partition:
        raise fail(where, "no videos; expected one row per video")
    return partition


def video_jobs(
    root: storage.Where, storage_options: dict[str, Any] | None = None, *, partition_required: bool = True
) -> list[VideoJob]:
    """One job per video of ROOT, in the partition's order (or by id when there is no partition: split "test").

    ROOT is resolved here unless it is a Location already; each job carries its video's URL and
    ``storage_options`` to wherever it is read (a Ray task, which resolves it on its side: a filesystem object with
    the driver's credentials never travels)."""
    loc = storage.resolve(root, storage_options)
    if not storage.is_dir(loc.fs, loc.path):
        problem = "is a file" if storage.exists(loc.fs, loc.path) else "does not exist"
        raise fail(loc.display(), f"source {problem}; expected a directory in the video layout")
    subfolder = videos_subfolder(loc) if not partition_required else VIDEOS_DIR
    files = list_video_files(loc, subfolder)
    partition = read_partition(loc, required=partition_required)
    if partition is None:
        partition = {video_id: "test" for video_id in sorted(files, key=lambda v: video_sort_key("test", v))}
    for video_id in partition:
        if video_id not in files:
            raise fail(
                loc.display(PARTITION),
                f"video {video_id!r} has no file; expected {VIDEOS_DIR}/{video_id}.mp4 (or .mkv, .avi, .mov, .webm)",
            )
    for video_id, name in files.items():
        if video_id not in partition:
            raise fail(loc.display(subfolder, name), f"video {video_id!r} is not listed in {PARTITION}")
    return [
        VideoJob(
            video_id,
            split,
            storage.join(loc.url, subfolder, files[video_id]),
            loc.display(subfolder, files[video_id]),
            storage_options,
        )
        for video_id, split in partition.items()
    ]


def fit_video_transform(
    jobs: list[VideoJob], config: VideoConfig, *, mapper: Mapper = map, device: str | None = None
) -> VideoTransform:
    """Fit the PCA on at most ``config.pca_frames`` frames sampled evenly over the train videos of ``jobs``."""
    train = [j for j in jobs if j.split == "train"]
    if not train:
        raise AffectError("video layout: no train videos in the partition; expected train videos to fit the PCA on")
    total = sum(mapper(_estimated_frames, train))
    every = max(1, math.ceil(total / config.pca_frames))
    # Each video gives at most twice its even share, so the samples held at once stay near pca_frames rows even when
    # the containers' frame counts are off.
    limit = 2 * math.ceil(config.pca_frames / len(train))
    sample = functools.partial(sample_job, config=config, every=every, limit=limit, device=device)
    rows = [r for r in mapper(sample, train) if len(r)]
    samples = np.concatenate(rows) if rows else np.zeros((0, config.raw_dim), np.float32)
    if len(samples) > config.pca_frames:
        samples = samples[np.linspace(0, len(samples) - 1, config.pca_frames).round().astype(int)]
    return fit_transform(samples, config)


def label_files(loc: storage.Location, video_ids: set[str]) -> dict[str, str]:
    """video id -> file name of ROOT/labels/<video_id>.csv (the csv layout's label files), checked by name only."""
    folder = storage.join(loc.path, LABELS_DIR)
    if not storage.is_dir(loc.fs, folder):
        return {}
    files: dict[str, str] = {}
    for name, kind in storage.list_dir(loc.fs, folder):
        if kind != "file" or name.startswith((".", "_")):
            continue
        where = loc.display(LABELS_DIR, name)
        if not name.endswith(".csv"):
            raise fail(where, "unexpected file; expected label files named <video_id>.csv")
        video_id = check_video_id(name[: -len(".csv")], where)
        if video_id not in video_ids:
            raise fail(where, f"labels for video {video_id!r} but no such video; expected {VIDEOS_DIR}/{video_id}.mp4")
        files[video_id] = name
    return files


def read_label_file(loc: storage.Location, name: str) -> Track:
    """The label track of ROOT/labels/``name``."""
    data = storage.read_bytes(loc.fs, storage.join(loc.path, LABELS_DIR, name))
    return label_track(read_csv_table(data, loc.display(LABELS_DIR, name)))


def read_labels(loc: storage.Location, video_ids: set[str]) -> dict[str, Track]:
    """Label tracks of ROOT/labels/<video_id>.csv, by video id."""
    return {video_id: read_label_file(loc, name) for video_id, name in label_files(loc, video_ids).items()}


def grid_fps(jobs: list[VideoJob], fps: float | None, mapper: Mapper = map) -> float:
    """The frame rate of a corpus's time grid: ``fps`` when given, else the median of the rates the videos' containers
    declare, as the nearest common rate (23.976, 25, 29.97, ...); DEFAULT_FPS when none declares one."""
    if fps is not None:
        if not (math.isfinite(fps) and fps > 0):
            raise AffectError(f"fps={fps:g}: expected a positive frame rate in frames per second (e.g. 25)")
        return float(fps)
    rates = [r for r in mapper(_declared_rate, jobs) if r > 0]
    return snap_fps(float(np.median(rates))) if rates else DEFAULT_FPS


def _declared_rate(job: VideoJob) -> float:
    source = _checked_source(job)
    try:
        return probe(source, job.where).fps
    finally:
        if hasattr(source, "close"):
            source.close()


def _feature_track(features: VideoFeatures, names: list[str], where: str, fps: float) -> Track:
    """The features of the decoded frames placed on the grid at ``fps`` by their timestamps (NaN rows: no face)."""
    grid, values = features_on_grid(features.time_s, features.features, fps)
    return Track(where, names, values.astype(np.float64), grid, None, lambda row: f"grid step {row}")


def _labels_by_time(track: Track, frame_time: np.ndarray) -> Track:
    """A label track that numbers decoded frames (a ``frame`` column) given their timestamps, so that it is placed on
    the grid by time like one with a frameTime column."""
    if track.time_s is not None or track.frame is None:
        return track
    frames = track.frame
    bad = np.flatnonzero((frames < 0) | (frames >= frame_time.shape[0]) | (frames != np.round(frames)))
    if bad.size:
        row = int(bad[0])
        raise fail(
            track.where,
            f"{track.row_ref(row)}, attribute 'frame': {frames[row]:g} is not one of the video's "
            f"{frame_time.shape[0]} decoded frames; expected frame numbers 0..{frame_time.shape[0] - 1}",
        )
    return dataclasses.replace(track, time_s=frame_time[frames.astype(np.int64)], frame=None)


def read_video_source(
    root: storage.Where,
    *,
    storage_options: dict[str, Any] | None = None,
    config: VideoConfig | None = None,
    transform: VideoTransform | None = None,
    mapper: Mapper = map,
    device: str | None = None,
    progress: bool = False,
    fps: float | None = None,
) -> VideoCorpus:
    """Read and validate a corpus in the video layout: fit the video transform on the train split (unless given),
    extract every video, put it on the time grid at ``fps`` (default: :func:`grid_fps`) with its labels. Raises
    AffectError on any bad input (nothing is written)."""
    from tqdm.auto import tqdm

    loc = storage.resolve(root, storage_options)
    jobs = video_jobs(loc, storage_options)
    labels = read_labels(loc, {j.video_id for j in jobs})  # before any video is decoded: bad labels fail fast
    if transform is None:
        transform = fit_video_transform(jobs, config or VideoConfig(), mapper=mapper, device=device)
    names = transform.feature_names
    rate = grid_fps(jobs, fps, mapper)
    extracted = extract_jobs(jobs, transform, mapper=mapper, device=device)
    videos: list[SourceVideo] = []
    for job, features in tqdm(extracted, total=len(jobs), desc="videos", disable=not progress):
        video = SourceVideo(job.video_id, job.split)
        video.features[FEATURE_SET] = _feature_track(features, names, job.where, rate)
        if job.video_id in labels:
            track = _labels_by_time(labels[job.video_id], features.time_s)
            for column, dimension in enumerate(AFFECT_DIMENSIONS):
                video.labels[dimension] = (track, column)
        videos.append(video)
    read = SourceRead(videos, [FEATURE_SET], labels_by_time=True)
    corpus = assemble_corpus(read, source=loc.display(), layout=LAYOUT)
    corpus.metadata["source_bytes"] = str(_source_bytes(loc))
    corpus.metadata["video_config"] = json.dumps(transform.config.to_dict())
    return VideoCorpus(**vars(corpus), video_transform=transform)


def _source_bytes(loc: storage.Location) -> int:
    total = 0
    for name, kind in storage.list_dir(loc.fs, storage.join(loc.path, VIDEOS_DIR)):
        if kind == "file":
            total += int(loc.fs.size(storage.join(loc.path, VIDEOS_DIR, name)))
    return total


# ------------------------------------------------------------------------------------------------ the one ingest
class VideoLayout:
    """The video layout as ``affect_core.data`` reads it (registered below): a whole corpus for ``read_source``, an
    ingest plan for ``affect_core.data.dataset.ingest``."""

    name = LAYOUT

    def read_corpus(self, root: str, *, storage_options: dict[str, Any] | None) -> VideoCorpus:
        return read_video_source(root, storage_options=storage_options)

    def plan(self, request: sv.SourceRequest, options: LayoutOptions) -> SourcePlan:
        return video_plan(request, options)


def video_plan(request: sv.SourceRequest, options: LayoutOptions) -> SourcePlan:
    """What ingest reads of a corpus in the video layout: its videos (each with its video and label files), their
    stamps, the reader that extracts them one at a time and the fitted transform, stored with the version.

    A video's stamp is its files' fingerprint, the ingest options, the settings and the fingerprint of every train
    video (the transform is fitted on those): a re-ingest that changes none of them reads no video. The transform is
    fitted when a video must be read (or a version lacks its transform file)."""
    if request.feature_set not in (None, FEATURE_SET):
        raise AffectError(f"feature set {request.feature_set!r}: the video layout has one feature set, {FEATURE_SET!r}")
    loc = request.location
    jobs = video_jobs(loc, request.storage_options)
    labels = label_files(loc, {j.video_id for j in jobs})  # before any video is decoded: bad names fail fast
    listed, _ = sv.list_files(loc)
    items = []
    for job in jobs:
        names = [f"{VIDEOS_DIR}/{job.url.rsplit('/', 1)[-1]}"]
        if job.video_id in labels:
            names.append(f"{LABELS_DIR}/{labels[job.video_id]}")
        files = {n: (int(listed[n].get("size") or 0), sv.file_stamp(listed[n])) for n in names if n in listed}
        items.append(sv.SourceVideoFiles(job.video_id, job.split, files))
    items.sort(key=lambda item: video_sort_key(item.split, item.video_id))
    config = options.config or VideoConfig()
    rate = grid_fps(jobs, request.fps, options.mapper or map)
    train = sorted((item.video_id, item.fingerprint) for item in items if item.split == "train")
    fitted_on = hashlib.sha256(json.dumps([config.to_dict(), train, rate]).encode()).hexdigest()[:16]
    stamps = {item.video_id: f"{request.stamp(item)}:{fitted_on}" for item in items}
    reader = VideoLayoutReader(request, jobs, labels, config, options, rate)
    return SourcePlan(
        items, stamps, reader, attachments=lambda content: {transform_file(content): reader.transform_bytes}
    )


class VideoLayoutReader:
    """Reads a video corpus for ingest (a :class:`~affect_core.data.dataset.VideoReader`): fits the transform at the
    first video to read, extracts the videos with the mapper, in order, and assembles each alone with its labels;
    the most recently read wait in a cache to be written, others are extracted again."""

    def __init__(
        self,
        request: sv.SourceRequest,
        jobs: list[VideoJob],
        labels: dict[str, str],
        config: VideoConfig,
        options: LayoutOptions,
        fps: float,
    ) -> None:
        self.request = request
        self.fps = fps
        self.jobs = {job.video_id: job for job in jobs}
        self.labels = labels
        self.config = config
        self.mapper: Mapper = options.mapper or map
        self.device = options.device
        self.progress = options.progress
        self.loc = request.location
        self.cache = VideoCache()
        self._hashes: dict[str, str] = {}
        self._transform: VideoTransform | None = None

    @property
    def transform(self) -> VideoTransform:
        if self._transform is None:
            self._transform = fit_video_transform(
                list(self.jobs.values()), self.config, mapper=self.mapper, device=self.device
            )
        return self._transform

    def transform_bytes(self) -> bytes:
        return self.transform.to_bytes()

    def read(self, items: list[sv.SourceVideoFiles]) -> Iterator[sv.VideoSummary]:
        from tqdm.auto import tqdm

        files = {item.video_id: item for item in items}
        extracted = extract_jobs([self.jobs[v] for v in files], self.transform, mapper=self.mapper, device=self.device)
        for job, features in tqdm(extracted, total=len(files), desc="videos", disable=not self.progress):
            read = self._video_read(job, features, files[job.video_id])
            summary = read.summary(video_hash(read.video))
            self._hashes[job.video_id] = summary.hash
            self.cache.keep(read.video)
            del read
            yield summary

    def load(self, item: sv.SourceVideoFiles) -> Video:
        held = self.cache.take(item.video_id)
        if held is not None:
            return held
        ((job, features),) = extract_jobs(
            [self.jobs[item.video_id]], self.transform, mapper=self.mapper, device=self.device
        )
        video = self._video_read(job, features, item).video
        return check_reread(video, self._hashes.get(item.video_id), self.request.where)

    def _video_read(self, job: VideoJob, features: VideoFeatures, item: sv.SourceVideoFiles) -> sv.VideoRead:
        """One video assembled alone: its features on the corpus's time grid, its labels placed on it by time."""
        video = SourceVideo(job.video_id, job.split)
        video.features[FEATURE_SET] = _feature_track(features, self.transform.feature_names, job.where, self.fps)
        if job.video_id in self.labels:
            track = _labels_by_time(read_label_file(self.loc, self.labels[job.video_id]), features.time_s)
            for column, dimension in enumerate(AFFECT_DIMENSIONS):
                video.labels[dimension] = (track, column)
        return one_video_read(video, item, self.loc.display(), LAYOUT)


def one_video_read(video: SourceVideo, files: sv.SourceVideoFiles, source: str, layout: str) -> sv.VideoRead:
    """One video assembled alone (its features on the corpus's time grid, its labels placed on it by time) as the
    streaming ingest reads it, with its source files' size and fingerprint."""
    corpus = assemble_corpus(SourceRead([video], [FEATURE_SET], labels_by_time=True), source=source, layout=layout)
    return sv.VideoRead(
        video=corpus.videos[0],
        feature_names=list(corpus.feature_names),
        feature_sets=json.loads(corpus.metadata["feature_sets"]),
        fps=float(corpus.fps),
        source_bytes=files.bytes,
        fingerprint=files.fingerprint,
    )


register(VideoLayout())
