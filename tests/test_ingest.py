"""Ingest into versioned Parquet datasets: local paths, memory://, S3 (SeaweedFS), visibility, no-ops, round
trips."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from corpus_checks import assert_same_corpus

from affect_core.data import dataset as ds
from affect_core.data import delta
from affect_core.data.dataset import dataset_info, ingest, iter_videos, list_versions, read_corpus
from affect_core.data.readers import read_source
from affect_core.errors import AffectError

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


def _copy(layout: str, tmp_path: Path) -> Path:
    root = tmp_path / f"src_{layout}_{uuid.uuid4().hex[:6]}"
    shutil.copytree(DATA / layout, root)
    return root


def delta_rows(path) -> pa.Table:
    """A dataset's rows as another Delta Lake reader (deltalake's own) sees them."""
    from deltalake import DeltaTable

    return pa.table(DeltaTable(str(path)).to_pyarrow_table())


def test_ingest_local_writes_a_delta_table_with_schema_and_metadata(tmp_path):
    target = tmp_path / "dataset"
    result = ingest(str(DATA / "avec2016"), str(target), layout="avec2016", progress=False)
    assert not result.unchanged and result.videos == 3 and result.rows == 18 and result.mb_per_s > 0
    assert result.content_hash.startswith("sha256:") and result.version == "0"
    assert (target / "_delta_log").is_dir()
    files = sorted(p.relative_to(target).parent.as_posix() for p in target.rglob("*.parquet"))
    assert files == ["split=dev", "split=test", "split=train"]  # one file per split here: three small videos
    table = delta_rows(target)
    assert table.schema.field("video_id").type == pa.string()
    assert table.schema.field("frame").type == pa.int32()
    assert table.schema.field("time_s").type == pa.float64()
    assert pa.types.is_list(table.schema.field("features").type)
    assert table.schema.field("arousal").type == pa.float32()
    metadata = dataset_info(str(target)).metadata
    assert dataset_info(str(target)).content_hash == result.content_hash
    assert metadata["affect.fps"] == "25.0" and metadata["affect.layout"] == "avec2016"
    assert json.loads(metadata["affect.feature_sets"]) == [
        {"name": "appearance", "start": 0, "stop": 3},
        {"name": "geometric", "start": 3, "stop": 5},
    ]
    test_rows = table.filter(pa.compute.equal(table.column("video_id"), "test_1"))
    assert test_rows.column("arousal").null_count == 6  # unlabelled: null, not NaN

    corpus = read_corpus(str(target))
    assert_same_corpus(corpus, read_source(str(DATA / "avec2016"), "avec2016"))
    assert corpus.fps == 25.0 and corpus.metadata["version"] == result.version


def test_read_api_selects_splits_feature_sets_and_streams(tmp_path):
    target = str(tmp_path / "dataset")
    ingest(str(DATA / "avec2016"), target, layout="avec2016", progress=False)
    geometric = read_corpus(target, splits=["train", "dev"], feature_set="geometric")
    assert [v.video_id for v in geometric.videos] == ["train_1", "dev_1"]
    assert geometric.feature_names == ["geo_x", "geo_y"] and geometric.feature_dim == 2
    assert geometric.videos[0].features.shape == (6, 2)
    streamed = iter_videos(target, splits=["test"])
    video = next(streamed)
    assert video.video_id == "test_1" and video.arousal is None and video.features.shape == (6, 5)
    assert next(streamed, None) is None
    info = dataset_info(target)
    assert info.videos == {"train": ["train_1"], "dev": ["dev_1"], "test": ["test_1"]}
    assert info.feature_sets == {"appearance": (0, 3), "geometric": (3, 5)} and info.fps == 25.0
    with pytest.raises(AffectError, match="no split 'holdout'"):
        read_corpus(target, splits=["holdout"])
    with pytest.raises(AffectError, match="unknown feature set 'audio'"):
        read_corpus(target, feature_set="audio")


def test_a_memory_url_is_refused_clearly():
    """Delta Lake commits through its own object store, which cannot share fsspec's memory://."""
    url = f"memory://affect-test-{uuid.uuid4().hex}/ds"
    with pytest.raises(AffectError, match="memory:// is not one"):
        ingest(str(DATA / "csv"), url, layout="csv", progress=False)


