"""Ray Data scoring equals the single-process scorer, resumes from the videos a crashed job committed and never
duplicates a frame; local storage and SeaweedFS S3; plus S3 keys reach Ray workers through their node's environment,
never through Ray (runtime_env, logs, job table) or pickles."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from affect_core import scoring
from affect_core.artifact import load_bundle
from affect_core.config import RunConfig
from affect_core.data import delta
from affect_core.data.dataset import dataset_info, iter_videos, read_corpus
from affect_core.data.records import Video
from affect_core.experiment import plan_seed_tasks, run_seed
from affect_core.scoring import finished_videos, read_predictions, score_videos
from affect_core.scoring import pipeline as scoring_pipeline
from affect_core.scoring import predictions as scoring_predictions
from affect_core.storage import resolve
from tests.test_ray_train import affect, make_dataset
from tests.test_security import JOB_TABLE_TEXT, files_holding
from tuning.cluster import ray_storage, shareable_storage_options, worker_env
from tuning.score import call_blocks

COLUMNS = ("arousal", "valence", "arousal_var", "valence_var", "time_s")
REPO = Path(__file__).resolve().parents[1]


def train_bundle(dataset: str, run_url: str, storage_options: dict | None) -> str:
    """A one-epoch LSTM-KF arousal model, trained in this process."""
    config = RunConfig()
    config.model.model = "lstm-kf"
    config.train.max_epochs = 1
    task = plan_seed_tasks(config, "arousal", [0])[0]
    corpus = read_corpus(dataset, storage_options=storage_options)
    return run_seed(task, corpus, run_url, storage_options=storage_options).bundle_url


def read_parts(url: str, storage_options: dict | None) -> dict:
    return dict(read_predictions(url, storage_options).items())


@pytest.mark.services
@pytest.mark.parametrize("store", ["local", "s3"])
def test_ray_scoring_equals_single_process_and_reruns_cleanly(store, ray_cluster, s3_server, tmp_path, request):
    if store == "s3":
        base, options = request.getfixturevalue("s3_url"), s3_server.storage_options()
    else:
        base, options = str(tmp_path / "store"), None
    env = {**ray_cluster.env(), **s3_server.env()}
    dataset = make_dataset(tmp_path / "corpus", f"{base}/dataset", options)
    model = train_bundle(dataset, f"{base}/run", options)
    info = dataset_info(dataset, storage_options=options)
    reference = f"{base}/reference"
    score_videos(
        load_bundle(model, options),
        iter_videos(dataset, storage_options=options),
        reference,
        feature_names=info.feature_names,
        storage_options=options,
        progress=False,
    )

    predictions = f"{base}/predictions"
    # a pool holding every CPU of the cluster (two nodes of one): no task of Ray Data's may wait for a CPU
    pool = ["--actors", "2", "--min-actors", "2", "--batch-videos", "2"]  # several model passes a call
    done = affect(["score", dataset, "--model", model, "--out", predictions, "--ray", "--no-progress", *pool], env)
    assert done.returncode == 0, done.stderr[-3000:]
    expected, got = read_parts(reference, options), read_parts(predictions, options)
    assert sorted(got) == sorted(expected) == sorted(v for ids in info.videos.values() for v in ids)
    for video_id, table in expected.items():
        assert got[video_id].column("frame").to_pylist() == list(range(table.num_rows))
        for column in COLUMNS:
            np.testing.assert_allclose(
                got[video_id].column(column).to_numpy(zero_copy_only=False),
                table.column(column).to_numpy(zero_copy_only=False),
                atol=1e-5,
            )

    # The actors wrote the files, a call's at a time (several calls: several commits), and the driver committed every
    # file they wrote: none is left on storage outside the table.
    loc = resolve(predictions, options)
    committed_files = {f.path for f in delta.snapshot(loc).files}
    on_storage = {path[len(loc.path) :].lstrip("/") for path in loc.fs.find(loc.path) if path.endswith(".parquet")}
    assert on_storage == committed_files and len(committed_files) >= 2
    assert len(delta.versions(loc)) >= 2

    # A crashed job committed some videos; the Ray re-run scores only the others.
    crashed = f"{base}/crashed"
    real, seen, batch = scoring_predictions.prediction_rows, [], scoring_pipeline.BATCH_VIDEOS

    def crash_at_the_fourth(videos, *args):
        seen.extend(v.video_id for v in videos)
        if len(seen) == 4:
            raise OSError("node lost")
        return real(videos, *args)

    scoring_predictions.prediction_rows, scoring_pipeline.BATCH_VIDEOS = crash_at_the_fourth, 1  # a batch a video
    try:
        with pytest.raises(OSError, match="node lost"):
            scoring.score_dataset(dataset, model, crashed, storage_options=options, progress=False, target_file_bytes=1)
    finally:
        scoring_predictions.prediction_rows, scoring_pipeline.BATCH_VIDEOS = real, batch
    committed = finished_videos(resolve(crashed, options))
    assert len(committed) == 3
    again = affect(["score", dataset, "--model", model, "--out", crashed, "--ray", "--no-progress"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 already done" in again.stdout
    rerun = read_parts(crashed, options)
    assert sorted(rerun) == sorted(got)
    for video_id, table in rerun.items():
        frames = table.column("frame").to_pylist()
        assert frames == list(range(expected[video_id].num_rows)), f"{video_id}: duplicate or missing frames"
    assert s3_server.secret_key not in done.stdout + done.stderr + again.stdout + again.stderr


def test_call_blocks_cover_the_videos_to_do_in_order_and_files_travel_whole(tmp_path):
    entries = [delta.VideoEntry(f"v{i}", "train", frames) for i, frames in enumerate([5, 5, 20, 1, 1, 1, 9])]
    blocks = list(call_blocks(iter(entries), {"v1"}, call_frames=10))
    assert [b.column("video_id").to_pylist() for b in blocks] == [["v0", "v2"], ["v3", "v4", "v5", "v6"]]

    loc = resolve(str(tmp_path / "predictions"))
    files = delta.FileWriter(loc, scoring.PREDICTION_SCHEMA, target_file_bytes=1 << 30)
    videos = [Video(f"v{i}", "dev", np.zeros((3, 2), np.float32), np.arange(3) / 25.0, 25.0) for i in (1, 2)]
    tracks = [{"arousal": (np.ones(3, np.float32), np.ones(3, np.float32))} for _ in videos]
    scoring.write_predicted(files, videos, tracks, "m", "0")
    written = files.close()
    back = delta.table_files(delta.files_table(written), "test")
    assert [(f.path, f.split, f.size, f.rows, f.full) for f in back] == [
        (f.path, f.split, f.size, f.rows, f.full) for f in written
    ]
    assert back[0].index.equals(written[0].index) and back[0].video_count == 2


# A driver on an in-process Ray given S3 keys in its storage options: what one worker sees of them, and the job table.
IN_PROCESS_DRIVER = """
import json, os, sys
import ray
from tuning.cluster import ensure_ray, shutdown_ray

