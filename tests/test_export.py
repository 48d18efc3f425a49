"""`affect export` to CSV: a missing value (a frame without a face, a video without labels) is an empty cell, what
CSV readers (the csv module, pandas, polars) take for missing; Parquet keeps the table's own values."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from affect_core.data import dataset as ds
from affect_core.data.export import export_table
from affect_core.synth import SynthConfig, write_corpus


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("export")
    # test videos carry no labels (null) and some frames of every video no face (NaN features)
    config = SynthConfig(videos_per_split=1, frames=100, appearance_dim=2, geometric_dim=1, seed=3)
    write_corpus(config, root / "src", "csv")
    url = str(root / "ds")
    ds.ingest(str(root / "src"), url, layout="csv", progress=False)
    return url


def missing_rows(url: str) -> tuple[int, int]:
    """(frames without a face, frames without labels) over the dataset."""
    videos = list(ds.iter_videos(url))
    without_face = sum(int(np.isnan(v.features).all(axis=1).sum()) for v in videos)
    unlabelled = sum(v.num_frames for v in videos if v.labels("arousal") is None)
    return without_face, unlabelled


def test_csv_export_writes_missing_values_as_empty_cells(dataset, tmp_path):
    without_face, unlabelled = missing_rows(dataset)
    assert without_face and unlabelled, "the corpus should hold both kinds of missing value"
    export_table(dataset, str(tmp_path / "all.csv"), per_video=str(tmp_path / "each"))
    names = list(ds.dataset_info(dataset).feature_names)
    files = [tmp_path / "all.csv", *sorted((tmp_path / "each").glob("*.csv"))]
    for path in files:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert not [cell for row in rows for cell in row.values() if cell.lower() == "nan"], path
        frame = pd.read_csv(path)
        for column in [*names, "arousal", "valence"]:
            assert pd.api.types.is_float_dtype(frame[column]), (path, column)
    with open(tmp_path / "all.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(all(row[n] == "" for n in names) for row in rows) == without_face
    assert sum(row["arousal"] == "" and row["valence"] == "" for row in rows) == unlabelled
    assert all(row["time_s"] != "" for row in rows)


def test_parquet_export_keeps_the_tables_values(dataset, tmp_path):
    without_face, _ = missing_rows(dataset)
    export_table(dataset, str(tmp_path / "all.parquet"))
    features = pq.read_table(tmp_path / "all.parquet").column("features").combine_chunks()
    flat = features.values.to_numpy(zero_copy_only=False)
    assert features.null_count == 0 and features.values.null_count == 0
    assert int(np.isnan(flat.reshape(len(features), -1)).all(axis=1).sum()) == without_face
