"""A corpus in an input layout, one video at a time: what ingest reads (in this process or in Ray tasks), and the
stamps that let a re-ingest skip what it has seen.

:func:`list_source_videos` lists the source once (sizes and modification times or ETags, no file is read) and groups its
files by video: every file whose name stem is a video id under a per-video folder (``features*/``, ``labels/``,
``ratings_*/``, at any depth) and whose suffix the layout reads belongs to that video; the partition table is
validated once here. A video's fingerprint hashes its files' paths, sizes and stamps (and its split), so an unchanged
video is recognised without reading it; :meth:`SourceRequest.stamp` adds the ingest options that shape what is read.

:meth:`SourceRequest.read` (:func:`read_source_video`) reads and validates one video with the layout readers of
:func:`affect_core.data.readers.read_source`, unchanged: it gives them a view holding only that video's files (an
in-memory copy), the source's folders (so that what a reader says of the corpus's folders, e.g. which it skipped, is
said alike) and a one-row partition, so a reader's memory is one video's, whatever the corpus. What must agree across
videos (feature names and sets, frame rate) is returned by each video and compared by :class:`CorpusHeader`: the
cross-video checks become an aggregate.

The stamp cache (:func:`read_stamp_cache`, :func:`write_stamp_cache`): ``_affect_stamps/stamps.parquet`` beside a
dataset's table (Delta Lake's vacuum leaves paths starting with ``_`` alone) holds (video id, stamp, content hash) of
videos whose files were touched but whose content was verified unchanged, so that the next ingest need not read them
again although no new version (which would record the new stamps) was written. It is only a cache: an entry counts
while its hash is the version's hash of that video, and a missing or unreadable cache costs re-reading."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from affect_core import storage
from affect_core.data.readers import LAYOUT_READERS, ReadOptions, read_source, video_sort_key
from affect_core.data.records import Video
from affect_core.errors import AffectError

# Per-video folders: a file's name stem below one of these (at any depth) is the video's id.
_VIDEO_FOLDERS = ("features", "labels", "ratings", "feature_segments", "label_segments")
# What each layout reads in those folders (its readers pass over other files, so the listing does too; a layout not
# named here: every file).
_VIDEO_SUFFIXES = {
    "avec2016": (".arff", ".csv"),
    "csv": (".csv",),
    "parquet": (".parquet",),
    "openface": (".csv", ".txt"),
    "muse": (".csv",),
}
STAMP_CACHE = "_affect_stamps/stamps.parquet"
STAMP_CACHE_SCHEMA = pa.schema([("video_id", pa.string()), ("stamp", pa.string()), ("hash", pa.string())])


@dataclass
class SourceVideoFiles:
    """One video's files in a source: paths relative to the source root, with (size, stamp) of each; ``folders``: the
    source's folders (relative paths), shared by every video of a listing."""

    video_id: str
    split: str
    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    folders: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        """Hash of the split and every file's path, size and modification time or ETag."""
        digest = hashlib.sha256(json.dumps([self.split, sorted(self.files.items())]).encode())
        return "files:" + digest.hexdigest()[:32]

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self.files.values())


@dataclass
class VideoSummary:
    """What ingest keeps of one video it read (small, whatever the video's size): its content hash and frames, and
    what must agree across videos (feature names and sets, fps) or describes the corpus (source metadata, rater
    tracks, the reader's notes)."""

    video_id: str
    split: str
    hash: str
    frames: int
    feature_names: list[str]
    feature_sets: list[dict[str, Any]]
    fps: float
    source_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)
    ratings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class VideoRead:
    """One video read from a source, and what must agree across videos."""

    video: Video
    feature_names: list[str]
    feature_sets: list[dict[str, Any]]
    fps: float
    source_bytes: int  # bytes of the source's files read for this video
    fingerprint: str
    metadata: dict[str, str] = field(default_factory=dict)  # what the layout says of the corpus (pooled, ...)
    notes: list[str] = field(default_factory=list)  # what the layout reader skipped

    def summary(self, content_hash: str) -> VideoSummary:
        """The summary of this read, given the video's content hash
        (:func:`affect_core.data.dataset.video_hash`)."""
        return VideoSummary(
            video_id=self.video.video_id,
            split=self.video.split,
            hash=content_hash,
            frames=self.video.num_frames,
            feature_names=self.feature_names,
            feature_sets=self.feature_sets,
            fps=self.fps,
            source_bytes=self.source_bytes,
            metadata=self.metadata,
            ratings=sorted(self.video.ratings or {}),
            notes=self.notes,
        )


