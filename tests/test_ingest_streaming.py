"""Single-process ingest of a per-video source streams: each video is read, hashed and checked, then dropped (a small
cache of the last read keeps a small corpus from being read twice), and write_videos reads again only what it writes.
A touched but unchanged file is read once: the stamp cache beside the table (outside the versions) vouches for it
afterwards, survives vacuum, and costs only re-reading when lost or corrupt. Parallel ingest (Ray) is compared with
this in tests/test_table_ingest.py."""

from __future__ import annotations

import os
import weakref
from collections import Counter
from pathlib import Path

import pytest
from corpus_checks import assert_same_corpus, change_one_value, make_source, touch
from typer.testing import CliRunner

from affect_core import storage
from affect_core.data import dataset as ds
from affect_core.data import delta
from affect_core.data import source_videos as sv
from affect_core.data.dataset import by_video, ingestion, single_file
from affect_core.data.readers import read_source

LAYOUTS = ("avec2016", "csv", "openface", "muse")


class ReadProbe:
    """Counts the videos read from the source (per video id) and the Video objects alive at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: Counter[str] = Counter()
        self.alive = 0
        self.peak = 0
        original = sv.read_source_video

        def counted(*args, **kwargs):
            read = original(*args, **kwargs)
            self.reads[read.video.video_id] += 1
            self.alive += 1
            self.peak = max(self.peak, self.alive)
            weakref.finalize(read.video, self._gone)
            return read

        monkeypatch.setattr(sv, "read_source_video", counted)

    def _gone(self) -> None:
        self.alive -= 1

    def reset(self) -> None:
        self.reads.clear()


def video_bytes(root: Path, video_id: str) -> int:
    return sum(p.stat().st_size for p in root.rglob(f"{video_id}.*") if p.is_file())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_streamed_ingest_gives_what_the_whole_corpus_read_gives(tmp_path, layout, monkeypatch):
    root = make_source(tmp_path / "src", layout)
    if layout == "avec2016":
        (root / "recordings_video").mkdir()  # skipped, with a note
    if layout == "muse":
        (root / "label_segments" / "physio-arousal").mkdir()
        (root / "label_segments" / "physio-arousal" / "train_1.csv").write_bytes(
            (root / "label_segments" / "arousal" / "train_1.csv").read_bytes()
        )
    probe = ReadProbe(monkeypatch)
    streamed = ds.ingest(str(root), str(tmp_path / "streamed"), layout=layout, progress=False)
    assert sorted(probe.reads) == sorted(v.video_id for v in read_source(str(root), layout).videos)
    with monkeypatch.context() as patch:
        patch.setattr(sv, "splittable", lambda *args, **kwargs: False)
        whole = ds.ingest(str(root), str(tmp_path / "whole"), layout=layout, progress=False)
    fields = ("version", "content_hash", "unchanged", "rows", "videos", "videos_written", "files_written", "notes")
    assert [getattr(streamed, f) for f in fields] == [getattr(whole, f) for f in fields]
    assert streamed.notes if layout in ("avec2016", "muse") else not streamed.notes
    # Bytes of the videos' files: the whole read counts the partition table besides.
    partition = {"avec2016": None, "muse": "metadata/partition.csv"}.get(layout, "partition.csv")
    assert whole.source_bytes - streamed.source_bytes == ((root / partition).stat().st_size if partition else 0)
    assert ds.dataset_info(streamed.dataset_url).metadata == ds.dataset_info(whole.dataset_url).metadata
    assert_same_corpus(ds.read_corpus(streamed.dataset_url), ds.read_corpus(whole.dataset_url))


def test_a_small_corpus_is_read_once(tmp_path, monkeypatch):
    root = make_source(tmp_path / "src", videos_per_split=3)
    probe = ReadProbe(monkeypatch)
    result = ds.ingest(str(root), str(tmp_path / "ds"), layout="csv", progress=False, target_file_bytes=30_000)
    assert result.videos_written == result.videos == 9
    assert set(probe.reads.values()) == {1} and len(probe.reads) == 9
    assert result.content_hash == ds.content_hash(read_source(str(root), "csv"))


def test_with_a_tiny_cache_a_few_videos_are_held_at_once(tmp_path, monkeypatch):
    root = make_source(tmp_path / "src", videos_per_split=4)
    monkeypatch.setattr(by_video, "READ_CACHE_BYTES", 1)
    probe = ReadProbe(monkeypatch)
    result = ds.ingest(str(root), str(tmp_path / "ds"), layout="csv", progress=False, target_file_bytes=30_000)
    assert result.videos_written == 12
    assert set(probe.reads.values()) == {2}, "each video is read to be checked, and again to be written"
    assert probe.peak <= 2 and probe.alive == 0
    assert_same_corpus(ds.read_corpus(str(tmp_path / "ds")), read_source(str(root), "csv"))


def test_a_touched_file_is_read_once_then_the_stamp_cache_vouches_for_it(ingested_source, monkeypatch):
    root, url, first = ingested_source.root, ingested_source.url, ingested_source.first
    probe = ReadProbe(monkeypatch)
    touched = ingested_source.touch_and_reingest("features/dev_1.csv")
    assert dict(probe.reads) == {"dev_1": 1}
    assert touched.unchanged and touched.version == first.version and ds.list_versions(url) == ["0"]
    assert touched.source_bytes == video_bytes(root, "dev_1") and touched.content_hash == first.content_hash
    assert (Path(url) / sv.STAMP_CACHE).is_file()

    probe.reset()
    monkeypatch.setattr(ingestion, "read_source", lambda *a, **k: pytest.fail("the source was read whole"))
    again = ingested_source.ingest()
    assert not probe.reads and again.unchanged and again.source_bytes == 0
    assert (again.version, again.content_hash, again.rows) == (first.version, first.content_hash, first.rows)


def test_a_changed_video_writes_a_version_with_only_its_file(tmp_path, monkeypatch):
    root = make_source(tmp_path / "src", videos_per_split=3)
    url = str(tmp_path / "ds")
    ds.ingest(str(root), url, layout="csv", progress=False, target_file_bytes=1)  # a file per video
    touch(root / "labels" / "train_2.csv")
    ds.ingest(str(root), url, layout="csv", progress=False)  # the stamp cache now vouches for train_2
    loc = storage.resolve(url)
    before = {f.path for f in delta.snapshot(loc).files}
    probe = ReadProbe(monkeypatch)
    path = change_one_value(root / "features" / "test_3.csv")
    changed = ds.ingest(str(root), url, layout="csv", progress=False, target_file_bytes=1)
    assert dict(probe.reads) == {"test_3": 1}  # not train_2, which the stamp cache vouches for
    assert not changed.unchanged and changed.version == "1"
    assert (changed.videos_written, changed.files_written) == (1, 1)
    assert changed.source_bytes == path.stat().st_size
    added = [f for f in delta.snapshot(loc).files if f.path not in before]
    assert [e.video_id for f in added for e in f.entries()] == ["test_3"]
    assert_same_corpus(ds.read_corpus(url), read_source(str(root), "csv"))
    probe.reset()
    assert ds.ingest(str(root), url, layout="csv", progress=False).unchanged and not probe.reads


def test_the_stamp_cache_survives_vacuum_and_a_lost_or_corrupt_one_costs_only_rereading(ingested_source, monkeypatch):
    from affect_cli.main import app

    root, url = ingested_source.root, ingested_source.url
    (root / "labels" / "train_1.csv").unlink()  # a second version, so that vacuum has an old file to delete
    ingested_source.ingest()
    ingested_source.touch_and_reingest("features/dev_2.csv")
    cache = Path(url) / sv.STAMP_CACHE
    written = cache.read_bytes()
    result = CliRunner().invoke(app, ["vacuum", url, "--retain-hours", "0"])
    assert result.exit_code == 0, result.output
    assert cache.read_bytes() == written
    versions = ds.list_versions(url)  # vacuum's own commits among them
    probe = ReadProbe(monkeypatch)
    assert ingested_source.ingest().unchanged and not probe.reads

    for damage in (lambda: cache.write_bytes(b"not parquet"), cache.unlink):
        damage()
        probe.reset()
        again = ingested_source.ingest()
        assert dict(probe.reads) == {"dev_2": 1} and again.unchanged and ds.list_versions(url) == versions
        assert cache.read_bytes() and sv.read_stamp_cache(storage.resolve(url))
        probe.reset()
        assert ingested_source.ingest().unchanged and not probe.reads


def test_a_stale_stamp_cache_entry_does_not_vouch_for_other_content(ingested_source, monkeypatch):
    root, url = ingested_source.root, ingested_source.url
    path = root / "features" / "dev_1.csv"
    original = path.read_bytes()
    ingested_source.touch_and_reingest("features/dev_1.csv")
    touched_ns = path.stat().st_mtime_ns
    cache = Path(url) / sv.STAMP_CACHE
    stale = cache.read_bytes()  # vouches for dev_1 at this stamp with version 0's content
    change_one_value(path, line=3)
    assert ingested_source.ingest().version == "1"
    assert not cache.exists(), "the new version records dev_1's new stamp: nothing left to cache"
    cache.parent.mkdir(exist_ok=True)
    cache.write_bytes(stale)
    path.write_bytes(original)  # version 0's content again, under the stamp the stale entry names
    os.utime(path, ns=(touched_ns, touched_ns))
    probe = ReadProbe(monkeypatch)
    back = ingested_source.ingest()
    assert dict(probe.reads) == {"dev_1": 1} and not back.unchanged and back.version == "2"
    assert_same_corpus(ds.read_corpus(url), read_source(str(root), "csv"))


@pytest.mark.services
def test_the_stamp_cache_on_s3(s3_server, s3_url, tmp_path, monkeypatch):
    """The cache beside a table on S3: written in one put, read back, vouching as on a local disk."""
    options = s3_server.storage_options()
    root = make_source(tmp_path / "src")
    first = ds.ingest(str(root), s3_url, layout="csv", storage_options=options, progress=False)
    touch(root / "features" / "train_2.csv")
    probe = ReadProbe(monkeypatch)
    touched = ds.ingest(str(root), s3_url, layout="csv", storage_options=options, progress=False)
    assert dict(probe.reads) == {"train_2": 1} and touched.unchanged
    loc = storage.resolve(s3_url, options)
    assert set(sv.read_stamp_cache(loc)) == {"train_2"}
    probe.reset()
    again = ds.ingest(str(root), s3_url, layout="csv", storage_options=options, progress=False)
    assert not probe.reads and again.unchanged and again.content_hash == first.content_hash
    assert ds.list_versions(s3_url, storage_options=options) == ["0"]


# ------------------------------------------------------------------------------------- a source in one table file
def streamed_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if ingest falls back to reading the source whole."""
    monkeypatch.setattr(ingestion, "read_source", lambda *a, **k: pytest.fail("the source was read whole"))


