"""The corpus generator: determinism, shapes, missing faces, the planted lag, the file layouts, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import arff
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from affect_cli.cmd_synth import synth
from affect_core.data.records import Corpus, Video
from affect_core.errors import AffectError
from affect_core.synth import (
    LAYOUTS,
    SynthConfig,
    WriteOptions,
    feature_sets,
    generate,
    generate_corpus,
    select_feature_set,
    write_corpus,
)

TINY = SynthConfig(videos_per_split=2, frames=200, appearance_dim=6, geometric_dim=8, lag_s=0.4, no_face_share=0.1)


@pytest.fixture(scope="module")
def tiny() -> Corpus:
    return generate_corpus(TINY)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, tiny: Corpus) -> dict[str, Path]:
    """The tiny corpus written once in every layout."""
    root = tmp_path_factory.mktemp("synth")
    for layout in LAYOUTS:
        write_corpus(tiny, root / layout, layout)
    write_corpus(tiny, root / "avec2016-flat", "avec2016", options=WriteOptions(flat=True))
    return {layout: root / layout for layout in (*LAYOUTS, "avec2016-flat")}


def _labels(video) -> np.ndarray:
    return np.stack([video.arousal, video.valence], axis=1)


# --- the generated records ----------------------------------------------------------------------------------


def test_same_seed_same_corpus_and_other_seed_differs() -> None:
    first, second = generate_corpus(TINY), generate_corpus(TINY)
    other = generate_corpus(TINY.with_(seed=1))
    for a, b, c in zip(first.videos, second.videos, other.videos, strict=True):
        np.testing.assert_array_equal(a.features, b.features)  # NaN compare equal here
        if a.labelled:
            np.testing.assert_array_equal(a.arousal, b.arousal)
        assert a.labelled == b.labelled
        assert not np.array_equal(a.features, c.features, equal_nan=True)
    assert first.feature_names == second.feature_names


def test_a_video_does_not_depend_on_how_many_videos_are_generated() -> None:
    small = generate_corpus(TINY.with_(videos_per_split=1))
    np.testing.assert_array_equal(small.videos[0].features, generate_corpus(TINY).videos[0].features)
    np.testing.assert_array_equal(small.videos[0].valence, generate_corpus(TINY).videos[0].valence)


def test_shapes_ids_dtypes_and_ranges(tiny: Corpus) -> None:
    assert [v.video_id for v in tiny.videos] == ["train_1", "train_2", "dev_1", "dev_2", "test_1", "test_2"]
    assert [v.split for v in tiny.videos] == ["train"] * 2 + ["dev"] * 2 + ["test"] * 2
    assert tiny.feature_names == [f"appearance_{i}" for i in range(6)] + [f"geometric_{i}" for i in range(8)]
    assert tiny.fps == 25.0 and tiny.metadata["lag_frames"] == "10"
    for video in tiny.videos:
        assert video.features.shape == (200, 14) and video.features.dtype == np.float32
        assert video.time_s.dtype == np.float64
        np.testing.assert_allclose(video.time_s, np.arange(200) * 0.04)
        assert video.fps == 25.0
        face = ~np.isnan(video.features).any(axis=1)
        assert np.isfinite(video.features[face]).all()
        if video.split == "test":
            assert video.arousal is None and video.valence is None and not video.labelled
        else:
            labels = _labels(video)
            assert labels.dtype == np.float32 and labels.shape == (200, 2)
            assert np.isfinite(labels).all() and np.abs(labels).max() <= 1.0
            assert labels.std(axis=0).min() > 0.01  # labels move


def test_test_labels_option_labels_the_test_split() -> None:
    corpus = generate_corpus(TINY.with_(test_labels=True, videos_per_split=1))
    assert all(v.labelled for v in corpus.videos)


def test_latent_is_smooth_spread_and_inside_the_unit_interval() -> None:
    result = generate(SynthConfig(videos_per_split=1, frames=3000, appearance_dim=2, geometric_dim=2))
    latent = np.concatenate(list(result.latent.values()))
    assert latent.shape == (9000, 2)
    assert np.abs(latent).max() < 1.0
    assert 0.2 < latent.std(axis=0).min() and latent.std(axis=0).max() < 0.8
    # Smooth: a frame-to-frame step is a small fraction of the spread, and steps change slowly (for a random
    # walk the mean second difference would exceed the mean first difference).
    step = np.abs(np.diff(latent, axis=0)).mean()
    assert step < 0.05 * latent.std()
    assert np.abs(np.diff(latent, n=2, axis=0)).mean() < 0.5 * step


def test_no_face_frames_are_exact_share_in_runs_and_whole_rows() -> None:
    config = SynthConfig(videos_per_split=1, frames=2000, appearance_dim=3, geometric_dim=4, no_face_share=0.05)
    for video in generate_corpus(config).videos:
        missing = np.isnan(video.features)
        rows = missing.any(axis=1)
        assert (missing.all(axis=1) == rows).all()  # a frame misses all of its features or none
        assert rows.sum() == 100
        runs = np.count_nonzero(np.diff(rows.astype(int)) == 1) + int(rows[0])
        assert 2 <= runs <= 10  # runs of about 1 s (25 frames), not scattered frames
    none = generate_corpus(config.with_(no_face_share=0.0))
    assert not any(np.isnan(v.features).any() for v in none.videos)


def test_labels_are_the_latent_delayed_by_the_lag() -> None:
    config = SynthConfig(videos_per_split=1, frames=1500, appearance_dim=2, geometric_dim=2, lag_s=1.2, fps=50.0)
    result = generate(config)
    lag = config.lag_frames
    assert lag == 60
    for video in result.corpus.videos:
        if not video.labelled:
            continue
        latent, labels = result.latent[video.video_id], _labels(video)
        scores = [
            np.mean([np.corrcoef(latent[: len(latent) - k, d], labels[k:, d])[0, 1] for d in (0, 1)])
            for k in range(0, 2 * lag + 1)
        ]
        assert abs(int(np.argmax(scores)) - lag) <= 1
        # Edge replicated: the first `lag` labels hold the first latent value (up to annotator noise).
        assert np.abs(labels[:lag] - latent[0]).max() < 0.2


def test_planted_lag_is_recoverable_from_features_by_per_video_regression() -> None:
    config = SynthConfig(videos_per_split=2, frames=2000, appearance_dim=12, geometric_dim=20, lag_s=1.0)
    lag = config.lag_frames
    scores = []
    for video in [v for v in generate_corpus(config).videos if v.labelled]:
        labels = _labels(video)
        per_shift = []
        for k in range(0, 2 * lag + 1):
            x, y = video.features[: video.num_frames - k], labels[k:]
            face = ~np.isnan(x[:, 0])
            design = np.hstack([x[face], np.ones((face.sum(), 1))])  # float64
            fitted = design @ np.linalg.solve(design.T @ design, design.T @ y[face])  # least squares
            per_shift.append([np.corrcoef(fitted[:, d], y[face, d])[0, 1] for d in (0, 1)])
        scores.append(np.mean(per_shift, axis=1))
    assert abs(int(np.argmax(np.mean(scores, axis=0))) - lag) <= 1


def test_latent_is_learnable_causally_from_current_features() -> None:
    """A decoder fitted on the train videos reads the latent of unseen videos from the current frame alone."""
    config = SynthConfig(videos_per_split=2, frames=1000)  # the default 84 + 316 features
    result = generate(config)

    def frames(split: str) -> tuple[np.ndarray, np.ndarray]:
        videos = result.corpus.split(split)
        x = np.concatenate([v.features for v in videos])
        y = np.concatenate([result.latent[v.video_id] for v in videos])
        face = ~np.isnan(x[:, 0])
        return np.hstack([x[face], np.ones((face.sum(), 1), np.float32)]), y[face]

    x_train, y_train = frames("train")
    weights = np.linalg.lstsq(x_train, y_train, rcond=None)[0]
    for split in ("dev", "test"):
        x, y = frames(split)
        residual = ((x @ weights - y) ** 2).sum(axis=0) / ((y - y.mean(axis=0)) ** 2).sum(axis=0)
        assert (1 - residual).min() > 0.6  # R^2 per dimension


def test_feature_sets_and_selection(tiny: Corpus) -> None:
    assert feature_sets(tiny) == {"appearance": slice(0, 6), "geometric": slice(6, 14)}
    geometric = select_feature_set(tiny, "geometric")
    assert geometric.feature_names == [f"geometric_{i}" for i in range(8)] and geometric.feature_set == "geometric"
    np.testing.assert_array_equal(geometric.videos[0].features, tiny.videos[0].features[:, 6:])
    with pytest.raises(AffectError, match="no feature set 'pose'"):
        select_feature_set(tiny, "pose")


@pytest.mark.parametrize(
    "change",
    [
        {"frames": 1},
        {"no_face_share": 1.0},
        {"fps": 0.0},
        {"lag_s": -1.0},
        {"appearance_dim": 0, "geometric_dim": 0},
        {"lag_s": 100.0},
    ],
)
def test_invalid_settings_raise_a_clear_error(change: dict) -> None:
    with pytest.raises(AffectError, match="synth config: "):
        TINY.with_(**change)


# --- the file layouts ---------------------------------------------------------------------------------------

FEATURE_ROW = re.compile(r"^train_1,0\.00(,(-?\d+(\.\d+)?|\?))+$")
GOLD_ROW = re.compile(r"^train_1,0\.00,-?\d(\.\d{1,6})?$")


def _arff(path: Path) -> dict:
    with path.open() as handle:
        return arff.load(handle)


def test_avec2016_release_files_and_their_contract(written: dict[str, Path], tiny: Corpus) -> None:
    """The release: each set once per dimension folder; a frame without a face is a row of zeros."""
    root = written["avec2016"]
    assert sorted(p.name for p in root.iterdir()) == [
        "features_video_appearance",
        "features_video_geometric",
        "ratings_gold_standard",
    ]
    for name, columns in (("appearance", slice(0, 6)), ("geometric", slice(6, 14))):
        for dimension in ("arousal", "valence"):
            folder = root / f"features_video_{name}" / dimension
            assert sorted(p.stem for p in folder.iterdir()) == sorted(v.video_id for v in tiny.videos)
            for video in tiny.videos:
                parsed = _arff(folder / f"{video.video_id}.arff")
                assert parsed["relation"] == f"features_video_{name}"
                assert [a for a, _ in parsed["attributes"]][:2] == ["Instance_name", "frameTime"]
                values = np.array([row[2:] for row in parsed["data"]], dtype=np.float32)
                expected = video.features[:, columns].copy()
                no_face = np.isnan(expected).all(axis=1)
                assert no_face.any()
                expected[no_face] = 0.0
                np.testing.assert_array_equal(values, expected)


def test_avec2016_flat_files_and_their_contract(written: dict[str, Path], tiny: Corpus) -> None:
    root = written["avec2016-flat"]
    assert sorted(p.name for p in root.iterdir()) == [
        "features_video_appearance",
        "features_video_geometric",
        "ratings_gold_standard",
    ]
    ids = [v.video_id for v in tiny.videos]
    labelled = [v.video_id for v in tiny.videos if v.labelled]
    for name, columns in (("appearance", range(0, 6)), ("geometric", range(6, 14))):
        folder = root / f"features_video_{name}"
        assert sorted(p.stem for p in folder.iterdir()) == sorted(ids)
        for video in tiny.videos:
            path = folder / f"{video.video_id}.arff"
            parsed = _arff(path)
            assert parsed["relation"] == f"features_video_{name}"
            assert parsed["attributes"] == [("Instance_name", "STRING"), ("frameTime", "NUMERIC")] + [
                (f"{name}_{i}", "NUMERIC") for i in range(len(columns))
            ]
            rows = parsed["data"]
            assert len(rows) == video.num_frames and all(row[0] == video.video_id for row in rows)
            np.testing.assert_array_equal([row[1] for row in rows], video.time_s)
            values = np.array([[np.nan if x is None else x for x in row[2:]] for row in rows], dtype=np.float32)
            np.testing.assert_array_equal(values, video.features[:, columns.start : columns.stop])
        text = (folder / "train_1.arff").read_text()
        assert text.startswith(f"@relation features_video_{name}\n\n@attribute Instance_name string\n")
        first_row = text.split("@data\n", 1)[1].splitlines()[0]
        assert FEATURE_ROW.match(first_row), first_row
    assert "?" in (root / "features_video_appearance" / "train_1.arff").read_text().split("@data", 1)[1]
    for dimension in ("arousal", "valence"):
        folder = root / "ratings_gold_standard" / dimension
        assert sorted(p.stem for p in folder.iterdir()) == sorted(labelled)  # test videos: no labels
        for video in tiny.videos:
            if not video.labelled:
                continue
            parsed = _arff(folder / f"{video.video_id}.arff")
            assert parsed["relation"] == "GOLDSTANDARD"
            assert parsed["attributes"] == [
                ("Instance_name", "STRING"),
                ("frameTime", "NUMERIC"),
                ("GoldStandard", "NUMERIC"),
            ]
            rows = parsed["data"]
            np.testing.assert_array_equal([row[1] for row in rows], video.time_s)
            np.testing.assert_array_equal(np.array([row[2] for row in rows], np.float32), video.labels(dimension))
        text = (folder / "train_1.arff").read_text()
        assert text.startswith("@relation GOLDSTANDARD\n\n@attribute Instance_name string\n")
        rows = text.split("@data\n", 1)[1].splitlines()
        assert GOLD_ROW.match(rows[0]) and rows[1].startswith("train_1,0.04,"), rows[:2]


def test_csv_files_and_their_contract(written: dict[str, Path], tiny: Corpus) -> None:
    root = written["csv"]
    assert sorted(p.name for p in root.iterdir()) == ["features", "labels", "partition.csv"]
    partition = (root / "partition.csv").read_text().splitlines()
    assert partition[0] == "video_id,split" and partition[1:] == [f"{v.video_id},{v.split}" for v in tiny.videos]
    assert sorted(p.stem for p in (root / "labels").iterdir()) == sorted(v.video_id for v in tiny.videos if v.labelled)
    for video in tiny.videos:
        path = root / "features" / f"{video.video_id}.csv"
        lines = path.read_text().splitlines()
        assert lines[0] == ",".join(["frameTime", *tiny.feature_names])
        assert lines[1].startswith("0.00,") and lines[2].startswith("0.04,")
        table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types={"frameTime": pa.float64()}))
        np.testing.assert_array_equal(table["frameTime"].to_numpy(), video.time_s)
        values = np.stack([table[n].to_numpy(zero_copy_only=False) for n in tiny.feature_names], axis=1)
        np.testing.assert_array_equal(values.astype(np.float32), video.features)
        if video.labelled:
            path = root / "labels" / f"{video.video_id}.csv"
            assert path.read_text().splitlines()[0] == "frameTime,arousal,valence"
            table = pa_csv.read_csv(path)
            for dimension in ("arousal", "valence"):
                np.testing.assert_array_equal(table[dimension].to_numpy().astype(np.float32), video.labels(dimension))
    assert ",NaN," in (root / "features" / "train_1.csv").read_text()


def test_parquet_files_and_their_contract(written: dict[str, Path], tiny: Corpus) -> None:
    root = written["parquet"]
    assert sorted(p.name for p in root.iterdir()) == [
        "features.parquet",
        "labels.parquet",
        "partition.parquet",
    ]
    features = pq.read_table(root / "features.parquet")
    assert features.schema.names == ["video_id", "frameTime", *tiny.feature_names]
    assert features.schema.field("video_id").type == pa.string()
    assert features.schema.field("frameTime").type == pa.float64()
    assert all(features.schema.field(n).type == pa.float32() for n in tiny.feature_names)
    metadata = features.schema.metadata
    assert json.loads(metadata[b"affect.feature_sets"]) == {"appearance": 6, "geometric": 8}
    assert float(metadata[b"affect.fps"]) == 25.0
    assert pq.ParquetFile(root / "features.parquet").num_row_groups == len(tiny.videos)
    labels = pq.read_table(root / "labels.parquet")
    assert labels.schema == pa.schema(
        [
            ("video_id", pa.string()),
            ("frameTime", pa.float64()),
            ("arousal", pa.float32()),
            ("valence", pa.float32()),
        ]
    )
    partition = pq.read_table(root / "partition.parquet")
    assert partition.schema == pa.schema([("video_id", pa.string()), ("split", pa.string())])
    assert partition.to_pydict() == {
        "video_id": [v.video_id for v in tiny.videos],
        "split": [v.split for v in tiny.videos],
    }
    ids = features["video_id"].to_numpy(zero_copy_only=False)
    label_ids = labels["video_id"].to_numpy(zero_copy_only=False)
    assert features["frameTime"].null_count == 0
    for video in tiny.videos:
        rows = ids == video.video_id
        np.testing.assert_array_equal(features["frameTime"].to_numpy()[rows], video.time_s)
        values = np.stack([features[n].to_numpy()[rows] for n in tiny.feature_names], axis=1)
        np.testing.assert_array_equal(values, video.features)  # NaN stored as NaN, not null
        label_rows = label_ids == video.video_id
        assert label_rows.any() == video.labelled
        if video.labelled:
            np.testing.assert_array_equal(labels["valence"].to_numpy()[label_rows], video.valence)
    assert all(features[n].null_count == 0 for n in tiny.feature_names)


def test_write_generates_from_a_config_and_refuses_to_clobber(tmp_path: Path) -> None:
    config = TINY.with_(videos_per_split=1, frames=50)
    corpus = write_corpus(config, tmp_path / "out", "csv")
    assert len(corpus.videos) == 3 and (tmp_path / "out" / "partition.csv").exists()
    with pytest.raises(AffectError, match="not empty"):
        write_corpus(config, tmp_path / "out", "parquet")
    write_corpus(config, tmp_path / "out", "parquet", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "features.parquet",
        "labels.parquet",
        "partition.parquet",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging directory left behind
    (tmp_path / "empty").mkdir()
    write_corpus(config, tmp_path / "empty", "avec2016")
    assert (tmp_path / "empty" / "ratings_gold_standard" / "valence" / "dev_1.arff").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(AffectError, match="not a directory"):
        write_corpus(config, tmp_path / "file", "csv")
    with pytest.raises(AffectError, match="unknown; expected one of avec2016, csv, parquet"):
        write_corpus(config, tmp_path / "new", "hdf5")
    assert not (tmp_path / "new").exists()


# --- the command --------------------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("synth")(synth)
    app.command("noop")(lambda: None)  # two commands, so that `synth` is a subcommand as in the real app
    return app


def test_cli_writes_a_corpus_and_says_what_it_wrote(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    args = ["synth", str(out), "--layout", "avec2016", "--videos-per-split", "1", "--frames", "60"]
    args += [
        "--appearance-dim",
        "3",
        "--geometric-dim",
        "4",
        "--lag-s",
        "0.2",
        "--test-labels",
        "--seed",
        "3",
    ]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "wrote 3 videos" in result.output and "avec2016" in result.output and "5 frames" in result.output
    assert (out / "ratings_gold_standard" / "arousal" / "test_1.arff").exists()
    parsed = _arff(out / "features_video_geometric" / "valence" / "dev_1.arff")
    assert len(parsed["attributes"]) == 2 + 4 and len(parsed["data"]) == 60
    expected = generate_corpus(
        SynthConfig(videos_per_split=1, frames=60, appearance_dim=3, geometric_dim=4, lag_s=0.2, seed=3)
    )
    geometric = expected.videos[1].features[:, 3:]
    np.testing.assert_array_equal(
        np.array([row[2:] for row in parsed["data"]], np.float32),
        np.where(np.isnan(geometric).all(axis=1)[:, None], np.float32(0.0), geometric),
    )
    flat = tmp_path / "flat"
    assert CliRunner().invoke(_app(), ["synth", str(flat), *args[2:], "--flat"]).exit_code == 0
    assert (flat / "features_video_geometric" / "dev_1.arff").exists()


def test_cli_reports_bad_input_as_the_project_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["synth", str(tmp_path / "x"), "--layout", "hdf5"])
    assert result.exit_code != 0 and isinstance(result.exception, AffectError)
    result = CliRunner().invoke(_app(), ["synth", str(tmp_path / "x"), "--frames", "1"])
    assert isinstance(result.exception, AffectError) and "frames" in str(result.exception)


def test_importing_the_command_module_is_light() -> None:
    heavy = "{'numpy', 'affect_core', 'pyarrow'}"
    code = f"import sys, affect_cli.cmd_synth; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_any_corpus_can_be_written_with_partial_missing_values(tmp_path: Path) -> None:
    """A corpus from elsewhere: feature names without a set prefix form one set; a lone NaN is one `?`."""
    features = np.array([[0.25, np.nan], [-1.5, 2.0], [np.nan, np.nan]], dtype=np.float32)
    video = Video("dev_1", "dev", features, np.arange(3) / 50.0, 50.0, valence=np.array([0.1, -0.2, 0.3], np.float32))
    corpus = Corpus([video], ["AU01", "AU02"], 50.0, feature_set="openface")
    write_corpus(corpus, tmp_path / "avec", "avec2016", options=WriteOptions(flat=True))
    text = (tmp_path / "avec" / "features_video_openface" / "dev_1.arff").read_text()
    assert text.split("@data\n", 1)[1] == "dev_1,0.00,0.25,?\ndev_1,0.02,-1.5,2\ndev_1,0.04,?,?\n"
    assert not (tmp_path / "avec" / "ratings_gold_standard" / "arousal" / "dev_1.arff").exists()
    gold = _arff(tmp_path / "avec" / "ratings_gold_standard" / "valence" / "dev_1.arff")
    assert gold["data"] == [["dev_1", 0.0, 0.1], ["dev_1", 0.02, -0.2], ["dev_1", 0.04, 0.3]]
    write_corpus(corpus, tmp_path / "csv", "csv")
    assert (tmp_path / "csv" / "labels" / "dev_1.csv").read_text().splitlines()[1:] == [
        "0.00,NaN,0.1",
        "0.02,NaN,-0.2",
        "0.04,NaN,0.3",
    ]
    bad = Corpus([Video("../x", "dev", features, np.arange(3) / 50.0, 50.0)], ["AU01", "AU02"], 50.0)
    with pytest.raises(AffectError, match="'../x'"):
        write_corpus(bad, tmp_path / "bad", "csv")
    assert not (tmp_path / "bad").exists()