@dataclass(frozen=True)
class SourceRequest:
    """What an ingest reads (a source in a layout) and the options that shape what it reads; what a Ray task is
    handed with each video."""

    root: str
    layout: str
    feature_set: str | Sequence[str] | None = None
    storage_options: dict[str, Any] | None = None
    fps: float | None = None
    min_face_confidence: float = ReadOptions.min_face_confidence

    @property
    def location(self) -> storage.Location:
        """The source, resolved once in each process that holds this request. A request pickled for a Ray task
        leaves its Location behind (:meth:`__getstate__`): the filesystem could carry credentials; the task resolves
        ``root`` with the request's (shareable) options on its side, once."""
        location = self.__dict__.get("_location")
        if location is None:
            location = storage.resolve(self.root, self.storage_options)
            object.__setattr__(self, "_location", location)  # a cache beside the frozen fields, not a field
        return location

    def __getstate__(self) -> dict[str, Any]:
        return {name: value for name, value in self.__dict__.items() if name != "_location"}

    @property
    def where(self) -> str:
        """The source's URL for messages (redacted)."""
        return self.location.display()

    def stamp(self, item: SourceVideoFiles) -> str:
        """The stamp a dataset records for a video read by this request (:func:`options_stamp`)."""
        return options_stamp(item.fingerprint, self.layout, self.feature_set, self.fps, self.min_face_confidence)

    def read(self, item: SourceVideoFiles) -> VideoRead:
        """Read and validate one video (:func:`read_source_video`)."""
        return read_source_video(
            self.location,
            self.layout,
            item,
            feature_set=self.feature_set,
            storage_options=self.storage_options,
            fps=self.fps,
            min_face_confidence=self.min_face_confidence,
        )


def options_stamp(
    fingerprint: str,
    layout: str,
    feature_set: str | Sequence[str] | None,
    fps: float | None,
    min_face_confidence: float = ReadOptions.min_face_confidence,
) -> str:
    """A video's source fingerprint combined with the ingest options that shape what is read from it (what a dataset
    records per video, and compares on the next ingest). The face threshold counts where it is not the default (so
    that stamps recorded before it counted still match)."""
    chosen = feature_set if isinstance(feature_set, str) or feature_set is None else list(feature_set)
    options: list[Any] = [layout, chosen, fps]
    if min_face_confidence != ReadOptions.min_face_confidence:
        options.append(min_face_confidence)
    return fingerprint + ":" + hashlib.sha256(json.dumps(options).encode()).hexdigest()[:12]


