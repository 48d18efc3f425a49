"""Readers for the input layouts of docs/data_formats.md: ``avec2016``, ``csv``, ``parquet``, ``openface`` and
``muse``; the ``video`` layout is provided from above data (:mod:`affect_core.data.layouts.provided`).

``read_source`` reads and validates a whole corpus into a :class:`~affect_core.data.records.Corpus`; nothing
is written. Each layout is one reader function in ``LAYOUT_READERS`` (a module under
``affect_core.data.layouts``) that turns its files into a :class:`~affect_core.data.tracks.SourceRead`;
``assemble_corpus`` (:mod:`affect_core.data.assemble`) then checks the tracks against each other and puts them on
one time grid. Every problem is
an AffectError naming the file, the row or attribute and what was expected.

Time grid: the corpus's frames are the frames of its first feature set (every other feature set must have the
same frames). Where a layout's labels have their own rate or offset (``SourceRead.labels_by_time``: openface,
muse), a label track is put on the feature frames by time with :func:`labels_on_frames`; label tracks that
number frames instead (Aff-Wild2) are matched frame by frame."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from affect_core import storage
from affect_core.data.assemble import assemble_corpus, labels_on_frames
from affect_core.data.layouts.avec2016 import read_avec2016
from affect_core.data.layouts.muse import read_muse
from affect_core.data.layouts.openface import read_openface
from affect_core.data.layouts.provided import PROVIDERS, provided
from affect_core.data.layouts.tables import read_csv_layout, read_parquet_layout
from affect_core.data.records import Corpus
from affect_core.data.tables import MAX_ROWS
from affect_core.data.tracks import (
    STEP_TOLERANCE,
    TIME_DECIMALS,
    ReadOptions,
    SourceFiles,
    SourceRead,
    check_split,
    check_video_id,
    fail,
    parse_feature_sets,
    select_feature_sets,
    video_sort_key,
)
from affect_core.errors import AffectError

LayoutReader = Callable[[SourceFiles, "str | Sequence[str] | None", ReadOptions], SourceRead]
# One entry per input layout: name -> reader(files, feature_set, options).
LAYOUT_READERS: dict[str, LayoutReader] = {
    "avec2016": read_avec2016,
    "csv": read_csv_layout,
    "parquet": read_parquet_layout,
    "openface": read_openface,
    "muse": read_muse,
}
# The video layout (ROOT/videos/*) decodes videos and extracts features first: affect_core.video.layout provides it.
LAYOUTS = (*LAYOUT_READERS, *PROVIDERS)
__all__ = [
    "LAYOUTS",
    "LAYOUT_READERS",
    "MAX_ROWS",
    "STEP_TOLERANCE",
    "TIME_DECIMALS",
    "ReadOptions",
    "SourceRead",
    "assemble_corpus",
    "check_split",
    "check_video_id",
    "labels_on_frames",
    "parse_feature_sets",
    "read_source",
    "select_feature_sets",
    "set_ranges",
    "video_sort_key",
]


def read_source(
    root: str,
    layout: str,
    *,
    feature_set: str | Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    fps: float | None = None,
    min_face_confidence: float = ReadOptions.min_face_confidence,
) -> Corpus:
    """Read and validate a corpus in one of the input layouts (``LAYOUTS``).

    root: a local path or fsspec URL. feature_set: a set name (``"appearance"``), several joined by ``+`` or a
    list (concatenated in that order: early fusion), or None for every set. fps: only for files that number
    frames and have no time column; otherwise the frame rate comes from the data. min_face_confidence: OpenFace
    and py-feat rows below it are frames without a face. Returns a Corpus whose ``metadata`` holds
    ``feature_sets`` (JSON list of {name, start, stop, names[, set, dimension]}), ``layout``, ``source``,
    ``source_bytes`` and what the layout adds (``pooled``, ``source_format``, ``ratings``, ``notes``). Raises
    AffectError on any bad input."""
    check_read_options(layout, min_face_confidence)
    reader = provided(layout)
    if reader is not None:
        return reader.read_corpus(root, storage_options=storage_options)
    reader_fn = LAYOUT_READERS[layout]
    loc = storage.resolve(root, storage_options)
    if not storage.is_dir(loc.fs, loc.path):
        problem = "is a file" if storage.exists(loc.fs, loc.path) else "does not exist"
        raise fail(loc.display(), f"source {problem}; expected a directory in the {layout} layout")
    files = SourceFiles(loc)
    read = reader_fn(files, feature_set, ReadOptions(fps=fps, min_face_confidence=min_face_confidence))
    corpus = assemble_corpus(read, source=loc.display(), layout=layout, fps=fps)
    corpus.metadata["source_bytes"] = str(files.bytes_read)
    return corpus


def check_read_options(layout: str, min_face_confidence: float) -> None:
    """AffectError for an unknown layout or a face threshold outside [0, 1]."""
    if layout not in LAYOUT_READERS and layout not in PROVIDERS:
        raise AffectError(f"layout {layout!r}: unknown input layout; expected one of {', '.join(LAYOUTS)}")
    if not (math.isfinite(min_face_confidence) and 0.0 <= min_face_confidence <= 1.0):
        raise AffectError(f"min_face_confidence={min_face_confidence:g}: expected a number in [0, 1]")


def set_ranges(corpus: Corpus) -> list[dict[str, Any]]:
    """The feature sets of a corpus as [{name, start, stop, names[, set, dimension]}] (one set spanning
    everything if unrecorded)."""
    raw = corpus.metadata.get("feature_sets")
    if raw:
        return list(json.loads(raw))
    return [
        {
            "name": corpus.feature_set,
            "start": 0,
            "stop": corpus.feature_dim,
            "names": list(corpus.feature_names),
        }
    ]