def test_unchanged_input_is_a_no_op_and_changed_input_makes_a_new_version(tmp_path):
    source = _copy("csv", tmp_path)
    target = str(tmp_path / "dataset")
    first = ingest(str(source), target, layout="csv", progress=False)
    again = ingest(str(source), target, layout="csv", progress=False)
    assert again.unchanged and again.version == first.version and "unchanged" in again.summary()
    assert list_versions(target) == [first.version]

    label_file = source / "labels" / "train_1.csv"
    lines = label_file.read_text().splitlines()
    lines[1] = "0.00,0.5,0.5"
    label_file.write_text("\n".join(lines) + "\n")
    second = ingest(str(source), target, layout="csv", progress=False)
    assert not second.unchanged and second.content_hash != first.content_hash
    assert list_versions(target) == [first.version, second.version]
    assert read_corpus(target).videos[0].arousal[0] == np.float32(0.5)
    old = read_corpus(target, version=first.version)
    assert old.videos[0].arousal[0] != np.float32(0.5)
    assert dataset_info(target, version=first.version).content_hash == first.content_hash


def test_a_writer_failing_mid_write_leaves_no_visible_version(tmp_path, monkeypatch):
    target = str(tmp_path / "dataset")
    first = ingest(str(DATA / "avec2016"), target, layout="avec2016", progress=False)
    source = _copy("avec2016", tmp_path)
    for video_id in ("dev_1", "train_1"):  # two changed videos: the first file is complete when the second fails
        arff = source / "features_video_geometric" / f"{video_id}.arff"
        lines = arff.read_text().splitlines()
        data_at = lines.index("@data") + 1
        lines[data_at] = f"{video_id},0.00,0.25,0.25"
        arff.write_text("\n".join(lines) + "\n")

    real_add = delta.FileWriter.add
    calls = []

    def failing_add(self, table, entry):
        calls.append(entry.video_id)
        if len(calls) == 2:
            raise OSError("disk unplugged")
        return real_add(self, table, entry)

    monkeypatch.setattr(delta.FileWriter, "add", failing_add)
    with pytest.raises(AffectError, match="nothing was published"):
        ingest(str(source), target, layout="avec2016", progress=False, target_file_bytes=1)
    assert list_versions(target) == [first.version]
    assert_same_corpus(read_corpus(target), read_source(str(DATA / "avec2016"), "avec2016"))
    assert len(list(Path(target).rglob("*.parquet"))) == 3, "the failed writer's files were left behind"