def file_stamp(info: dict[str, Any]) -> str:
    """A file's modification time or ETag from its listing (what tells a changed file without reading it)."""
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def splittable(root: storage.Where, layout: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a source can be read video by video: a layout with a file per video (not features.parquet; not the
    video layout, whose feature transform is fitted on the whole corpus; not a URL that cannot be resolved)."""
    if layout not in LAYOUT_READERS:
        return False
    try:
        return not (layout == "parquet" and storage.resolve(root, storage_options).exists("features.parquet"))
    except AffectError:
        return False


def list_source_videos(
    root: storage.Where, layout: str, storage_options: dict[str, Any] | None = None
) -> list[SourceVideoFiles]:
    """Every video of the source with its files (one recursive listing; no file is read but the partition table),
    sorted by split and natural id. Raises AffectError for a layout that cannot be split per video. ``root`` is
    resolved here unless it is a Location already."""
    loc = storage.resolve(root, storage_options)
    if not splittable(loc, layout):
        raise AffectError(f"{loc.display()}: layout {layout!r} here holds all videos in one file; read it whole")
    files, folders = list_files(loc)
    partition = _partition(loc, layout)
    suffixes = _VIDEO_SUFFIXES.get(layout, ("",))
    videos: dict[str, SourceVideoFiles] = {}
    for relative, info in sorted(files.items()):
        parts = relative.split("/")
        if len(parts) < 2 or not parts[0].startswith(_VIDEO_FOLDERS) or not parts[-1].endswith(suffixes):
            continue
        video_id = posixpath.splitext(parts[-1])[0]
        split = partition.get(video_id) if partition is not None else video_id.split("_", 1)[0]
        if split is None:
            split = ""  # not in the partition: the per-video reader names the problem
        entry = videos.setdefault(video_id, SourceVideoFiles(video_id, split, folders=folders))
        entry.files[relative] = (int(info.get("size") or 0), file_stamp(info))
    if partition is not None:
        for video_id, split in partition.items():
            videos.setdefault(video_id, SourceVideoFiles(video_id, split, folders=folders))
    if not videos:
        raise AffectError(
            f"{loc.display()}: empty corpus: no videos found; expected feature files in the {layout} layout"
        )
    return sorted(videos.values(), key=lambda v: video_sort_key(v.split, v.video_id))


def list_files(loc: storage.Location) -> tuple[dict[str, dict[str, Any]], tuple[str, ...]]:
    """(relative path -> info of every file, every folder), hidden ones (a part starting with '.' or '_') left out."""
    files: dict[str, dict[str, Any]] = {}
    folders: list[str] = []
    for path, info in loc.fs.find(loc.path, withdirs=True, detail=True).items():
        relative = posixpath.relpath(str(path), loc.path)
        if relative == "." or any(part.startswith((".", "_")) for part in relative.split("/")):
            continue
        if info.get("type") == "directory":
            folders.append(relative)
        else:
            files[relative] = info
    return files, tuple(sorted(folders))


def _partition(loc: storage.Location, layout: str) -> dict[str, str] | None:
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
    root: storage.Where,
    layout: str,
    item: SourceVideoFiles,
    *,
    feature_set: str | Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    fps: float | None = None,
    min_face_confidence: float = ReadOptions.min_face_confidence,
) -> VideoRead:
    """Read and validate one video of a source (its files only; ``root`` resolved here unless it is a Location
    already). Errors name the source's files."""
    loc = storage.resolve(root, storage_options)
    view = f"memory://affect-ingest-{uuid.uuid4().hex}"
    memory = storage.resolve(view)
    try:
        for folder in item.folders:
            memory.fs.makedirs(storage.join(memory.path, folder), exist_ok=True)
        for relative in item.files:
            data = storage.read_bytes(loc.fs, storage.join(loc.path, relative))
            memory.fs.pipe_file(storage.join(memory.path, relative), data)
        partition = _view_partition(layout, item)
        if partition is not None:
            memory.fs.pipe_file(storage.join(memory.path, partition[0]), partition[1])
        try:
            corpus = read_source(
                memory, layout, feature_set=feature_set, fps=fps, min_face_confidence=min_face_confidence
            )
        except AffectError as exc:
            raise AffectError(str(exc).replace(memory.display(), loc.display())) from None
    finally:
        storage.remove_tree(memory.fs, memory.path)
    sets = json.loads(corpus.metadata.get("feature_sets", "[]"))
    view_bytes = len(partition[1]) if partition is not None else 0
    return VideoRead(
        video=corpus.videos[0],
        feature_names=list(corpus.feature_names),
        feature_sets=sets,
        fps=float(corpus.fps),
        source_bytes=int(corpus.metadata.get("source_bytes", "0")) - view_bytes,
        fingerprint=item.fingerprint,
        metadata={k: v for k, v in corpus.metadata.items() if k in ("pooled", "source_format")},
        notes=json.loads(corpus.metadata.get("notes", "[]")),
    )


def _view_partition(layout: str, item: SourceVideoFiles) -> tuple[str, bytes] | None:
    """(relative path, content) of the one-row partition table the layout reader reads in a video's view (None for
    avec2016, whose file names carry the split)."""
    if layout == "avec2016":
        return None
    if layout == "muse":  # the MuSe metadata table, whose "devel" is the dev split
        split = "devel" if item.split == "dev" else item.split
        return "metadata/partition.csv", f"Id,Partition\n{item.video_id},{split}\n".encode()
    if layout == "parquet":
        buffer = io.BytesIO()
        pq.write_table(pa.table({"video_id": [item.video_id], "split": [item.split]}), buffer)
        return "partition.parquet", buffer.getvalue()
    return "partition.csv", f"video_id,split\n{item.video_id},{item.split}\n".encode()


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


# ----------------------------------------------------------------------------------------------------- stamp cache
def read_stamp_cache(dataset: storage.Location) -> dict[str, tuple[str, str]]:
    """{video id: (stamp, content hash)} of the dataset's stamp cache; empty when it is missing or unreadable (it is
    only a cache: the videos are then read and hashed)."""
    path = storage.join(dataset.path, STAMP_CACHE)
    try:
        with dataset.fs.open(path, "rb") as handle:
            table = pq.read_table(handle, schema=STAMP_CACHE_SCHEMA)
    except (OSError, pa.ArrowException, ValueError):
        return {}
    columns = [table.column(name).to_pylist() for name in STAMP_CACHE_SCHEMA.names]
    return {video_id: (stamp, value) for video_id, stamp, value in zip(*columns, strict=True)}


def write_stamp_cache(dataset: storage.Location, entries: dict[str, tuple[str, str]]) -> None:
    """Replace the dataset's stamp cache with ``entries`` in one atomic write (removed when empty). A store that
    fails the write leaves the cache as it was, which only costs re-reading."""
    path = storage.join(dataset.path, STAMP_CACHE)
    try:
        if not entries:
            if storage.exists(dataset.fs, path):
                dataset.fs.rm(path)
            return
        ids = sorted(entries)
        table = pa.table([ids, [entries[v][0] for v in ids], [entries[v][1] for v in ids]], schema=STAMP_CACHE_SCHEMA)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        storage.write_bytes_atomic(dataset.fs, path, buffer.getvalue())
    except Exception as exc:  # noqa: BLE001 - a cache that cannot be written is a cache missed, not a failed ingest
        if not storage.is_store_error(exc):
            raise


def recorded_stamps(
    sources: dict[str, str], hashes: dict[str, str], cache: dict[str, tuple[str, str]]
) -> dict[str, str]:
    """{video id: the stamp a version vouches for}: its recorded source stamp (``sources``), or the stamp cache's
    where the cache's content hash is the version's hash of that video (``hashes``)."""
    out = dict(sources)
    for video_id, (stamp, value) in cache.items():
        if video_id in hashes and hashes[video_id] == value:
            out[video_id] = stamp
    return out
