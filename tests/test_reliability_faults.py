"""Faults with real components: the S3 server (SeaweedFS) killed in the middle of an ingest, and a scoring process
killed with SIGKILL halfway through; each then re-run.

The other faults are tested where their code lives: a Ray worker node killed during multi-seed training
(tests/test_ray_train.py::test_seeds_finish_when_a_worker_node_is_killed), a Prefect pipeline crashing mid-way and
resuming (tests/test_flows.py::test_pipeline_resumes_after_a_crash), an S3 outage retried by the flow
(tests/test_flows_services.py::test_storage_outage_is_retried), a writer killed mid-ingest on local disk
(tests/test_ingest.py::test_a_killed_writer_leaves_no_visible_version) and an interrupted Ray Data scoring job
(tests/test_ray_score.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import s3fs

from affect_core.config import RunConfig
from affect_core.data.dataset import dataset_info, ingest, list_versions, read_corpus
from affect_core.experiment import plan_seed_tasks, run_seed
from affect_core.scoring import finished_videos
from affect_core.storage import resolve
from affect_core.synth import SynthConfig, write_corpus

MANY_VIDEOS = SynthConfig(videos_per_split=40, frames=300, appearance_dim=6, geometric_dim=8)


def affect_process(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "affect_cli.main", *[str(a) for a in args]],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory) -> Path:
    """A corpus of 120 short videos in the parquet layout: enough files that a write takes a while."""
    root = tmp_path_factory.mktemp("many") / "corpus"
    write_corpus(MANY_VIDEOS, root, "parquet")
    return root


@pytest.mark.services
@pytest.mark.slow
def test_s3_server_killed_during_ingest(s3_server, s3_url, many_videos):
    """SeaweedFS is stopped once some of the new version's files are written and started again 3 s later. The ingest
    either fails with one line or, within its retry budget, succeeds; a version is visible only if complete; a re-run
    then succeeds (or is a no-op) and the dataset holds every video."""
    dataset = f"{s3_url}/dataset"
    options = s3_server.storage_options()
    fs = s3fs.S3FileSystem(**options)
    small_files = ["--file-mb", "0.02"]  # many data files, so the server can be stopped between them
    command = ["ingest", many_videos, dataset, "--layout", "parquet", "--no-progress", *small_files]
    process = affect_process(command, s3_server.env())
    restart: threading.Timer | None = None
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, "the ingest finished before the server could be stopped"
            assert time.monotonic() < deadline, "the ingest never started writing"
            try:
                fs.invalidate_cache()
                found = fs.find(dataset.removeprefix("s3://"))
                written = len([p for p in found if p.endswith(".parquet") and "_delta_log" not in p])
            except (FileNotFoundError, OSError):
                written = 0
            if written >= 5:
                break
            time.sleep(0.05)
        s3_server.stop()
        restart = threading.Timer(3.0, s3_server.start)
        restart.start()
        stdout, stderr = finish(process, timeout=300)
    finally:
        if restart is not None:
            restart.join()
        if not s3_server.running:
            s3_server.start()
    total = 3 * MANY_VIDEOS.videos_per_split
    fs.invalidate_cache()
    versions = list_versions(dataset, storage_options=options)
    if process.returncode == 0:
        assert len(versions) == 1 and stdout.startswith("ingested "), stdout + stderr
    else:
        lines = [line for line in stderr.splitlines() if line.strip() and "Warning" not in line]
        assert lines and lines[-1].startswith("error: ") and "Traceback" not in stderr, stderr[-3000:]
        assert versions == [], "a failed ingest left a visible version"
    for version in versions:  # whatever is visible is complete
        assert len(read_corpus(dataset, version=version, storage_options=options).videos) == total
    assert s3_server.secret_key not in stdout + stderr

    again = affect_process(command, s3_server.env())
    stdout, stderr = finish(again, timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert stdout.startswith("unchanged: " if versions else "ingested "), stdout
    assert len(list_versions(dataset, storage_options=options)) == 1
    assert len(read_corpus(dataset, storage_options=options).videos) == total


@pytest.mark.slow
def test_scoring_killed_with_sigkill_then_rerun(many_videos, tmp_path):
    """`affect score` is killed with SIGKILL once some videos are committed; the re-run skips the committed videos and
    the predictions hold every (video, frame) exactly once."""
    dataset = str(tmp_path / "dataset")
    ingest(str(many_videos), dataset, layout="parquet", progress=False)
    config = RunConfig()
    config.model.model, config.model.align, config.train.max_epochs = "lstm-kf", "adaptive", 1
    config.train.window_frames = 100
    corpus = read_corpus(dataset)
    model = run_seed(plan_seed_tasks(config, "arousal", [0])[0], corpus, str(tmp_path / "run")).bundle_url
    preds = tmp_path / "preds"
    command = ["score", dataset, "--model", model, "--out", preds, "--no-ray", "--no-progress", "--file-mb", "0.02"]
    command += ["--batch-videos", "8"]  # a commit every 8 videos: the kill lands between commits

    process = affect_process(command)
    try:
        deadline = time.monotonic() + 180
        while not (preds / "_delta_log").exists() or len(finished_videos(resolve(str(preds)))) < 10:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "scoring never committed"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    finished = len(finished_videos(resolve(str(preds))))
    info = dataset_info(dataset)
    total = sum(len(ids) for ids in info.videos.values())
    assert 10 <= finished < total, f"{finished} of {total} finished"

    again = affect_process(command)
    stdout, stderr = finish(again, timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert f"{finished} already done" in stdout, stdout
    from deltalake import DeltaTable

    table = DeltaTable(str(preds)).to_pyarrow_table(columns=["video_id", "frame"])  # every committed row
    keys = list(zip(table.column("video_id").to_pylist(), table.column("frame").to_pylist(), strict=True))
    expected = {(v.video_id, f) for v in corpus.videos for f in range(v.num_frames)}
    assert len(keys) == len(set(keys)), "duplicate (video, frame) rows"
    assert set(keys) == expected, "missing or unexpected (video, frame) rows"
