"""Readers of the input layouts (avec2016 flat, csv, parquet) on small hand-written fixtures in tests/data/; the
layout table. The release, openface and muse layouts: tests/test_layout_*.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from corpus_checks import assert_same_corpus

from affect_core.data.arff_format import read_arff
from affect_core.data.readers import read_source
from affect_core.errors import AffectError

DATA = Path(__file__).parent / "data"
NAMES = ["app_mouth", "app_eyes", "app_brow", "geo_x", "geo_y"]


def write_parquet_layout(out: Path, *, per_video: bool = False) -> Path:
    """The csv fixture converted to the parquet layout (combined tables, or one file per video)."""
    out.mkdir(parents=True, exist_ok=True)
    partition = pacsv.read_csv(DATA / "csv" / "partition.csv")
    pq.write_table(partition, out / "partition.parquet")
    features, labels = [], []
    for video_id in partition.column("video_id").to_pylist():
        table = pacsv.read_csv(DATA / "csv" / "features" / f"{video_id}.csv")
        table = table.cast(pa.schema([("frameTime", pa.float64())] + [(n, pa.float32()) for n in NAMES]))
        label_path = DATA / "csv" / "labels" / f"{video_id}.csv"
        label = pacsv.read_csv(label_path) if label_path.exists() else None
        if per_video:
            (out / "features").mkdir(exist_ok=True)
            (out / "labels").mkdir(exist_ok=True)
            pq.write_table(table, out / "features" / f"{video_id}.parquet")
            if label is not None:
                pq.write_table(label, out / "labels" / f"{video_id}.parquet")
            continue
        ids = pa.array([video_id] * table.num_rows)
        features.append(table.add_column(0, "video_id", ids))
        if label is not None:
            labels.append(label.add_column(0, "video_id", ids))
    if not per_video:
        pq.write_table(pa.concat_tables(features), out / "features.parquet")
        pq.write_table(pa.concat_tables(labels), out / "labels.parquet")
    return out


def test_avec2016_fixture_reads_every_set_fused():
    corpus = read_source(str(DATA / "avec2016"), "avec2016")
    assert [(v.video_id, v.split) for v in corpus.videos] == [
        ("train_1", "train"),
        ("dev_1", "dev"),
        ("test_1", "test"),
    ]
    assert corpus.feature_names == NAMES
    assert corpus.feature_set == "appearance+geometric"
    assert corpus.fps == pytest.approx(25.0)
    train, dev, test = corpus.videos
    assert train.features.shape == (6, 5) and train.features.dtype == np.float32
    assert np.isnan(train.features[3]).all() and not np.isnan(train.features[[0, 1, 2, 4, 5]]).any()
    np.testing.assert_allclose(train.time_s, np.arange(6) * 0.04)
    assert train.arousal is not None and train.arousal.dtype == np.float32 and train.arousal.shape == (6,)
    assert dev.labelled and not test.labelled and test.arousal is None and test.valence is None
    assert int(corpus.metadata["source_bytes"]) > 0


def test_feature_sets_are_chosen_by_name_or_concatenated():
    appearance = read_source(str(DATA / "avec2016"), "avec2016", feature_set="appearance")
    geometric_first = read_source(str(DATA / "avec2016"), "avec2016", feature_set="geometric+appearance")
    fused = read_source(str(DATA / "avec2016"), "avec2016")
    assert appearance.feature_names == NAMES[:3] and appearance.feature_set == "appearance"
    assert geometric_first.feature_names == NAMES[3:] + NAMES[:3]
    np.testing.assert_array_equal(appearance.videos[0].features, fused.videos[0].features[:, :3])
    np.testing.assert_array_equal(geometric_first.videos[1].features[:, :2], fused.videos[1].features[:, 3:])
    with pytest.raises(AffectError, match=r"unknown feature set 'audio'; available: appearance, geometric"):
        read_source(str(DATA / "avec2016"), "avec2016", feature_set="audio")


def _assert_same(a, b):
    assert a.fps == pytest.approx(b.fps)
    assert_same_corpus(a, b)


def test_csv_and_parquet_layouts_hold_the_same_corpus_as_avec2016(tmp_path):
    avec = read_source(str(DATA / "avec2016"), "avec2016")
    csv = read_source(str(DATA / "csv"), "csv")
    combined = read_source(str(write_parquet_layout(tmp_path / "combined")), "parquet")
    per_video = read_source(str(write_parquet_layout(tmp_path / "per_video", per_video=True)), "parquet")
    assert csv.feature_set == "features"
    for other in (csv, combined, per_video):
        _assert_same(avec, other)


def test_frame_rate_comes_from_the_time_axis(tmp_path):
    root = tmp_path / "csv50"
    shutil.copytree(DATA / "csv", root)
    for path in list((root / "features").glob("*.csv")) + list((root / "labels").glob("*.csv")):
        lines = path.read_text().splitlines()
        rows = [lines[0]] + [f"{i * 0.02:.2f}," + line.split(",", 1)[1] for i, line in enumerate(lines[1:])]
        path.write_text("\n".join(rows) + "\n")
    corpus = read_source(str(root), "csv")
    assert corpus.fps == pytest.approx(50.0)
    assert all(v.fps == pytest.approx(50.0) for v in corpus.videos)


def test_frame_numbered_csv_needs_fps_and_then_uses_it(tmp_path):
    root = tmp_path / "frames"
    shutil.copytree(DATA / "csv", root)
    for path in list((root / "features").glob("*.csv")) + list((root / "labels").glob("*.csv")):
        lines = path.read_text().splitlines()
        rows = ["frame," + lines[0].split(",", 1)[1]] + [
            f"{i}," + ln.split(",", 1)[1] for i, ln in enumerate(lines[1:])
        ]
        path.write_text("\n".join(rows) + "\n")
    with pytest.raises(AffectError, match="cannot determine the frame rate"):
        read_source(str(root), "csv")
    corpus = read_source(str(root), "csv", fps=30.0)
    assert corpus.fps == 30.0
    np.testing.assert_allclose(corpus.videos[0].time_s, np.arange(6) / 30.0)


def test_arff_parser_accepts_comments_blank_lines_quotes_spaces_and_crlf():
    plain = (DATA / "avec2016" / "features_video_appearance" / "train_1.arff").read_bytes()
    reference = read_arff(plain, "plain.arff")
    header, body = plain.split(b"@data\n")
    rows = body.strip().split(b"\n")
    quoted = [b"'" + r.split(b",", 1)[0] + b"'," + r.split(b",", 1)[1].replace(b",", b", ") for r in rows]
    messy = header + b"@DATA\n% a comment\n\n" + b"\n".join(quoted[:3]) + b"\n\n% another\n" + b"\n".join(quoted[3:])
    variant = read_arff(messy.replace(b"\n", b"\r\n"), "messy.arff")
    assert variant.attributes == reference.attributes
    for name, _ in reference.attributes:
        if name == "Instance_name":
            assert list(variant.columns[name]) == ["train_1"] * 6
        else:
            np.testing.assert_array_equal(variant.columns[name], reference.columns[name])
    assert variant.row_ref(3).startswith("line ")
    assert int(variant.data_lines[0]) > int(reference.data_lines[0])  # the comment and blank line moved the rows


def test_source_that_does_not_exist_or_unknown_layout(tmp_path):
    with pytest.raises(AffectError, match="does not exist"):
        read_source(str(tmp_path / "nope"), "csv")
    with pytest.raises(AffectError, match="unknown input layout"):
        read_source(str(DATA / "csv"), "xlsx")


@pytest.mark.parametrize("fps", [0.0, -25.0, float("nan"), float("inf")])
def test_a_frame_rate_that_is_not_a_positive_number_is_refused(fps):
    with pytest.raises(AffectError, match="expected a positive frame rate"):
        read_source(str(DATA / "csv"), "csv", fps=fps)


def test_a_given_frame_rate_must_agree_with_the_files_time_axes():
    measured = read_source(str(DATA / "csv"), "csv").fps
    assert read_source(str(DATA / "csv"), "csv", fps=measured).fps == measured
    with pytest.raises(AffectError, match="contradicts the files' time axes"):
        read_source(str(DATA / "csv"), "csv", fps=measured * 2)


def test_a_layout_is_one_entry_in_the_reader_table(monkeypatch, tmp_path):
    """read_source dispatches on a table of layout name -> reader(files, feature_set, options): a new layout (the
    video layout, say) is one entry, checked and assembled like every other."""
    from affect_core.data import readers
    from affect_core.data.tracks import SourceRead, SourceVideo, Track

    def read_demo(files, feature_set, options):
        time_s = np.arange(4) / 25.0
        video = SourceVideo("train_1", "train")
        video.features["demo"] = Track(files.loc.display("x"), ["f"], np.ones((4, 1)), time_s, None, str)
        return SourceRead([video], ["demo"], metadata={"source_format": "demo"})

    monkeypatch.setitem(readers.LAYOUT_READERS, "demo", read_demo)
    tmp_path.joinpath("x").write_text("")
    corpus = read_source(str(tmp_path), "demo")
    assert corpus.fps == 25.0 and corpus.metadata["layout"] == "demo" and corpus.metadata["source_format"] == "demo"
    assert set(readers.LAYOUTS) >= {"avec2016", "csv", "parquet", "openface", "muse"}
