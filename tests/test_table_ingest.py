"""Ingest video by video: the source listed once and grouped by video, each video read alone with the layout
readers, cross-video checks as an aggregate; parallel ingest on Ray re-reads only changed files and writes only
changed videos."""

from __future__ import annotations

import time

import pytest
from corpus_checks import assert_same_corpus, change_one_value, make_source, touch

from affect_core.data import dataset as ds
from affect_core.data import source_videos as sv
from affect_core.data.dataset import ingestion
from affect_core.data.readers import read_source
from affect_core.errors import AffectError


@pytest.mark.parametrize("layout", ["csv", "avec2016"])
def test_videos_read_one_by_one_equal_the_whole_corpus(tmp_path, layout):
    root = make_source(tmp_path / "src", layout)
    whole = read_source(str(root), layout)
    items = sv.list_source_videos(str(root), layout)
    assert [(i.video_id, i.split) for i in items] == [(v.video_id, v.split) for v in whole.videos]
    reads = [sv.read_source_video(str(root), layout, item) for item in items]
    header = sv.check_consistent(reads, str(root))
    assert header.feature_names == whole.feature_names and header.fps == whole.fps
    for read, video in zip(reads, whole.videos, strict=True):
        assert_same_corpus(
            type(whole)([read.video], read.feature_names, read.fps),
            type(whole)([video], whole.feature_names, whole.fps),
        )
        assert read.source_bytes == sum(size for size, _ in items[reads.index(read)].files.values()) > 0


def test_a_bad_file_is_named_by_its_source_path_and_a_disagreeing_video_is_refused(tmp_path):
    root = make_source(tmp_path / "src")
    items = {i.video_id: i for i in sv.list_source_videos(str(root), "csv")}
    bad = root / "features" / "dev_2.csv"
    lines = bad.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",oops"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(AffectError) as caught:
        sv.read_source_video(str(root), "csv", items["dev_2"])
    assert str(root / "features" / "dev_2.csv") in str(caught.value) and "memory://" not in str(caught.value)
    narrow = root / "features" / "dev_1.csv"
    text = narrow.read_text().splitlines()
    narrow.write_text("\n".join(",".join(line.split(",")[:-1]) for line in text) + "\n")
    first = sv.read_source_video(str(root), "csv", items["train_1"])
    other = sv.read_source_video(str(root), "csv", items["dev_1"])
    with pytest.raises(AffectError, match="video 'dev_1': feature dimension 4 differs from 5"):
        sv.check_consistent([first, other], str(root))


def test_a_fingerprint_changes_with_a_file_and_nothing_else(tmp_path):
    root = make_source(tmp_path / "src")
    before = {i.video_id: i.fingerprint for i in sv.list_source_videos(str(root), "csv")}
    path = root / "labels" / "train_2.csv"
    touch(path)
    after = {i.video_id: i.fingerprint for i in sv.list_source_videos(str(root), "csv")}
    assert [v for v in before if before[v] != after[v]] == ["train_2"]


def test_a_single_file_layout_cannot_be_split(tmp_path):
    """The parquet layout keeps every video in one features.parquet: it is never listed per file (so Ray tasks,
    which read a video's files each, cannot take it; single-process ingest streams the file in chunks instead:
    tests/test_ingest_streaming.py), while the same corpus in the per-file csv layout is."""
    single_file = make_source(tmp_path / "parquet", "parquet")
    assert (single_file / "features.parquet").is_file()
    assert not sv.splittable(str(single_file), "parquet")
    with pytest.raises(AffectError, match="holds all videos in one file"):
        sv.list_source_videos(str(single_file), "parquet")
    per_file = make_source(tmp_path / "csv", "csv")
    assert sv.splittable(str(per_file), "csv")


@pytest.mark.slow
def test_parallel_ingest_on_ray_reads_and_writes_only_what_changed(tmp_path):
    from tuning import ingest as parallel
    from tuning.cluster import ensure_ray

    ensure_ray(num_cpus=2)
    root = make_source(tmp_path / "src", videos_per_split=3)
    url = str(tmp_path / "ds")
    first = parallel.ingest(str(root), url, layout="csv", target_file_bytes=30_000)
    assert not first.unchanged and first.videos == 9 and first.videos_written == 9
    assert_same_corpus(ds.read_corpus(url), read_source(str(root), "csv"))
    assert ds.dataset_info(url).content_hash == ds.content_hash(read_source(str(root), "csv"))

    again = parallel.ingest(str(root), url, layout="csv")
    assert again.unchanged and again.version == first.version
    assert again.source_bytes == 0, "a no-op re-ingest read source files"

    path = change_one_value(root / "features" / "test_3.csv")
    time.sleep(0.01)
    changed = parallel.ingest(str(root), url, layout="csv", target_file_bytes=30_000)
    assert not changed.unchanged and changed.version == "1"
    assert 1 <= changed.videos_written < 9 and changed.source_bytes == path.stat().st_size
    assert_same_corpus(ds.read_corpus(url), read_source(str(root), "csv"))


def test_a_no_op_reingest_reads_no_file_and_a_touched_file_is_read_but_not_written(ingested_source, monkeypatch):
    url, first = ingested_source.url, ingested_source.first

    def no_reading(*args, **kwargs):
        raise AssertionError("the source was read")

    with monkeypatch.context() as patch:
        patch.setattr(ingestion, "read_source", no_reading)
        again = ingested_source.ingest()
    assert again.unchanged and again.version == first.version and again.source_bytes == 0
    assert again.content_hash == first.content_hash

    touched = ingested_source.touch_and_reingest("features/dev_1.csv")  # same bytes, new time: read, hash, no write
    assert touched.unchanged and touched.source_bytes > 0 and ds.list_versions(url) == ["0"]
    other = ingested_source.ingest(feature_set="features", fps=25.0)
    assert other.source_bytes > 0  # other options: the recorded stamps do not apply


@pytest.mark.slow
def test_parallel_and_single_process_ingest_give_the_same_dataset_and_share_the_stamp_cache(tmp_path):
    from tuning import ingest as parallel
    from tuning.cluster import ensure_ray

    ensure_ray(num_cpus=2)
    root = make_source(tmp_path / "src", "avec2016")
    (root / "recordings_audio").mkdir()
    serial_url, ray_url = str(tmp_path / "serial"), str(tmp_path / "ray")
    serial = ds.ingest(str(root), serial_url, layout="avec2016", progress=False)
    on_ray = parallel.ingest(str(root), ray_url, layout="avec2016")
    fields = ("content_hash", "rows", "videos", "videos_written", "source_bytes", "notes")
    assert [getattr(on_ray, f) for f in fields] == [getattr(serial, f) for f in fields]
    assert ds.dataset_info(ray_url).metadata == ds.dataset_info(serial_url).metadata

    path = root / "features_video_appearance" / "arousal" / "dev_1.arff"
    touch(path)  # same bytes, new time
    dev_1 = sum(p.stat().st_size for p in root.rglob("dev_1.*"))
    for ingest, url in ((parallel.ingest, ray_url), (ds.ingest, serial_url)):
        touched = ingest(str(root), url, layout="avec2016")
        assert touched.unchanged and touched.source_bytes == dev_1 and ds.list_versions(url) == ["0"]
        again = ingest(str(root), url, layout="avec2016")
        assert again.unchanged and again.source_bytes == 0 and again.content_hash == serial.content_hash
