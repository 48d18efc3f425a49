"""Data formats: in-memory records, input-layout readers, Parquet datasets.

``read_source`` reads an input layout (avec2016, csv, parquet, openface, muse) into a validated Corpus; ``ingest``
writes it as a versioned dataset table (Delta Lake, files of many whole videos partitioned by split);
``read_corpus``, ``iter_videos``, ``DatasetReader`` and ``dataset_info`` read datasets back.
Heavy submodules load on first use, so importing ``affect_core.data`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from affect_core.data.records import AFFECT_DIMENSIONS, SPLITS, Corpus, Video

_LAZY = {
    "read_source": "affect_core.data.readers",
    "LAYOUTS": "affect_core.data.readers",
    "ingest": "affect_core.data.dataset",
    "IngestResult": "affect_core.data.dataset",
    "DatasetInfo": "affect_core.data.dataset",
    "read_corpus": "affect_core.data.dataset",
    "iter_videos": "affect_core.data.dataset",
    "dataset_info": "affect_core.data.dataset",
    "list_versions": "affect_core.data.dataset",
    "write_dataset": "affect_core.data.dataset",
    "content_hash": "affect_core.data.dataset",
    "DatasetReader": "affect_core.data.dataset",
    "video_parts": "affect_core.data.dataset",
    "migrate": "affect_core.data.dataset",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'affect_core.data' has no attribute {name!r}")


__all__ = ["AFFECT_DIMENSIONS", "SPLITS", "Corpus", "Video", *_LAZY]
