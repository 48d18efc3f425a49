"""Two writers into one table at the same moment, on the real SeaweedFS S3 server: one commits, the other re-plans
and commits after it (ingest) or stops with a clear error (scoring); the table is never corrupt or mixed.

Both writers are held at a barrier just before their commit, so the race happens every run: each has planned from
the same snapshot and uploaded its files when they commit together."""

from __future__ import annotations

import threading

import pytest
from test_scoring_table import bundle_for

from affect_core import scoring
from affect_core.data import dataset as ds
from affect_core.data import delta
from affect_core.errors import AffectError
from affect_core.storage import resolve
from affect_core.synth import SynthConfig, write_corpus


def race(monkeypatch, jobs):
    """Run ``jobs`` in threads whose first commits meet at a barrier; returns each job's result or exception."""
    barrier = threading.Barrier(len(jobs), timeout=60)
    real = delta.commit
    first = threading.local()

    def commit_together(*args, **kwargs):
        if not getattr(first, "done", False):
            first.done = True
            barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(delta, "commit", commit_together)
    results: list = [None] * len(jobs)

    def run(i):
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # noqa: BLE001 - compared by the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return results


def sources(tmp_path):
    roots = []
    for seed in (1, 2):
        root = tmp_path / f"src{seed}"
        write_corpus(
            SynthConfig(videos_per_split=2, frames=80, appearance_dim=3, geometric_dim=2, seed=seed), root, "csv"
        )
        roots.append(root)
    return roots


@pytest.mark.services
def test_two_ingests_at_once_both_commit_one_after_the_other(s3_server, s3_url, tmp_path, monkeypatch):
    options = s3_server.storage_options()
    first, second = sources(tmp_path)
    results = race(
        monkeypatch,
        [
            lambda root=root: ds.ingest(str(root), s3_url, layout="csv", storage_options=options, progress=False)
            for root in (first, second)
        ],
    )
    assert all(isinstance(r, ds.IngestResult) for r in results), results
    assert sorted(r.version for r in results) == ["0", "1"]
    assert ds.list_versions(s3_url, storage_options=options) == ["0", "1"]
    winner = next(r for r in results if r.version == "1")
    assert ds.dataset_info(s3_url, storage_options=options).content_hash == winner.content_hash
    for version in ("0", "1"):  # both versions read whole
        corpus = ds.read_corpus(s3_url, version=version, storage_options=options)
        assert len(corpus.videos) == 6
    loc = resolve(s3_url, options)
    committed = {f.path for f in delta.snapshot(loc).files}
    assert committed and all(loc.exists(path) for path in committed)


@pytest.mark.services
def test_two_scoring_jobs_at_once_never_mix(s3_server, s3_url, tmp_path, monkeypatch):
    options = s3_server.storage_options()
    source = sources(tmp_path)[0]
    dataset = str(tmp_path / "ds")
    ds.ingest(str(source), dataset, layout="csv", progress=False)
    models = [bundle_for(dataset, seed, tmp_path, f"m{seed}") for seed in (1, 2)]
    out = f"{s3_url}/pred"
    results = race(
        monkeypatch,
        [lambda m=m: scoring.score_dataset(dataset, m, out, storage_options=options, progress=False) for m in models],
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], AffectError), results
    assert "Another scoring job" in str(failed[0])
    store = scoring.read_predictions(out, options)
    ids = {m for video_id in store for m in store[video_id].column("model_id").to_pylist()}
    assert len(ids) == 1 and len(store) == 6
    for video_id in store:
        frames = store[video_id].column("frame").to_pylist()
        assert frames == list(range(80)), f"{video_id}: duplicate or missing frames"
    loc = resolve(out, options)
    on_store = {p.split(loc.path + "/", 1)[1] for p in loc.fs.find(loc.path) if p.endswith(".parquet")}
    on_store = {p for p in on_store if not p.startswith("_delta_log")}
    assert on_store == {f.path for f in delta.snapshot(loc).files}, "the losing job left files behind"