def test_a_killed_writer_leaves_no_visible_version(tmp_path):
    """A hard kill (no cleanup, no exception handling) after some files: the half-written version stays
    invisible."""
    target = tmp_path / "dataset"
    first = ingest(str(DATA / "csv"), str(target), layout="csv", progress=False)
    source = _copy("csv", tmp_path)
    (source / "labels" / "dev_1.csv").unlink()  # changed input, so a new version would be written
    script = textwrap.dedent(
        f"""
        import os
        from affect_core.data import dataset as ds
        from affect_core.data import delta
        def killed(*args, **kwargs):
            os._exit(9)  # every file is uploaded, the commit never happens
        delta.commit = killed
        ds.ingest({str(source)!r}, {str(target)!r}, layout="csv", progress=False, target_file_bytes=1)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=120)
    assert run.returncode == 9
    assert len(list(target.rglob("*.parquet"))) > 3  # the killed writer's files are there...
    assert list_versions(str(target)) == [first.version]  # ...but no reader sees them
    assert dataset_info(str(target)).version == first.version
    assert read_corpus(str(target)).videos[1].labelled
    retry = ingest(str(source), str(target), layout="csv", progress=False)
    assert list_versions(str(target)) == [first.version, retry.version]
    assert not read_corpus(str(target)).videos[1].labelled


def test_bare_parquet_features_url_is_readable_by_iter_videos(tmp_path):
    target = tmp_path / "dataset"
    ingest(str(DATA / "avec2016"), str(target), layout="avec2016", progress=False)
    features_dir = tmp_path / "features_copy"
    shutil.copytree(target, features_dir, ignore=shutil.ignore_patterns("_delta_log"))
    videos = list(iter_videos(str(features_dir)))
    reference = read_corpus(str(target))
    assert [v.video_id for v in videos] == ["dev_1", "test_1", "train_1"]  # directory order
    by_id = {v.video_id: v for v in videos}
    for video in reference.videos:
        np.testing.assert_array_equal(by_id[video.video_id].features, video.features)
        assert by_id[video.video_id].fps == 25.0
    single = list(iter_videos(str(next((features_dir / "split=train").glob("*.parquet")))))
    assert len(single) == 1 and single[0].video_id == "train_1" and single[0].split == "train"
    geometric = list(iter_videos(str(features_dir), feature_set="geometric", splits=["dev"]))
    assert [v.video_id for v in geometric] == ["dev_1"] and geometric[0].features.shape == (6, 2)
    info = dataset_info(str(features_dir))
    assert info.version is None and sorted(info.videos) == ["dev", "test", "train"]


def test_one_file_with_many_videos_streams_video_by_video(tmp_path):
    corpus = read_source(str(DATA / "csv"), "csv")
    schema = ds.dataset_schema(corpus.feature_dim)
    table = pa.concat_tables([ds.video_table(v, schema) for v in corpus.videos])
    pa.parquet.write_table(table, tmp_path / "features.parquet", row_group_size=4)
    videos = list(iter_videos(str(tmp_path / "features.parquet")))
    assert [v.video_id for v in videos] == ["train_1", "dev_1", "test_1"]
    np.testing.assert_array_equal(videos[0].features, corpus.videos[0].features)
    assert videos[2].arousal is None and videos[0].fps == pytest.approx(25.0)


def affect(*args: str):
    """`affect ARGS` in this process; the result has exit_code, stdout and stderr."""
    from typer.testing import CliRunner

    from affect_cli.main import app

    return CliRunner().invoke(app, list(args))


def test_cli_ingest_prints_one_line(tmp_path):
    target = str(tmp_path / "dataset")
    first = affect("ingest", str(DATA / "csv"), target, "--layout", "csv", "--no-progress")
    assert first.exit_code == 0, first.output
    line = first.stdout.strip()
    assert line.startswith("ingested ") and "3 videos, 18 rows" in line and "MB/s" in line
    again = affect("ingest", str(DATA / "csv"), target, "--layout", "csv", "--no-progress")
    assert again.stdout.strip().startswith("unchanged")
    missing = affect("ingest", str(tmp_path / "missing"), target, "--layout", "csv", "--no-progress")
    assert missing.exit_code == 1
    err = missing.stderr.strip()
    assert err.count("\n") == 0 and "missing" in err and "does not exist" in err


def test_cli_ingest_says_which_folders_it_skipped_and_takes_the_face_threshold(tmp_path):
    from affect_core.synth import SynthConfig, write_corpus

    config = SynthConfig(videos_per_split=1, frames=40, appearance_dim=2, geometric_dim=2, lag_s=0.2)
    write_corpus(config, tmp_path / "release", "avec2016")
    (tmp_path / "release" / "recordings_video").mkdir()
    result = affect(
        "ingest", str(tmp_path / "release"), str(tmp_path / "dataset"), "--layout", "avec2016", "--no-progress"
    )
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "skipped folders not read by the avec2016 layout: recordings_video"
    assert lines[1].startswith("ingested ") and len(lines) == 2
    write_corpus(config.with_(fps=30.0), tmp_path / "openface", "openface")
    result = affect(
        "ingest",
        str(tmp_path / "openface"),
        str(tmp_path / "of"),
        "--layout",
        "openface",
        "--no-progress",
        "--min-face-confidence",
        "0.99",
    )
    assert result.stdout.startswith("ingested "), result.output
    faces = read_corpus(str(tmp_path / "of")).videos[0].features
    assert np.isnan(faces).all()  # the generated confidence is 0.98: below 0.99 no frame has a face


def test_cli_module_imports_nothing_heavy():
    heavy = ("pyarrow", "torch", "numpy", "ray", "prefect", "affect_core.data")
    code = f"import sys, affect_cli.cmd_ingest; print(*[m in sys.modules for m in {heavy!r}])"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["False"] * len(heavy), run.stderr


def test_three_layouts_of_one_generated_corpus_ingest_to_the_same_dataset(tmp_path):
    synth = pytest.importorskip("affect_core.synth")
    config = synth.SynthConfig(videos_per_split=2, frames=120, appearance_dim=5, geometric_dim=3, seed=7)
    generated = synth.generate_corpus(config)
    results, corpora = {}, {}
    for layout in ("avec2016", "csv", "parquet"):
        flat = synth.WriteOptions(flat=True)  # avec2016's flat variant: one version of each set, as csv/parquet
        synth.write_corpus(generated, tmp_path / layout, layout, options=flat)
        results[layout] = ingest(str(tmp_path / layout), str(tmp_path / f"ds_{layout}"), layout=layout, progress=False)
        corpora[layout] = read_corpus(str(tmp_path / f"ds_{layout}"))
    for layout in ("csv", "parquet"):
        assert_same_corpus(corpora["avec2016"], corpora[layout])
    assert_same_corpus(corpora["avec2016"], generated)
    # avec2016 and parquet both record the feature sets; csv has one "features" set, so only its sets differ.
    assert results["avec2016"].content_hash == results["parquet"].content_hash
    assert corpora["avec2016"].metadata["affect.feature_sets"] == corpora["parquet"].metadata["affect.feature_sets"]
    assert corpora["csv"].feature_set == "features"
    tables = {
        layout: delta_rows(tmp_path / f"ds_{layout}")
        .sort_by([("video_id", "ascending"), ("frame", "ascending")])
        .replace_schema_metadata(None)
        for layout in corpora
    }
    for layout in ("csv", "parquet"):
        assert tables[layout].schema == tables["avec2016"].schema
        for name in ("video_id", "split", "frame", "time_s"):
            assert tables[layout].column(name).equals(tables["avec2016"].column(name))
        for name in ("features", "arousal", "valence"):  # NaN == NaN here (frames without a face)
            a = tables[layout].column(name).combine_chunks()
            b = tables["avec2016"].column(name).combine_chunks()
            if name == "features":
                a, b = a.flatten(), b.flatten()
            np.testing.assert_array_equal(a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False))


@pytest.mark.services
def test_ingest_and_read_back_on_s3(request):
    try:
        server = request.getfixturevalue("s3_server")
        url = request.getfixturevalue("s3_url")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py provides no s3_server fixture")
    options = server.storage_options()
    result = ingest(str(DATA / "avec2016"), url, layout="avec2016", storage_options=options, progress=False)
    assert list_versions(url, storage_options=options) == [result.version]
    assert_same_corpus(read_corpus(url, storage_options=options), read_source(str(DATA / "avec2016"), "avec2016"))
    assert ingest(str(DATA / "avec2016"), url, layout="avec2016", storage_options=options, progress=False).unchanged
    streamed = list(iter_videos(url, splits=["dev"], storage_options=options))
    assert [v.video_id for v in streamed] == ["dev_1"]
    pinned = list(iter_videos(f"{url}@{result.version}", storage_options=options))
    assert sorted(v.video_id for v in pinned) == ["dev_1", "test_1", "train_1"]
