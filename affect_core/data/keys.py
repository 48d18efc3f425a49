"""The ``affect.*`` metadata keys, named once: what a dataset or predictions table's description, its files' schema
metadata and footers, its commits and the files ``affect synth`` and ``affect export`` write carry
(docs/data_formats.md). Every module that reads or writes one of these keys names it from here."""

from __future__ import annotations

PREFIX = "affect."

# ---- a dataset's description and its files' schema metadata (affect_core.data.dataset.format)
FORMAT = "affect.format"  # "affect-dataset/2"
KIND = "affect.kind"  # "dataset" or "predictions"
FEATURE_SET = "affect.feature_set"  # the label of the feature set(s) held ("appearance+geometric")
FEATURE_SETS = "affect.feature_sets"  # JSON list of {name, start, stop[, set, dimension]}
FEATURE_NAMES = "affect.feature_names"  # JSON list, one name per feature column
FEATURE_DIM = "affect.feature_dim"
FPS = "affect.fps"
SOURCE = "affect.source"  # the source URL (redacted)
LAYOUT = "affect.layout"  # the input layout it was ingested from
HEADER_HASH = "affect.header_hash"  # what every video shares (feature names and sets, fps, rater tracks)
CONTENT_HASH = "affect.content_hash"  # the earlier per-video layout's (affect-dataset/1) and bare Parquet files'
RATINGS = "affect.ratings"  # JSON list of per-rater tracks "<dimension>/<rater>", the ``ratings`` column's order
POOLED = "affect.pooled"  # AVEC2016 features come pooled over a window
SOURCE_FORMAT = "affect.source_format"  # the tool that wrote the source's files
# Corpus metadata kept in a dataset as affect.<key> (Corpus.metadata key -> metadata key).
SOURCE_METADATA = {"pooled": POOLED, "source_format": SOURCE_FORMAT}

# ---- a predictions table's description (affect_core.scoring)
MODEL_ID = "affect.model_id"
DATASET_URL = "affect.dataset_url"
DATASET_VERSION = "affect.dataset_version"
# Predictions written with the face column: their index counts the frames without a face (older tables: no count).
FACE_COUNTS = "affect.face_counts"

# ---- the single Parquet file ``affect export`` writes
VERSION = "affect.version"  # the table version exported

# ---- table files' footers and commits (affect_core.data.delta)
VIDEO_INDEX = "affect.video_index"  # the file's video index (Arrow IPC, base64)
VIDEO_LIST = "affect.videos"  # the first release's index: a JSON list of one object per video
OPERATION = "affect.operation"  # a commit's operation (ingest, score, ...)
