"""The ``affwild2`` input layout: Aff-Wild2 as it is released, its videos and its valence/arousal annotation files.

    ROOT/videos/[<batch>/]<name>.<mp4|avi|...>                      the videos, perhaps in batch subfolders
    ROOT/annotations/VA_Estimation_Challenge/Train_Set/<name>.txt      split train
    ROOT/annotations/VA_Estimation_Challenge/Validation_Set/<name>.txt split dev

An annotation file's first line is the header ``valence,arousal``, then one ``v,a`` line per decoded frame of the
video (line i: frame i), each value in [-1, 1], or -5 where the frame is not annotated (NaN here). ``<name>_left.txt``
and ``<name>_right.txt`` annotate the two people of video ``<name>``: each is a dataset video of its own
(``<name>_left``, ``<name>_right``) whose features are those of one face track (:mod:`affect_core.video.tracks`): of
the video's two longest tracks, the one whose box centre lies further left is the left person. Every other annotation
file describes the video's principal face, as the video layout does. A video no annotation file names is ingested as
split ``test``, unlabelled. The labels are placed on the corpus's time grid by the timestamps of the frames they number,
as the video layout's are (:func:`affect_core.video.layout._labels_by_time`).

Any bad input is refused with one line naming the file (module tests: tests/test_affwild2.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from affect_core import storage
from affect_core.data import source_videos as sv
from affect_core.data.assemble import assemble_corpus
from affect_core.data.dataset.by_video import SourcePlan, check_reread
from affect_core.data.dataset.hashing import video_hash
from affect_core.data.layouts.provided import LayoutOptions, register
from affect_core.data.records import AFFECT_DIMENSIONS, Video
from affect_core.data.tracks import SourceRead, SourceVideo, Track, check_video_id, video_sort_key
from affect_core.errors import AffectError, fail
from affect_core.video.config import VideoConfig
from affect_core.video.decode import VIDEO_SUFFIXES
from affect_core.video.extract import VideoFeatures, extract_track, find_tracks
from affect_core.video.layout import (
    VideoCorpus,
    VideoJob,
    VideoLayoutReader,
    _checked_source,
    _feature_track,
    _labels_by_time,
    extract_job,
    fit_video_transform,
    grid_fps,
    one_video_read,
)
from affect_core.video.stored import transform_file
from affect_core.video.transform import FEATURE_SET, VideoTransform

LAYOUT = "affwild2"
VIDEOS_DIR = "videos"
VA_DIR = "annotations/VA_Estimation_Challenge"
SETS = {"Train_Set": "train", "Validation_Set": "dev"}
HEADER = "valence,arousal"
UNANNOTATED = -5.0
SIDES = ("left", "right")


@dataclass(frozen=True)
class Annotated:
    """One dataset video: its job (the video file; ``video_id`` the annotation's name), the annotation file (relative
    to ROOT; "" when none) and the person it follows ("": the principal face, else "left" / "right")."""

    job: VideoJob
    annotation: str
    side: str


def _video_files(loc: storage.Location, listed: dict[str, Any]) -> dict[str, str]:
    """video name -> path relative to ROOT of every video under ROOT/videos/ (batch subfolders included)."""
    files: dict[str, str] = {}
    for relative in sorted(listed):
        if not relative.startswith(VIDEOS_DIR + "/"):
            continue
        stem, dot, suffix = posixpath.basename(relative).rpartition(".")
        if not dot or "." + suffix.lower() not in VIDEO_SUFFIXES:
            raise fail(
                loc.display(relative), f"unexpected file; expected videos named <name>{'|'.join(VIDEO_SUFFIXES)}"
            )
        check_video_id(stem, loc.display(relative))
        if stem in files:
            raise fail(loc.display(relative), f"video {stem!r} also in {files[stem]}; expected one file per video name")
        files[stem] = relative
    if not files:
        raise fail(loc.display(VIDEOS_DIR), "no video files; expected ROOT/videos/[<batch>/]<name>.mp4 (Aff-Wild2)")
    return files


def _annotation_files(loc: storage.Location, listed: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """annotation name -> (split, path relative to ROOT) of every VA annotation file."""
    out: dict[str, tuple[str, str]] = {}
    for relative in sorted(listed):
        if not relative.startswith(VA_DIR + "/"):
            continue
        parts = relative[len(VA_DIR) + 1 :].split("/")
        where = loc.display(relative)
        if len(parts) != 2 or parts[0] not in SETS:
            raise fail(where, f"unexpected file; expected {VA_DIR}/{'|'.join(SETS)}/<name>.txt")
        if not parts[1].endswith(".txt"):
            raise fail(where, "unexpected file; expected annotation files named <name>.txt")
        name = check_video_id(parts[1][: -len(".txt")], where)
        if name in out:
            raise fail(where, f"{name!r} is annotated in {out[name][1]} too; expected each name in one set only")
        out[name] = (SETS[parts[0]], relative)
    return out


def list_annotated(loc: storage.Location, storage_options: dict[str, Any] | None) -> list[Annotated]:
    """Every dataset video of an Aff-Wild2 root, in split and natural id order; refuses a bad layout (no file is
    decoded)."""
    if not storage.is_dir(loc.fs, loc.path):
        problem = "is a file" if storage.exists(loc.fs, loc.path) else "does not exist"
        raise fail(loc.display(), f"source {problem}; expected a directory in the Aff-Wild2 layout")
    listed, _ = sv.list_files(loc)
    videos = _video_files(loc, listed)
    annotations = _annotation_files(loc, listed)
    out: list[Annotated] = []
    named: set[str] = set()
    for name, (split, relative) in annotations.items():
        video, side = name, ""
        for candidate in SIDES:
            if name.endswith("_" + candidate) and name not in videos:
                video, side = name[: -len(candidate) - 1], candidate
        if video not in videos:
            raise fail(loc.display(relative), f"annotation of video {video!r}, which is not under {VIDEOS_DIR}/")
        if side:
            other = f"{video}_{SIDES[1 - SIDES.index(side)]}"
            if other in annotations and annotations[other][0] != split:
                raise fail(loc.display(relative), f"{other} is in another set; expected both people in one set")
        named.add(video)
        job = VideoJob(name, split, storage.join(loc.url, videos[video]), loc.display(videos[video]), storage_options)
        out.append(Annotated(job, relative, side))
    for video, relative in videos.items():
        if video not in named:
            job = VideoJob(video, "test", storage.join(loc.url, relative), loc.display(relative), storage_options)
            out.append(Annotated(job, "", ""))
    out.sort(key=lambda a: video_sort_key(a.job.split, a.job.video_id))
    return out


def read_annotation(loc: storage.Location, relative: str) -> Track:
    """The label track of one VA annotation file: columns AFFECT_DIMENSIONS, one row per decoded frame (``frame``
    0..n-1), NaN where not annotated."""
    where = loc.display(relative)
    data = storage.read_bytes(loc.fs, storage.join(loc.path, relative))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise fail(
            where, "not UTF-8 text; expected a header line 'valence,arousal' then one 'v,a' line per frame"
        ) from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise fail(where, "empty file; expected a header line 'valence,arousal' then one 'v,a' line per frame")
    if lines[0].strip().replace(" ", "").lower() != HEADER:
        raise fail(where, f"header {lines[0].strip()[:60]!r}; expected {HEADER!r}")
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    if len(lines) == 1:
        raise fail(where, "no annotation lines; expected one 'v,a' line per frame after the header")
    values = np.empty((len(lines) - 1, 2), np.float64)
    for row, line in enumerate(lines[1:]):
        parts = line.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            pair = [float(p) for p in parts]
        except ValueError:
            raise fail(
                where, f"line {row + 2}: {line.strip()[:60]!r}; expected two numbers 'valence,arousal'"
            ) from None
        for value in pair:
            if not (value == UNANNOTATED or -1.0 <= value <= 1.0):
                raise fail(
                    where,
                    f"line {row + 2}: {value:g} out of range; expected values in [-1, 1], or -5 where not annotated",
                )
        values[row] = pair
    values[values == UNANNOTATED] = np.nan
    valence, arousal = values[:, 0], values[:, 1]
    columns = {"valence": valence, "arousal": arousal}
    ordered = np.stack([columns[d] for d in AFFECT_DIMENSIONS], axis=1)
    frames = np.arange(len(ordered), dtype=np.float64)
    return Track(where, list(AFFECT_DIMENSIONS), ordered, None, frames, lambda row: f"line {row + 2}")


def extract_annotated(item: Annotated, transform: VideoTransform, device: str | None = None) -> VideoFeatures:
    """The features of one dataset video (a picklable unit of work for a mapper): the principal face's, or for a
    ``_left`` / ``_right`` annotation the features of that person's track."""
    if not item.side:
        return extract_job(item.job, transform, device)
    source = _checked_source(item.job)
    try:
        tracks = find_tracks(source, item.job.where, transform.config)
        seen = np.isfinite(tracks.boxes[:, :, 0]).sum(axis=1)
        if tracks.count < 2:
            raise fail(
                item.job.where,
                f"annotated as two people ({item.annotation}) but {tracks.count} face found; expected the left and "
                "the right person's faces",
            )
        longest = np.argsort(-seen, kind="stable")[:2]
        left_to_right = longest[np.argsort(tracks.centre_x()[longest], kind="stable")]
        boxes_of = tracks.boxes[left_to_right[SIDES.index(item.side)]]
        return extract_track(source, item.job.where, transform, boxes_of, device=device)
    finally:
        if hasattr(source, "close"):
            source.close()