def test_a_single_file_source_yields_videos_before_the_whole_file_is_read(tmp_path, monkeypatch):
    root = make_source(tmp_path / "src", "parquet", videos_per_split=3)  # 9 videos x 80 rows in features.parquet
    monkeypatch.setattr(single_file, "CHUNK_ROWS", 50)
    converted: list[int] = []
    real = single_file.arrow_file_table

    def counted(table, *args, **kwargs):
        converted.append(table.num_rows)
        return real(table, *args, **kwargs)

    monkeypatch.setattr(single_file, "arrow_file_table", counted)
    plan = single_file.table_file_plan(sv.SourceRequest(str(root), "parquet"))
    assert not converted, "planning reads nothing but the partition table"
    summaries = plan.reader.read(plan.videos)
    first = next(summaries)
    assert first.video_id == "train_1" and first.frames == 80
    assert sum(converted) <= 2 * 2 * 50, "the first video came after at most two chunks of each file"
    rest = list(summaries)
    assert sorted(s.video_id for s in [first, *rest]) == sorted(item.video_id for item in plan.videos)
    labelled_rows = 6 * 80  # train and dev
    assert sum(converted) == 9 * 80 + labelled_rows and max(converted) == 50  # every row once, 50 at a time


def test_a_single_file_source_is_streamed_to_what_the_whole_read_gives(tmp_path, monkeypatch):
    root = make_source(tmp_path / "src", "parquet", videos_per_split=3)
    monkeypatch.setattr(single_file, "CHUNK_ROWS", 50)
    monkeypatch.setattr(single_file, "MEMORY_CACHE_BYTES", 1)  # every video waits for the write on disk
    with monkeypatch.context() as patch:
        streamed_only(patch)
        streamed = ds.ingest(str(root), str(tmp_path / "streamed"), layout="parquet", progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(ingestion, "single_table", lambda *args, **kwargs: False)
        whole = ds.ingest(str(root), str(tmp_path / "whole"), layout="parquet", progress=False)
    fields = ("version", "content_hash", "unchanged", "rows", "videos", "videos_written", "files_written", "notes")
    assert [getattr(streamed, f) for f in fields] == [getattr(whole, f) for f in fields]
    assert whole.source_bytes - streamed.source_bytes == (root / "partition.parquet").stat().st_size
    assert ds.dataset_info(streamed.dataset_url).metadata == ds.dataset_info(whole.dataset_url).metadata
    assert_same_corpus(ds.read_corpus(streamed.dataset_url), ds.read_corpus(whole.dataset_url))

    # Unchanged files: nothing is read; a changed file: every video is read, only the changed one written.
    monkeypatch.setattr(single_file, "arrow_file_table", lambda *a, **k: pytest.fail("the file was read"))
    again = ds.ingest(str(root), streamed.dataset_url, layout="parquet", progress=False)
    assert again.unchanged and again.source_bytes == 0
    monkeypatch.undo()
    import pyarrow.parquet as pq

    table = pq.read_table(root / "labels.parquet")
    valence = table.column("valence").to_pylist()
    valence[3] = 0.5 if valence[3] != 0.5 else 0.25  # a label of the first video
    pq.write_table(
        table.set_column(table.schema.get_field_index("valence"), "valence", [valence]), root / "labels.parquet"
    )
    with monkeypatch.context() as patch:
        streamed_only(patch)
        changed = ds.ingest(str(root), streamed.dataset_url, layout="parquet", progress=False)
    assert not changed.unchanged and changed.version == "1"
    assert changed.videos_written == 3, "the train split's file: the changed video and the others it held"
    assert_same_corpus(ds.read_corpus(streamed.dataset_url), read_source(str(root), "parquet"))


@pytest.mark.parametrize("reorder", ["features", "labels"])
def test_rows_the_stream_cannot_take_are_read_whole(tmp_path, monkeypatch, reorder):
    """A video's rows split in two places of features.parquet, or labels.parquet in another video order: the
    streamed read gives up and the whole read (which takes rows in any order) ingests the same videos."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = make_source(tmp_path / "src", "parquet")
    name = f"{reorder}.parquet"
    table = pq.read_table(root / name)
    if reorder == "features":  # the first video's last rows moved to the end of the file
        table = pa.concat_tables([table.slice(0, 60), table.slice(80), table.slice(60, 20)])
    else:  # the labelled videos in reverse order
        ids = table.column("video_id").to_pylist()
        order = sorted(range(len(ids)), key=lambda row: (-sorted(set(ids)).index(ids[row]), row))
        table = table.take(order)
    pq.write_table(table, root / name)
    whole_reads = Counter()
    real = ingestion.read_source

    def counted(*args, **kwargs):
        whole_reads["whole"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(ingestion, "read_source", counted)
    result = ds.ingest(str(root), str(tmp_path / "ds"), layout="parquet", progress=False)
    assert whole_reads["whole"] == 1 and result.videos == 6
    assert_same_corpus(ds.read_corpus(result.dataset_url), read_source(str(root), "parquet"))


def test_the_spill_gives_back_each_video_exactly(tmp_path):
    import numpy as np

    from affect_core.data.records import Video

    rng = np.random.default_rng(0)
    features = rng.normal(size=(7, 3)).astype(np.float32)
    features[2] = np.nan
    videos = [
        Video("train_1", "train", features, np.arange(7) / 25.0, 25.0, arousal=rng.normal(size=7).astype(np.float32)),
        Video("dev_1", "dev", features[:4], np.arange(4) / 25.0, 25.0, ratings={"arousal/r1": np.ones(4, np.float32)}),
        Video("test_1", "test", features[:1], np.zeros(1), 25.0),
    ]
    cache = single_file.SpillingCache(1)
    for video in videos:
        cache.keep(video)
    for video in reversed(videos):
        back = cache.take(video.video_id)
        assert back is not None and back is not video
        assert ds.video_hash(back) == ds.video_hash(video)  # ids, split, times, features, labels, ratings
        assert (back.fps, back.arousal is None, back.ratings is None) == (
            video.fps,
            video.arousal is None,
            video.ratings is None,
        )
    assert cache.take("train_1") is None
    cache.close()
