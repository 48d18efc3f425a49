"""Versioned datasets on any local path or S3 URL, one module per job:

``format``    the format name, the Parquet schema, the ``affect.*`` metadata a dataset carries and feature-set choice
``hashing``   content hashes of a video, a dataset's header and a whole dataset
``write``     the one writer of a new version (only what changed; attachments before the commit)
``by_video``  ingest video by video: the source plan, its readers, the comparison with the latest version
``single_file`` a source holding every video in one table file, read in chunks of rows
``ingestion`` ``ingest``, the one entrance for every input layout
``result``    ``IngestResult``, what an ingest did
``migration`` the earlier per-video layout converted into a table
``versions``  a URL opened once: the version a read sees, the versions a dataset holds
``convert``   a table's rows as Video records
``read``      streaming and whole-version reads
``info``      ``dataset_info`` and ``table_summary`` (``affect info``)

A dataset is a Delta Lake table (:mod:`affect_core.data.delta`): Parquet files of many whole videos, partitioned by
split, rows sorted by video and frame, row groups ending at video boundaries, an index of each file's videos in its
footer. A commit is atomic and makes a new version; any version can be read (``version=`` or ``URL@VERSION``) until
``affect vacuum`` removes it. Re-ingesting input whose every video has the hash the latest version holds is a no-op;
changed input writes the changed videos (and the rest of each file that held an old copy of one) in one commit.

The public names are re-exported here; a test that patches a setting patches it in the module that holds it."""

from __future__ import annotations

from affect_core.data.dataset.by_video import (
    InProcessReader,
    SourcePlan,
    VideoIngest,
    VideoReader,
    ingest_by_video,
    read_summary,
    reread_video,
)
from affect_core.data.dataset.format import (
    FORMAT,
    RESERVED_COLUMNS,
    dataset_metadata,
    dataset_schema,
    rating_names,
    selected_feature_names,
)
from affect_core.data.dataset.hashing import combined_hash, content_hash, header_hash, video_hash
from affect_core.data.dataset.info import DatasetInfo, dataset_info, resolve_version, table_summary
from affect_core.data.dataset.ingestion import ingest
from affect_core.data.dataset.migration import migrate
from affect_core.data.dataset.read import DatasetReader, iter_table_rows, iter_videos, read_corpus, video_parts
from affect_core.data.dataset.result import IngestResult
from affect_core.data.dataset.versions import list_versions
from affect_core.data.dataset.write import Written, video_entry, video_table, write_dataset, write_videos

__all__ = [
    "FORMAT",
    "RESERVED_COLUMNS",
    "DatasetInfo",
    "DatasetReader",
    "InProcessReader",
    "IngestResult",
    "SourcePlan",
    "VideoIngest",
    "VideoReader",
    "Written",
    "combined_hash",
    "content_hash",
    "dataset_info",
    "dataset_metadata",
    "dataset_schema",
    "header_hash",
    "ingest",
    "ingest_by_video",
    "iter_table_rows",
    "iter_videos",
    "list_versions",
    "migrate",
    "rating_names",
    "read_corpus",
    "read_summary",
    "reread_video",
    "resolve_version",
    "selected_feature_names",
    "table_summary",
    "video_entry",
    "video_hash",
    "video_parts",
    "video_table",
    "write_dataset",
    "write_videos",
]