def _source_video(
    item: Annotated, features: VideoFeatures, transform: VideoTransform, fps: float, loc: Any
) -> SourceVideo:
    video = SourceVideo(item.job.video_id, item.job.split)
    video.features[FEATURE_SET] = _feature_track(features, transform.feature_names, item.job.where, fps)
    if item.annotation:
        track = read_annotation(loc, item.annotation)
        if track.num_rows > len(features.time_s):
            raise fail(
                track.where,
                f"{track.num_rows} annotation lines but the video has {len(features.time_s)} decoded frames; "
                "expected at most one line per frame",
            )
        track = _labels_by_time(track, features.time_s)
        for column, dimension in enumerate(AFFECT_DIMENSIONS):
            video.labels[dimension] = (track, column)
    return video


def read_affwild2_source(
    root: storage.Where,
    *,
    storage_options: dict[str, Any] | None = None,
    config: VideoConfig | None = None,
    mapper: Any = map,
    device: str | None = None,
    fps: float | None = None,
) -> VideoCorpus:
    """Read and validate a whole Aff-Wild2 root (module docstring); raises AffectError on any bad input."""
    loc = storage.resolve(root, storage_options)
    items = list_annotated(loc, storage_options)
    for item in items:
        if item.annotation:
            read_annotation(loc, item.annotation)  # bad labels fail before any video is decoded
    jobs = [item.job for item in items]
    transform = fit_video_transform(jobs, config or VideoConfig(), mapper=mapper, device=device)
    rate = grid_fps(jobs, fps, mapper)
    extract = functools.partial(extract_annotated, transform=transform, device=device)
    videos = [_source_video(i, f, transform, rate, loc) for i, f in zip(items, mapper(extract, items), strict=True)]
    corpus = assemble_corpus(
        SourceRead(videos, [FEATURE_SET], labels_by_time=True), source=loc.display(), layout=LAYOUT
    )
    corpus.metadata["video_config"] = json.dumps(transform.config.to_dict())
    return VideoCorpus(**vars(corpus), video_transform=transform)


