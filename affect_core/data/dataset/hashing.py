"""Content hashes: of one video, of what every video of a dataset shares (the header), and of a whole dataset. A
re-ingest compares them to write only what changed; ``affect info`` prints the dataset's."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from affect_core.data.dataset.format import FORMAT, rating_names
from affect_core.data.readers import TIME_DECIMALS, set_ranges, video_sort_key
from affect_core.data.records import AFFECT_DIMENSIONS, Corpus, Video


def header_hash(
    feature_names: Sequence[str], sets: Sequence[dict[str, Any]], fps: float, ratings: Sequence[str] = ()
) -> str:
    """SHA-256 over what every video of a dataset shares: feature names and sets, fps, the per-rater tracks."""
    header = {
        "format": FORMAT,
        "feature_names": list(feature_names),
        "feature_sets": [{k: v for k, v in s.items() if k != "names"} for s in sets],
        "fps": float(fps),
    }
    if ratings:
        header["ratings"] = list(ratings)
    return "sha256:" + hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def corpus_header_hash(corpus: Corpus) -> str:
    """The header hash of a corpus (its videos may be absent: a header read video by video)."""
    return header_hash(corpus.feature_names, set_ranges(corpus), corpus.fps, rating_names(corpus))


def video_hash(video: Video) -> str:
    """SHA-256 over one video: id, split, times, features, labels and per-rater ratings (NaN canonicalised)."""
    digest = hashlib.sha256()
    features = np.ascontiguousarray(video.features, dtype=np.float32)
    features = np.where(np.isnan(features), np.float32(np.nan), features)
    digest.update(json.dumps([video.video_id, video.split, list(features.shape)]).encode())
    digest.update(np.ascontiguousarray(np.round(video.time_s, TIME_DECIMALS), dtype=np.float64).tobytes())
    digest.update(features.tobytes())
    for dimension in AFFECT_DIMENSIONS:
        labels = video.labels(dimension)
        digest.update(b"none" if labels is None else np.ascontiguousarray(labels, dtype=np.float32).tobytes())
    for name in sorted(video.ratings or {}):
        digest.update(name.encode() + np.ascontiguousarray(video.ratings[name], dtype=np.float32).tobytes())
    return "sha256:" + digest.hexdigest()


def combined_hash(header: str, video_hashes: Iterable[tuple[str, str, str]], *, ordered: bool = False) -> str:
    """The dataset's content hash from its header hash and (split, video id, video hash) of every video; ``ordered``:
    they come in split and natural id order already (streamed, not sorted here)."""
    digest = hashlib.sha256(header.encode())
    items = video_hashes if ordered else sorted(video_hashes, key=lambda t: video_sort_key(t[0], t[1]))
    for split, video_id, value in items:
        digest.update(f"{split}/{video_id}={value};".encode())
    return "sha256:" + digest.hexdigest()


def content_hash(corpus: Corpus) -> str:
    """SHA-256 over what a dataset holds: feature names and sets, fps, and every video's ids, times, features
    and labels. Source path and layout are not part of it: the same data from elsewhere is unchanged."""
    return combined_hash(corpus_header_hash(corpus), [(v.split, v.video_id, video_hash(v)) for v in corpus.videos])
