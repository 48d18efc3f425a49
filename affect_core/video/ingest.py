"""`affect ingest ROOT DATASET --layout video`: the corpus read from its videos (:mod:`affect_core.video.layout`)
written as a dataset version, with the fitted video transform stored beside it (:mod:`affect_core.video.stored`)."""

from __future__ import annotations

import time
from typing import Any

from affect_core import storage
from affect_core.errors import AffectError, fail
from affect_core.video.config import VideoConfig
from affect_core.video.layout import FPS_TOLERANCE, LAYOUT, Mapper, read_video_source
from affect_core.video.stored import TRANSFORMS_DIR, save_dataset_transform
from affect_core.video.transform import FEATURE_SET


def ingest_videos(
    root: str,
    dataset_url: str,
    *,
    layout: str = LAYOUT,
    feature_set: str | None = None,
    fps: float | None = None,
    storage_options: dict[str, Any] | None = None,
    source_storage_options: dict[str, Any] | None = None,
    config: VideoConfig | None = None,
    mapper: Mapper = map,
    device: str | None = None,
    progress: bool = True,
) -> Any:
    """``affect ingest ROOT DATASET --layout video``: read ROOT, write the dataset version and store the fitted video
    transform beside it. Returns the dataset store's IngestResult. Nothing is written on bad input. The transform is
    stored right after the version is published (the store checks the destination first); should that fail, the error
    says so and a re-run stores it. ``layout``, ``feature_set`` and ``fps`` are those of the dataset store's ingest:
    the layout must be "video", the feature set (if given) ``lgbptop``, a given fps the videos'."""
    from affect_core.data.dataset import IngestResult, content_hash, write_dataset

    if layout != LAYOUT:
        raise AffectError(f"layout {layout!r}: ingest_videos reads the {LAYOUT} layout only")
    if feature_set not in (None, FEATURE_SET):
        raise AffectError(f"feature set {feature_set!r}: the video layout has one feature set, {FEATURE_SET!r}")
    started = time.perf_counter()
    corpus = read_video_source(
        root,
        storage_options=source_storage_options if source_storage_options is not None else storage_options,
        config=config,
        mapper=mapper,
        device=device,
        progress=progress,
    )
    if fps is not None and abs(fps / corpus.fps - 1.0) > FPS_TOLERANCE:
        raise fail(corpus.source, f"fps={fps:g} contradicts the videos' {corpus.fps:g} fps; leave fps out for videos")
    chash = content_hash(corpus)
    loc = storage.resolve(dataset_url, storage_options)
    folder = storage.join(loc.path, TRANSFORMS_DIR)
    existed = storage.exists(loc.fs, folder)
    # The dataset store checks the destination and publishes the version; the transform follows at once. Should
    # storing it fail, the error says so and a re-run stores it (the version is unchanged then).
    version, chash, unchanged = write_dataset(
        corpus, dataset_url, storage_options=storage_options, layout=LAYOUT, source=root, progress=progress
    )
    try:
        if corpus.video_transform is not None:
            save_dataset_transform(corpus.video_transform, dataset_url, chash, storage_options)
    except BaseException as exc:
        if not existed:
            storage.remove_tree(loc.fs, folder)
        if storage.is_store_error(exc):
            raise fail(
                loc.display(TRANSFORMS_DIR),
                f"storing the video transform of version {version} failed ({type(exc).__name__}); run the ingest again",
            ) from None
        raise
    seconds = time.perf_counter() - started
    source_bytes = int(corpus.metadata.get("source_bytes", "0"))
    return IngestResult(
        dataset_url=storage.redact(dataset_url),
        version=version,
        content_hash=chash,
        unchanged=unchanged,
        rows=int(sum(v.num_frames for v in corpus.videos)),
        videos=len(corpus.videos),
        seconds=seconds,
        source_bytes=source_bytes,
    )
