"""Video extraction on a real two-node Ray cluster (one task per video, only features come back) gives the same
dataset and the same scores as the single-process path, through the CLI; the cluster's own worker logs show that the
extraction tasks ran there."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from affect_core.config import load_run_config
from affect_core.data.dataset import dataset_info, ingest, read_corpus
from affect_core.experiment import train_run
from affect_core.scoring import read_predictions
from affect_core.synth.video import VideoSynthConfig, write_video_corpus
from affect_core.video.layout import LAYOUT
from affect_core.video.score import score_video_root
from affect_core.video.stored import attach_to_bundle
from tests.test_ray_train import affect

CLIPS = VideoSynthConfig(videos_per_split=1, frames=30, width=320, height=180, no_face_share=0.2)
VIDEOS = 3  # one per split
# Ray writes ":task_name:<function>" into a worker's log file (worker-<worker id>-<job id>-<pid>.out/.err) each time
# the worker starts a task; the extraction's task function is tuning.video_extract._run.
EXTRACTION_TASK = ":task_name:_run"
WORKER_LOG = re.compile(r"worker-[0-9a-f]+-[0-9a-f]+-(\d+)\.(?:out|err)$")


def extraction_tasks_by_worker(cluster) -> Counter[tuple[str, int]]:
    """How many extraction tasks each Ray worker process of ``cluster`` has started so far, keyed by (node, pid),
    read from the workers' own log files in the nodes' session directories: work counted here ran in a worker
    process that Ray started on one of the cluster's nodes, never in the driver."""
    started: Counter[tuple[str, int]] = Counter()
    for log in Path(cluster.base_dir, "tmp").glob("*/session_*/logs/worker-*"):
        match = WORKER_LOG.search(log.name)
        if match and log.suffix == ".out":
            node = log.relative_to(Path(cluster.base_dir, "tmp")).parts[0]
            started[(node, int(match.group(1)))] += log.read_text(errors="replace").count(EXTRACTION_TASK)
    return +started


def extraction_tasks_since(cluster, before: Counter[tuple[str, int]]) -> Counter[tuple[str, int]]:
    """The extraction tasks each worker process started after ``before`` was read."""
    return extraction_tasks_by_worker(cluster) - before


@pytest.mark.services
def test_ray_ingest_and_scoring_equal_the_single_process_path(ray_cluster, tmp_path) -> None:
    root = tmp_path / "root"
    write_video_corpus(CLIPS, root)
    local = str(tmp_path / "local")
    ingest(str(root), local, layout=LAYOUT, progress=False)

    distributed = str(tmp_path / "ray")
    before = extraction_tasks_by_worker(ray_cluster)
    done = affect(["ingest", str(root), distributed, "--layout", "video", "--no-progress"], ray_cluster.env())
    assert done.returncode == 0, done.stderr[-3000:]
    ingest_tasks = extraction_tasks_since(ray_cluster, before)
    assert sum(ingest_tasks.values()) >= VIDEOS, f"the videos were not extracted in Ray workers: {ingest_tasks}"
    assert dataset_info(distributed).content_hash == dataset_info(local).content_hash
    for a, b in zip(read_corpus(local, splits=None).videos, read_corpus(distributed, splits=None).videos, strict=True):
        np.testing.assert_array_equal(a.features, b.features)

    config = load_run_config(None, model="baseline", align="none", epochs=1)
    model = train_run(
        read_corpus(local, splits=None), str(tmp_path / "run"), config, dimension="arousal", seeds=1, progress=False
    )["model"]
    assert attach_to_bundle(local, model)
    score_video_root(str(root), model, str(tmp_path / "pred-local"), progress=False)
    before = extraction_tasks_by_worker(ray_cluster)
    scored = affect(
        ["score", str(root), "--model", model, "--out", str(tmp_path / "pred-ray"), "--ray", "--no-progress"],
        ray_cluster.env(),
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    score_tasks = extraction_tasks_since(ray_cluster, before)
    assert sum(score_tasks.values()) >= VIDEOS, f"the videos were not extracted in Ray workers: {score_tasks}"
    for video_id in ("train_1", "dev_1", "test_1"):
        expected = read_predictions(str(tmp_path / "pred-local"))[video_id]
        got = read_predictions(str(tmp_path / "pred-ray"))[video_id]
        for column in ("frame", "time_s", "arousal", "arousal_var"):
            np.testing.assert_allclose(got.column(column).to_numpy(), expected.column(column).to_numpy(), atol=1e-5)


@pytest.mark.services
def test_bad_video_found_by_a_ray_worker_is_one_line(ray_cluster, tmp_path) -> None:
    root = tmp_path / "root"
    write_video_corpus(CLIPS, root)
    (root / "videos" / "dev_1.mp4").write_bytes(b"not a video at all" * 100)
    dataset = tmp_path / "dataset"
    done = affect(["ingest", str(root), str(dataset), "--layout", "video", "--no-progress"], ray_cluster.env())
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "dev_1.mp4: cannot be read as a video" in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not dataset.exists()