class AffWild2Layout:
    """The Aff-Wild2 layout as ``affect_core.data`` reads it (registered below)."""

    name = LAYOUT

    def read_corpus(self, root: str, *, storage_options: dict[str, Any] | None) -> VideoCorpus:
        return read_affwild2_source(root, storage_options=storage_options)

    def plan(self, request: sv.SourceRequest, options: LayoutOptions) -> SourcePlan:
        return affwild2_plan(request, options)


def affwild2_plan(request: sv.SourceRequest, options: LayoutOptions) -> SourcePlan:
    """What ingest reads of an Aff-Wild2 root: one dataset video per annotation file (and per unannotated video),
    stamped by its video and annotation files, the settings and the train videos the transform is fitted on."""
    if request.feature_set not in (None, FEATURE_SET):
        raise AffectError(
            f"feature set {request.feature_set!r}: the affwild2 layout has one feature set, {FEATURE_SET!r}"
        )
    loc = request.location
    annotated = list_annotated(loc, request.storage_options)
    listed, _ = sv.list_files(loc)
    items = []
    for a in annotated:
        names = [a.job.url[len(loc.url) :].lstrip("/"), *([a.annotation] if a.annotation else [])]
        files = {n: (int(listed[n].get("size") or 0), sv.file_stamp(listed[n])) for n in names if n in listed}
        items.append(sv.SourceVideoFiles(a.job.video_id, a.job.split, files))
    config = options.config or VideoConfig()
    jobs = [a.job for a in annotated]
    rate = grid_fps(jobs, request.fps, options.mapper or map)
    train = sorted((item.video_id, item.fingerprint) for item in items if item.split == "train")
    fitted_on = hashlib.sha256(json.dumps([LAYOUT, config.to_dict(), train, rate]).encode()).hexdigest()[:16]
    stamps = {item.video_id: f"{request.stamp(item)}:{fitted_on}" for item in items}
    reader = AffWild2Reader(request, annotated, config, options, rate)
    return SourcePlan(
        items, stamps, reader, attachments=lambda content: {transform_file(content): reader.transform_bytes}
    )