ensure_ray(num_cpus=1, storage_options=json.load(sys.stdin))  # not argv: the job table records the command line


@ray.remote(num_cpus=1)
def worker_view():
    return os.environ.get("AWS_SECRET_ACCESS_KEY"), ray.get_runtime_context().runtime_env


secret, runtime_env = ray.get(worker_view.remote())
print(json.dumps({"secret": secret, "runtime_env": runtime_env, "jobs": job_table_text()}))
shutdown_ray()
"""


def test_s3_keys_reach_workers_through_their_node_environment_never_through_ray(tmp_path):
    """Keys given in storage options reach an in-process Ray's workers as their node's environment (the driver's),
    not through the job's runtime_env, which Ray writes into every node's logs and its job table: the planted secret
    is in no file of the Ray temp dir (every file of every session) and not in the job table; nor in the options and
    filesystems that travel in task arguments and Tune configs."""
    secret = f"planted-{os.urandom(12).hex()}"
    options = {
        "key": "AKIDPLANTED",
        "secret": secret,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
    }
    shared = shareable_storage_options(options)
    assert secret not in repr(shared) and "AKIDPLANTED" not in repr(shared)
    assert secret not in repr(worker_env(options)) and worker_env(options)["AFFECT_S3_ENDPOINT"] == "http://127.0.0.1:9"
    path, filesystem = ray_storage("s3://bucket/run/_ray", options)
    assert path == "bucket/run/_ray" and secret.encode() not in pickle.dumps(filesystem)

    ray_tmp = Path(tempfile.mkdtemp(prefix="affect-rt-"))  # short: Ray's unix socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AFFECT_S3", "RAY_"))}
    env.update({"RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)})
    script = IN_PROCESS_DRIVER.replace("job_table_text()", JOB_TABLE_TEXT)
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(options),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["secret"] == secret, "the worker did not get the key from its node's environment"
        assert not (seen["runtime_env"] or {}).get("env_vars"), seen["runtime_env"]
        assert seen["jobs"] and secret not in seen["jobs"]
        sessions = list((ray_tmp / "ray").glob("session_2*"))
        assert sessions and any(sessions[0].joinpath("logs").iterdir())
        assert files_holding(ray_tmp, secret) == []
        assert secret not in done.stderr
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
