"""A corpus in an input layout, one video at a time: what parallel ingest (``tuning.ingest``) hands to its workers.

:func:`list_source_videos` lists the source once (sizes and modification times or ETags, no file is read) and groups
its files by video: every file whose name stem is a video id under a per-video folder (``features*/``, ``labels/``,
``ratings_*/``, at any depth) belongs to that video; the partition table is validated once here. A video's
fingerprint hashes its files' paths, sizes and stamps (and its split), so an unchanged video is recognised without
reading it.

:func:`read_source_video` reads and validates one video with the layout readers of
:func:`affect_core.data.readers.read_source`, unchanged: it gives them a view holding only that video's files (an
in-memory copy) and a one-row partition, so a worker's memory is one video's, whatever the corpus. What must agree
across videos (feature names and sets, frame rate) is returned by each video and compared by
:func:`check_consistent`: the cross-video checks become an aggregate.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from affect_core import storage
from affect_core.data.readers import LAYOUTS, read_source, video_sort_key
from affect_core.data.records import Video
from affect_core.errors import AffectError

# Per-video folders: a file's name stem below one of these (at any depth) is the video's id.
_VIDEO_FOLDERS = ("features", "labels", "ratings", "feature_segments", "label_segments")
_PARTITION = ("partition.csv", "partition.parquet")


@dataclass
class SourceVideoFiles:
    """One video's files in a source: paths relative to the source root, with (size, stamp) of each."""

    video_id: str
    split: str
    files: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Hash of the split and every file's path, size and modification time or ETag."""
        digest = hashlib.sha256(json.dumps([self.split, sorted(self.files.items())]).encode())
        return "files:" + digest.hexdigest()[:32]

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self.files.values())


@dataclass
class VideoRead:
    """What a worker returns for one video: the video and what must agree across videos."""

    video: Video
    feature_names: list[str]
    feature_sets: list[dict[str, Any]]
    fps: float
    source_bytes: int
    fingerprint: str
    metadata: dict[str, str] = field(default_factory=dict)  # what the layout says of the corpus (pooled, ...)


def options_stamp(fingerprint: str, layout: str, feature_set: str | Sequence[str] | None, fps: float | None) -> str:
    """A video's source fingerprint combined with the ingest options that shape what is read from it (what a dataset
    records per video, and compares on the next ingest)."""
    chosen = feature_set if isinstance(feature_set, str) or feature_set is None else list(feature_set)
    options = json.dumps([layout, chosen, fps])
    return fingerprint + ":" + hashlib.sha256(options.encode()).hexdigest()[:12]


def source_stamps(
    root: str,
    layout: str,
    *,
    feature_set: str | Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    fps: float | None = None,
) -> dict[str, str] | None:
    """{video id: options stamp} of a source that can be listed per video, else None (a single-file layout, or a
    source the listing cannot make sense of: its reader then reports what is wrong)."""
    try:
        if not splittable(root, layout, storage_options):
            return None
        items = list_source_videos(root, layout, storage_options)
    except AffectError:
        return None
    return {item.video_id: options_stamp(item.fingerprint, layout, feature_set, fps) for item in items}