class AffWild2Reader(VideoLayoutReader):
    """Reads an Aff-Wild2 root for ingest, one dataset video at a time (as the video layout's reader does)."""

    def __init__(
        self,
        request: sv.SourceRequest,
        annotated: list[Annotated],
        config: VideoConfig,
        options: LayoutOptions,
        fps: float,
    ) -> None:
        super().__init__(request, [a.job for a in annotated], {}, config, options, fps)
        self.annotated = {a.job.video_id: a for a in annotated}
        for a in annotated:
            if a.annotation:
                read_annotation(self.loc, a.annotation)  # bad labels fail before any video is decoded

    def _extracted(self, ids: list[str]) -> Iterator[tuple[Annotated, VideoFeatures]]:
        extract = functools.partial(extract_annotated, transform=self.transform, device=self.device)
        items = [self.annotated[v] for v in ids]
        return zip(items, self.mapper(extract, items), strict=True)

    def read(self, items: list[sv.SourceVideoFiles]) -> Iterator[sv.VideoSummary]:
        from tqdm.auto import tqdm

        files = {item.video_id: item for item in items}
        extracted = self._extracted(list(files))
        for item, features in tqdm(extracted, total=len(files), desc="videos", disable=not self.progress):
            read = self._annotated_read(item, features, files[item.job.video_id])
            summary = read.summary(video_hash(read.video))
            self._hashes[item.job.video_id] = summary.hash
            self.cache.keep(read.video)
            del read
            yield summary

    def load(self, item: sv.SourceVideoFiles) -> Video:
        held = self.cache.take(item.video_id)
        if held is not None:
            return held
        ((annotated, features),) = list(self._extracted([item.video_id]))
        video = self._annotated_read(annotated, features, item).video
        return check_reread(video, self._hashes.get(item.video_id), self.request.where)

    def _annotated_read(self, item: Annotated, features: VideoFeatures, files: sv.SourceVideoFiles) -> sv.VideoRead:
        source = _source_video(item, features, self.transform, self.fps, self.loc)
        return one_video_read(source, files, self.loc.display(), LAYOUT)


register(AffWild2Layout())
