"""Dataset tables: files of many whole videos (object count grows with bytes, not videos), row groups aligned to
videos, versions pinned by URL@VERSION, incremental re-ingest, vacuum, migration of the earlier per-video layout, and
the `affect info` / `affect export` commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from corpus_checks import assert_same_corpus
from typer.testing import CliRunner

from affect_cli.main import app
from affect_core import storage
from affect_core.data import dataset as ds
from affect_core.data import delta
from affect_core.data.readers import read_source
from affect_core.errors import AffectError
from affect_core.synth import SynthConfig, write_corpus


def make_source(root: Path, videos_per_split: int, frames: int = 100, seed: int = 3) -> Path:
    write_corpus(
        SynthConfig(videos_per_split=videos_per_split, frames=frames, appearance_dim=6, geometric_dim=4, seed=seed),
        root,
        "csv",
    )
    return root


def data_files(url: Path) -> list[Path]:
    return sorted(p for p in url.rglob("*.parquet") if "_delta_log" not in p.parts)


def test_object_count_grows_with_bytes_not_videos(tmp_path):
    """Ten times the videos of the same length at one target file size: ten times the bytes; files grow with the
    bytes (never one per video), and each file holds whole videos in order."""
    counts = {}
    for n in (4, 40):
        source = make_source(tmp_path / f"src{n}", n)
        url = tmp_path / f"ds{n}"
        ds.ingest(str(source), str(url), layout="csv", progress=False, target_file_bytes=40_000, row_group_rows=400)
        info = ds.dataset_info(str(url))
        files = data_files(url)
        assert len(files) == info.files
        counts[n] = (len(files), info.bytes, sum(len(v) for v in info.videos.values()))
        for path in files:
            ids = pq.read_table(path, columns=["video_id"]).column("video_id").to_pylist()
            runs = [ids[0]] + [b for a, b in zip(ids, ids[1:], strict=False) if a != b]
            assert len(runs) == len(set(runs)), f"{path}: a video's rows are not contiguous"
    (small_files, small_bytes, small_videos), (big_files, big_bytes, big_videos) = counts[4], counts[40]
    assert big_videos == 10 * small_videos
    assert big_files < big_videos / 4, "about one file per video"
    per_file_small, per_file_big = small_bytes / small_files, big_bytes / big_files
    assert big_files > small_files and per_file_big > per_file_small  # more bytes: more and fuller files


def test_one_video_is_read_from_its_row_group_without_the_rest_of_its_file(tmp_path, monkeypatch):
    source = make_source(tmp_path / "src", 12)
    url = tmp_path / "ds"
    ds.ingest(str(source), str(url), layout="csv", progress=False, row_group_rows=250)
    path = data_files(url)[0]
    metadata = pq.read_metadata(path)
    assert metadata.num_row_groups > 1
    index = delta.decode_index(metadata.metadata[b"affect.video_index"], str(path)).to_pylist()  # the footer's index
    for entry in index:  # every video lies in one row group, whole
        group = pq.ParquetFile(path).read_row_group(entry["row_group"], columns=["video_id"])
        assert group.column("video_id").to_pylist().count(entry["video_id"]) == entry["frames"]
    groups_read = []
    real = delta.TableFile.read

    def spy(self, row_groups, columns=None):
        groups_read.append((self.path, list(row_groups)))
        return real(self, row_groups, columns)

    monkeypatch.setattr(delta.TableFile, "read", spy)
    wanted = index[-1]["video_id"]
    video = next(ds.iter_videos(str(url), video_ids=[wanted]))
    assert video.video_id == wanted and video.num_frames == index[-1]["frames"]
    assert groups_read == [(str(path.relative_to(url)), [index[-1]["row_group"]])]


def test_reingest_writes_only_the_changed_video_and_versions_stay_readable(tmp_path):
    source = make_source(tmp_path / "src", 6)
    url = str(tmp_path / "ds")
    first = ds.ingest(str(source), url, layout="csv", progress=False, target_file_bytes=60_000)
    assert first.videos_written == first.videos
    files_before = set(data_files(Path(url)))
    assert ds.ingest(str(source), url, layout="csv", progress=False).unchanged
    lines = (source / "features" / "dev_2.csv").read_text().splitlines()
    cells = lines[1].split(",")
    cells[-1] = "0.125" if cells[-1] != "0.125" else "0.25"
    lines[1] = ",".join(cells)
    (source / "features" / "dev_2.csv").write_text("\n".join(lines) + "\n")
    second = ds.ingest(str(source), url, layout="csv", progress=False, target_file_bytes=60_000)
    assert not second.unchanged and second.version == "1"
    new_files = set(data_files(Path(url))) - files_before
    videos_in_new = {
        v
        for p in new_files
        for v in delta.decode_index(pq.read_metadata(p).metadata[b"affect.video_index"], str(p))
        .column("video_id")
        .to_pylist()
    }
    assert "dev_2" in videos_in_new
    assert videos_in_new < {f"{s}_{i}" for s in ("train", "dev", "test") for i in range(1, 7)}, "rewrote the corpus"
    assert second.videos_written == len(videos_in_new) and second.videos_written < first.videos / 2
    assert_same_corpus(ds.read_corpus(url), read_source(str(source), "csv"))
    old = ds.read_corpus(f"{url}@0")
    assert (
        old.metadata["version"] == "0"
        and ds.read_corpus(url, version=0).videos[3].features[0, 0] == old.videos[3].features[0, 0]
    )
    assert ds.dataset_info(url, version="0").content_hash == first.content_hash
    assert ds.list_versions(url) == ["0", "1"]
    with pytest.raises(AffectError, match="no version 7"):
        ds.read_corpus(f"{url}@7")
    with pytest.raises(AffectError, match="not a table version"):
        ds.dataset_info(url, version="latest-ish")


def test_vacuum_removes_what_only_old_versions_need(tmp_path):
    source = make_source(tmp_path / "src", 3)
    url = str(tmp_path / "ds")
    ds.ingest(str(source), url, layout="csv", progress=False)
    (source / "labels" / "train_1.csv").unlink()
    ds.ingest(str(source), url, layout="csv", progress=False)
    before = data_files(Path(url))
    result = CliRunner().invoke(app, ["vacuum", url, "--retain-hours", "0", "--dry-run"])
    assert result.exit_code == 0 and "would delete 1 file" in result.output
    assert data_files(Path(url)) == before
    result = CliRunner().invoke(app, ["vacuum", url, "--retain-hours", "0"])
    assert result.exit_code == 0, result.output
    assert len(data_files(Path(url))) == len(before) - 1
    assert_same_corpus(ds.read_corpus(url), read_source(str(source), "csv"))


def write_legacy(corpus, url: Path) -> None:
    """A dataset in the earlier layout (docs/data_formats.md before tables): one file per video, a manifest."""
    metadata = ds.dataset_metadata(corpus, "sha256:x", "parquet", "src")
    metadata["affect.format"] = "affect-dataset/1"
    files = []
    for video in corpus.videos:
        relative = f"split={video.split}/video_id={video.video_id}/part-0.parquet"
        (url / "versions/v1" / relative).parent.mkdir(parents=True)
        table = ds.video_table(video, ds.dataset_schema(corpus.feature_dim, metadata))
        pq.write_table(table, url / "versions/v1" / relative)
        files.append({"path": relative, "video_id": video.video_id, "split": video.split, "rows": video.num_frames})
    manifest = {
        "format": "affect-dataset/1",
        "version": "v1",
        "data_path": "versions/v1",
        "rows": 0,
        "metadata": metadata,
        "files": files,
        "content_hash": "sha256:x",
    }
    (url / "_manifests").mkdir()
    (url / "_manifests" / "v1.json").write_text(json.dumps(manifest))


def test_migrate_converts_the_earlier_layout_in_place(tmp_path):
    corpus = read_source(str(make_source(tmp_path / "src", 3)), "csv")
    url = tmp_path / "old"
    write_legacy(corpus, url)
    with pytest.raises(AffectError, match="affect migrate"):
        ds.read_corpus(str(url))
    result = CliRunner().invoke(app, ["migrate", str(url)])
    assert result.exit_code == 0, result.output
    assert "migrated 9 video(s)" in result.output
    assert not (url / "_manifests").exists() and not (url / "versions").exists()
    assert_same_corpus(ds.read_corpus(str(url)), corpus)
    assert ds.dataset_info(str(url)).content_hash == ds.content_hash(corpus)


def test_info_stops_quietly_when_its_reader_goes_away(tmp_path):
    import subprocess
    import sys

    source = make_source(tmp_path / "src", 2)
    url = str(tmp_path / "ds")
    ds.ingest(str(source), url, layout="csv", progress=False)
    program = "from affect_cli.main import main; main()"
    # The pipe's reading end is closed before the command writes (as `affect info URL --json | head -1` does to a
    # long output): no traceback and no "storage failed" line, the status of a program stopped by SIGPIPE.
    process = subprocess.Popen(
        [sys.executable, "-c", program, "info", url, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141, stderr
    assert stderr == ""


def test_info_and_export(tmp_path):
    source = make_source(tmp_path / "src", 2)
    url = str(tmp_path / "ds")
    ds.ingest(str(source), url, layout="csv", progress=False)
    corpus = ds.read_corpus(url)
    runner = CliRunner()
    result = runner.invoke(app, ["info", url, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["version"] == 0 and info["files"] == len(data_files(Path(url)))
    assert info["bytes"] == sum(os.path.getsize(p) for p in data_files(Path(url)))
    assert info["feature_sets"] == {"features": 10}  # csv input holds one feature set
    expected = [
        {
            "video_id": v.video_id,
            "split": v.split,
            "frames": v.num_frames,
            "frames_without_face": int(np.isnan(v.features).all(axis=1).sum()),
        }
        for v in corpus.videos
    ]
    assert info["videos"] == expected and any(v["frames_without_face"] for v in expected)
    assert "train: 2 video(s)" in runner.invoke(app, ["info", url]).output

    assert runner.invoke(app, ["export", url, str(tmp_path / "all.parquet")]).exit_code == 0
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.num_rows == sum(v.num_frames for v in corpus.videos)
    assert table.column("video_id").to_pylist()[0] == corpus.videos[0].video_id
    result = runner.invoke(app, ["export", url, str(tmp_path / "all.csv"), "--per-video", str(tmp_path / "each")])
    assert result.exit_code == 0, result.output
    flat = pacsv.read_csv(tmp_path / "all.csv")
    assert flat.num_rows == table.num_rows and flat.column_names[4:14] == corpus.feature_names
    one = pacsv.read_csv(tmp_path / "each" / f"{corpus.videos[1].video_id}.csv")
    np.testing.assert_array_equal(
        np.column_stack([one.column(n).to_numpy() for n in corpus.feature_names]).astype(np.float32),
        corpus.videos[1].features,
    )
    assert sorted(os.listdir(tmp_path / "each")) == sorted(f"{v.video_id}.csv" for v in corpus.videos)
    bad = runner.invoke(app, ["export", url, str(tmp_path / "all.xlsx")])
    assert bad.exit_code == 1 and "expected .parquet or .csv" in bad.output
    assert not (tmp_path / "all.xlsx").exists()


def test_a_directory_that_is_not_a_table_is_refused(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("x")
    with pytest.raises(AffectError, match="not an affect dataset"):
        ds.ingest(str(make_source(tmp_path / "src", 1)), str(tmp_path / "ds"), layout="csv", progress=False)
    assert storage.list_dir(storage.resolve(str(tmp_path / "ds")).fs, str(tmp_path / "ds")) == [("notes.txt", "file")]


def test_workers_read_disjoint_parts_of_one_pinned_version(tmp_path):
    """Training workers: each its own shard (or part) of the same version, together every video once."""
    source = make_source(tmp_path / "src", 5)
    url = str(tmp_path / "ds")
    ds.ingest(str(source), url, layout="csv", progress=False, target_file_bytes=30_000, row_group_rows=300)
    everything = [v.video_id for v in ds.iter_videos(url, splits=["train", "dev"])]
    (source / "labels" / "train_1.csv").unlink()
    ds.ingest(str(source), url, layout="csv", progress=False)  # a newer version meanwhile: the pin holds
    reader = ds.DatasetReader(url, version=0, feature_set="features")
    shards = [[v.video_id for v in reader.videos(splits=["train", "dev"], shard=(i, 3))] for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(everything) and all(shards)
    assert next(reader.videos(video_ids=["train_1"])).labelled  # version 0 still has its labels
    parts = ds.video_parts(url, version=0, parts=4)
    assert sorted(sum(parts, [])) == sorted(v.video_id for v in ds.iter_videos(url, version=0))
    frames = [sum(v.num_frames for v in reader.videos(video_ids=p)) for p in parts]
    assert max(frames) <= 2 * min(frames)
    with pytest.raises(AffectError, match="shard 3 of 3"):
        list(reader.videos(shard=(3, 3)))


def _rows(video_id: str, split: str, frames: int) -> pa.Table:
    return pa.table(
        {
            "video_id": pa.array([video_id] * frames, pa.string()),
            "split": pa.array([split] * frames, pa.string()),
            "frame": pa.array(range(frames), pa.int32()),
        }
    )


def _write_file(loc, videos):
    writer = delta.FileWriter(loc, _rows("x", "train", 1).schema)
    files = []
    for video_id, split, frames in videos:
        entry = delta.VideoEntry(video_id, split, frames, hash=f"h-{video_id}")
        files += writer.add(_rows(video_id, split, frames), entry)
    return files + writer.close()


def test_a_version_streams_its_videos_in_order_across_files_without_an_object_per_video(tmp_path):
    import gc

    loc = storage.resolve(str(tmp_path / "t"))
    first = _write_file(loc, [("train_1", "train", 3), ("train_5", "train", 2), ("dev_2", "dev", 4)])
    second = _write_file(loc, [("train_2", "train", 1), ("train_10", "train", 5), ("dev_1", "dev", 2)])
    delta.commit(loc, _rows("x", "train", 1).schema, added=[*first, *second], read_version=None)
    snap = delta.snapshot(loc)
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is delta.VideoEntry]  # the index is Arrow columns
    assert snap.video_count == 6
    order = [(e.split, e.video_id) for e in snap.entries()]
    assert order == [
        ("train", "train_1"),
        ("train", "train_2"),
        ("train", "train_5"),
        ("train", "train_10"),
        ("dev", "dev_1"),
        ("dev", "dev_2"),
    ]
    assert [e.video_id for e in snap.entries(splits=["dev"])] == ["dev_1", "dev_2"]
    picked = snap.entries(video_ids=pa.array(["train_10", "dev_2", "nope"]))
    assert [(e.video_id, e.frames, e.hash) for e in picked] == [("train_10", 5, "h-train_10"), ("dev_2", 4, "h-dev_2")]
    assert sorted(snap.video_ids().to_pylist()) == sorted(v for _, v in order)
    assert snap.column_map("frames")["train_5"] == 2
    rows = [
        (e.video_id, t.num_rows)
        for e, t in delta.iter_entry_tables(loc, snap.entries(video_ids=["train_5", "train_10"]))
    ]
    assert rows == [("train_5", 2), ("train_10", 5)]


def test_a_table_file_refuses_videos_out_of_order(tmp_path):
    loc = storage.resolve(str(tmp_path / "t"))
    writer = delta.FileWriter(loc, _rows("x", "train", 1).schema)
    writer.add(_rows("train_2", "train", 1), delta.VideoEntry("train_2", "train", 1))
    with pytest.raises(AffectError, match="order"):
        writer.add(_rows("train_1", "train", 1), delta.VideoEntry("train_1", "train", 1))
    with pytest.raises(AffectError, match="order"):
        writer.add(_rows("train_2", "train", 1), delta.VideoEntry("train_2", "train", 1))
    writer.abort()


def test_the_first_release_footer_index_is_still_read(tmp_path):
    path = tmp_path / "old.parquet"
    table = pa.concat_tables([_rows("dev_1", "dev", 2), _rows("dev_3", "dev", 1)])
    old = [
        {"video_id": "dev_1", "split": "dev", "frames": 2, "row_group": 0, "hash": "h1", "frames_without_face": 1},
        {"video_id": "dev_3", "split": "dev", "frames": 1, "row_group": 0, "hash": "h3"},
    ]
    pq.write_table(table.replace_schema_metadata({"affect.videos": json.dumps(old)}), path)
    loc = storage.resolve(str(tmp_path))
    index = delta.read_footer_index(loc, delta.DataFile("old.parquet", "dev", path.stat().st_size))
    assert index.schema.equals(delta.INDEX_SCHEMA)
    assert index.column("video_id").to_pylist() == ["dev_1", "dev_3"]
    assert index.column("frames_without_face").to_pylist() == [1, 0]
    assert index.column("source").to_pylist() == ["", ""]


def test_a_split_s_file_closes_when_the_next_split_begins(tmp_path):
    """Videos come in split order: one file is open (one upload buffered) at a time, not one per split."""
    loc = storage.resolve(str(tmp_path / "t"))
    writer = delta.FileWriter(loc, _rows("x", "train", 1).schema)
    assert writer.add(_rows("train_1", "train", 2), delta.VideoEntry("train_1", "train", 2)) == []
    assert writer.add(_rows("train_2", "train", 2), delta.VideoEntry("train_2", "train", 2)) == []
    closed = writer.add(_rows("dev_1", "dev", 3), delta.VideoEntry("dev_1", "dev", 3))
    assert [(f.split, f.video_count, f.rows) for f in closed] == [("train", 2, 4)]
    assert [(f.split, f.video_count) for f in writer.close()] == [("dev", 1)]