def _stamp(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def splittable(root: str, layout: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a source can be read video by video (a layout with a file per video; not features.parquet)."""
    loc = storage.resolve(root, storage_options)
    return layout in LAYOUTS and not (layout == "parquet" and loc.exists("features.parquet"))


def list_source_videos(root: str, layout: str, storage_options: dict[str, Any] | None = None) -> list[SourceVideoFiles]:
    """Every video of the source with its files (one recursive listing; no file is read but the partition table).
    Sorted by split and natural id. Raises AffectError for a layout that cannot be split per video."""
    loc = storage.resolve(root, storage_options)
    if not splittable(root, layout, storage_options):
        raise AffectError(f"{loc.display()}: layout {layout!r} here holds all videos in one file; read it whole")
    listing = loc.fs.find(loc.path, detail=True)
    files: dict[str, dict[str, Any]] = {}
    for path, info in listing.items():
        if info.get("type") == "directory":
            continue
        relative = posixpath.relpath(str(path), loc.path)
        if any(part.startswith((".", "_")) for part in relative.split("/")):
            continue
        files[relative] = info
    partition = _partition(loc, layout, files)
    videos: dict[str, SourceVideoFiles] = {}
    for relative, info in sorted(files.items()):
        parts = relative.split("/")
        if len(parts) < 2 or not parts[0].startswith(_VIDEO_FOLDERS):
            continue
        video_id = posixpath.splitext(parts[-1])[0]
        split = partition.get(video_id) if partition is not None else video_id.split("_", 1)[0]
        if split is None:
            split = ""  # not in the partition: the per-video reader names the problem
        entry = videos.setdefault(video_id, SourceVideoFiles(video_id, split))
        entry.files[relative] = (int(info.get("size") or 0), _stamp(info))
    if partition is not None:
        for video_id, split in partition.items():
            videos.setdefault(video_id, SourceVideoFiles(video_id, split))
    if not videos:
        raise AffectError(
            f"{loc.display()}: empty corpus: no videos found; expected feature files in the {layout} layout"
        )
    return sorted(videos.values(), key=lambda v: video_sort_key(v.split, v.video_id))


def _partition(loc: storage.Location, layout: str, files: dict[str, Any]) -> dict[str, str] | None:
    """video id -> split from the partition table, validated as the layout reader validates it (None for avec2016,
    whose file names carry the split)."""
    if layout == "avec2016":
        return None
    from affect_core.data.tracks import SourceFiles, read_partition

    if layout == "muse":
        from affect_core.data.layouts.muse import read_muse_partition

        return read_muse_partition(SourceFiles(loc))
    partition, _ = read_partition(SourceFiles(loc), "parquet" if layout == "parquet" else "csv")
    return partition


def read_source_video(
    root: str,
    layout: str,
    item: SourceVideoFiles,
    *,
    feature_set: str | Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    fps: float | None = None,
    min_face_confidence: float = 0.5,
) -> VideoRead:
    """Read and validate one video of a source (its files only). Errors name the source's files."""
    loc = storage.resolve(root, storage_options)
    view = f"memory://affect-ingest-{uuid.uuid4().hex}"
    memory = storage.resolve(view)
    try:
        for relative in item.files:
            data = storage.read_bytes(loc.fs, storage.join(loc.path, relative))
            memory.fs.pipe_file(storage.join(memory.path, relative), data)
        if layout == "muse":  # the MuSe metadata table, whose "devel" is the dev split
            partition = "devel" if item.split == "dev" else item.split
            memory.fs.pipe_file(
                storage.join(memory.path, "metadata", "partition.csv"),
                f"Id,Partition\n{item.video_id},{partition}\n".encode(),
            )
        elif layout != "avec2016":
            memory.fs.pipe_file(
                storage.join(memory.path, "partition.csv"), f"video_id,split\n{item.video_id},{item.split}\n".encode()
            )
            if layout == "parquet":
                _partition_parquet(memory, item)
        try:
            corpus = read_source(
                view, layout, feature_set=feature_set, fps=fps, min_face_confidence=min_face_confidence
            )
        except AffectError as exc:
            raise AffectError(str(exc).replace(memory.display(), loc.display())) from None
    finally:
        storage.remove_tree(memory.fs, memory.path)
    sets = json.loads(corpus.metadata.get("feature_sets", "[]"))
    return VideoRead(
        video=corpus.videos[0],
        feature_names=list(corpus.feature_names),
        feature_sets=sets,
        fps=float(corpus.fps),
        source_bytes=item.bytes,
        fingerprint=item.fingerprint,
        metadata={k: v for k, v in corpus.metadata.items() if k in ("pooled", "source_format")},
    )


def _partition_parquet(memory: storage.Location, item: SourceVideoFiles) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"video_id": [item.video_id], "split": [item.split]}), buffer)
    memory.fs.pipe_file(storage.join(memory.path, "partition.parquet"), buffer.getvalue())


@dataclass
class CorpusHeader:
    """What every video of a corpus shares: checked video by video as results arrive."""

    feature_names: list[str] | None = None
    feature_sets: list[dict[str, Any]] | None = None
    fps: float | None = None
    first: str = ""

    def check(
        self, video_id: str, feature_names: list[str], feature_sets: list[dict[str, Any]], fps: float, where: str
    ) -> None:
        """Refuse a video whose feature names or frame rate differ from the first video's."""
        if self.feature_names is None:
            self.feature_names, self.feature_sets, self.fps, self.first = feature_names, feature_sets, fps, video_id
            return
        if feature_names != self.feature_names:
            detail = f"feature dimension {len(feature_names)} differs from {len(self.feature_names)}"
            if len(feature_names) == len(self.feature_names):
                detail = "attributes differ"
            raise AffectError(
                f"{where}: video {video_id!r}: {detail} (video {self.first!r}); expected the same attributes in "
                "every video"
            )
        if abs(fps - float(self.fps or 0.0)) > 1e-6 * max(1.0, abs(fps)):
            raise AffectError(
                f"{where}: video {video_id!r} has a frame rate of {fps:g} fps, video {self.first!r} {self.fps:g}; "
                "expected one frame rate in a corpus"
            )


def check_consistent(reads: Sequence[VideoRead], where: str) -> CorpusHeader:
    """The shared header of ``reads``; AffectError naming the first video that disagrees."""
    header = CorpusHeader()
    for read in reads:
        header.check(read.video.video_id, read.feature_names, read.feature_sets, read.fps, where)
    return header
